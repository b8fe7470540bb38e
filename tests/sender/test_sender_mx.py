"""Direct-to-MX mode against a local DNS server and local STARTTLS MX servers."""

from __future__ import annotations

import random

import pytest

from carepost.connectors.mx import (
    DnsLookupError,
    DomainNotFoundError,
    MxHost,
    MxResolver,
    NullMxError,
)
from carepost.connectors.smtp import NEEDS_SMTPUTF8, SendOutcome, TlsSender
from carepost.connectors.tls_status import TlsStatusStore
from carepost.core.states import DeliveryState

from .conftest import MxServers, SenderForMx
from .dns_server import DnsServer
from .servers import RecordingServer, Script

SENDER = "clinic@example.org"
DOMAIN = "clinic.example.test"
MX1 = "mx1.clinic.example.test"
MX2 = "mx2.clinic.example.test"


def message(recipient: str) -> bytes:
    return (f"From: {SENDER}\r\nTo: {recipient}\r\nSubject: Reminder\r\n"
            "Message-ID: <mx@example.org>\r\n\r\nYour flu shot is due.\r\n").encode()


async def send(sender: TlsSender, recipient: str = f"sam@{DOMAIN}") -> SendOutcome:
    async with sender:
        return await sender.send(envelope_from=SENDER, recipient=recipient,
                                 data=message(recipient), profile_id="p-1")


def assert_no_mail(server: RecordingServer) -> None:
    assert "MAIL" not in server.verbs()
    assert server.messages == []


async def test_lowest_preference_mx_gets_message(
    dns_server: DnsServer, mx_servers: MxServers, mx_sender: SenderForMx
) -> None:
    setup = mx_servers({MX1: None, MX2: None})
    dns_server.add_mx(DOMAIN, (20, MX1), (10, MX2))

    outcome = await send(mx_sender(setup))

    assert outcome.state is DeliveryState.SENT
    assert outcome.mx_host == MX2
    assert outcome.tls_version in ("TLSv1.2", "TLSv1.3")
    assert outcome.cert_verified is True
    assert len(setup.servers[MX2].messages) == 1
    assert setup.servers[MX1].sessions == 0


async def test_unreachable_mx_falls_to_next(
    dns_server: DnsServer, mx_servers: MxServers, mx_sender: SenderForMx
) -> None:
    setup = mx_servers({MX1: None, MX2: None})
    dns_server.add_mx(DOMAIN, (10, MX1), (20, MX2))
    setup.servers[MX1].stop()

    outcome = await send(mx_sender(setup))

    assert outcome.state is DeliveryState.SENT
    assert outcome.mx_host == MX2


async def test_equal_preferences_are_shuffled(dns_server: DnsServer) -> None:
    dns_server.add_mx(DOMAIN, (10, MX1), (10, MX2), (5, "mx0.clinic.example.test"))
    firsts = set()
    for seed in range(12):
        resolver = MxResolver(dns_server.resolver(), rng=random.Random(seed))
        route = await resolver.route(DOMAIN)
        assert route.hosts[0] == MxHost("mx0.clinic.example.test", 5)
        firsts.add(route.hosts[1].name)
    assert firsts == {MX1, MX2}


async def test_no_mx_uses_domain_address(
    dns_server: DnsServer, mx_servers: MxServers, mx_sender: SenderForMx
) -> None:
    setup = mx_servers({DOMAIN: None})

    outcome = await send(mx_sender(setup))

    assert outcome.state is DeliveryState.SENT
    assert outcome.mx_host == DOMAIN
    route = await MxResolver(dns_server.resolver()).route(DOMAIN)
    assert route.implicit


async def test_null_mx_bounces_and_suppresses(
    dns_server: DnsServer, mx_servers: MxServers, mx_sender: SenderForMx
) -> None:
    setup = mx_servers({MX1: None})
    dns_server.add_mx(DOMAIN, (0, "."))

    outcome = await send(mx_sender(setup))

    assert outcome.state is DeliveryState.BOUNCED
    assert outcome.suppress
    assert "null MX" in (outcome.reason or "")
    assert setup.servers[MX1].sessions == 0
    with pytest.raises(NullMxError):
        await MxResolver(dns_server.resolver()).route(DOMAIN)


async def test_missing_domain_bounces(
    dns_server: DnsServer, mx_servers: MxServers, mx_sender: SenderForMx
) -> None:
    setup = mx_servers({MX1: None})

    outcome = await send(mx_sender(setup), "sam@nowhere.example.test")

    assert outcome.state is DeliveryState.BOUNCED
    assert outcome.suppress
    with pytest.raises(DomainNotFoundError):
        await MxResolver(dns_server.resolver()).route("nowhere.example.test")


async def test_dns_failure_defers(
    dns_server: DnsServer, mx_servers: MxServers, mx_sender: SenderForMx
) -> None:
    setup = mx_servers({MX1: None})
    dns_server.add_mx(DOMAIN, (10, MX1))
    dns_server.failing.add(DOMAIN)

    outcome = await send(mx_sender(setup))

    assert outcome.state is DeliveryState.DEFERRED
    assert not outcome.suppress
    with pytest.raises(DnsLookupError):
        await MxResolver(dns_server.resolver()).route(DOMAIN)


async def test_idn_domain_looked_up_as_ascii(
    dns_server: DnsServer, mx_servers: MxServers, mx_sender: SenderForMx
) -> None:
    setup = mx_servers({MX1: None})
    dns_server.add_mx("xn--bcher-kva.example", (10, MX1))

    outcome = await send(mx_sender(setup), "sam@bücher.example")

    assert outcome.state is DeliveryState.SENT
    rcpt = [c.argument for c in setup.servers[MX1].commands if c.verb == "RCPT"]
    assert rcpt == ["TO:<sam@xn--bcher-kva.example>"]


async def test_mx_without_starttls_dropped_and_remembered(
    dns_server: DnsServer, mx_servers: MxServers, mx_sender: SenderForMx
) -> None:
    setup = mx_servers({MX1: Script(offer_starttls=False)})
    dns_server.add_mx(DOMAIN, (10, MX1))
    store = TlsStatusStore()
    sender = mx_sender(setup, store=store)

    outcome = await send(sender)

    assert outcome.state is DeliveryState.DROPPED_NO_TLS
    assert_no_mail(setup.servers[MX1])
    status = store.get(DOMAIN)
    assert status is not None
    assert status.starttls_offered is False
    assert not status.supports_tls
    assert "no STARTTLS" in (sender.tls_refusal(f"ann@{DOMAIN}") or "")


async def test_unverified_mx_dropped_by_default(
    dns_server: DnsServer, mx_servers: MxServers, mx_sender: SenderForMx
) -> None:
    setup = mx_servers({MX1: None}, certificate_for={MX1: "mail.other.example.test"})
    dns_server.add_mx(DOMAIN, (10, MX1))
    store = TlsStatusStore()

    outcome = await send(mx_sender(setup, store=store))

    assert outcome.state is DeliveryState.DROPPED_NO_TLS
    assert "certificate verification failed" in (outcome.reason or "")
    assert_no_mail(setup.servers[MX1])
    status = store.get(DOMAIN)
    assert status is not None
    assert status.cert_verified is False


async def test_unverified_mx_encrypted_when_allowed(
    dns_server: DnsServer, mx_servers: MxServers, mx_sender: SenderForMx
) -> None:
    setup = mx_servers({MX1: None}, certificate_for={MX1: "mail.other.example.test"})
    dns_server.add_mx(DOMAIN, (10, MX1))

    outcome = await send(mx_sender(setup, unverified_mx="encrypt"))

    assert outcome.state is DeliveryState.SENT
    assert outcome.cert_verified is False
    assert outcome.tls_version in ("TLSv1.2", "TLSv1.3")
    assert setup.servers[MX1].count("MAIL") == 1
    assert all(c.encrypted for c in setup.servers[MX1].commands if c.verb == "MAIL")


async def test_smtputf8_used_when_offered(
    dns_server: DnsServer, mx_servers: MxServers, mx_sender: SenderForMx
) -> None:
    setup = mx_servers({MX1: Script(offer_smtputf8=True)})
    dns_server.add_mx(DOMAIN, (10, MX1))

    outcome = await send(mx_sender(setup), f"zoë@{DOMAIN}")

    assert outcome.state is DeliveryState.SENT
    mail = [c.argument for c in setup.servers[MX1].commands if c.verb == "MAIL"]
    assert mail and "SMTPUTF8" in (mail[0] or "")


async def test_smtputf8_missing_is_undeliverable(
    dns_server: DnsServer, mx_servers: MxServers, mx_sender: SenderForMx
) -> None:
    setup = mx_servers({MX1: None})
    dns_server.add_mx(DOMAIN, (10, MX1))

    outcome = await send(mx_sender(setup), f"zoë@{DOMAIN}")

    assert outcome.state is DeliveryState.BOUNCED
    assert outcome.reason == NEEDS_SMTPUTF8
    assert not outcome.suppress
    assert_no_mail(setup.servers[MX1])


async def test_pool_reused_across_domains_on_one_mx(
    dns_server: DnsServer, mx_servers: MxServers, mx_sender: SenderForMx
) -> None:
    setup = mx_servers({MX1: None})
    dns_server.add_mx(DOMAIN, (10, MX1))
    dns_server.add_mx("other.example.test", (10, MX1))
    sender = mx_sender(setup, max_connections_per_host=1)

    async with sender:
        for recipient in (f"a@{DOMAIN}", "b@other.example.test", f"c@{DOMAIN}"):
            outcome = await sender.send(envelope_from=SENDER, recipient=recipient,
                                        data=message(recipient), profile_id="p")
            assert outcome.state is DeliveryState.SENT

    assert sender.sessions_opened == 1
    assert setup.servers[MX1].sessions == 1
    assert len(setup.servers[MX1].messages) == 3
