"""MTA-STS: the policy parser, the MX pattern matcher, the fetcher and its cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from carepost.connectors.mta_sts import (
    MAX_AGE_CAP_SECONDS,
    MemoryPolicyCache,
    MtaStsFetcher,
    PolicyError,
    StsMode,
    mx_pattern_matches,
    parse_policy,
    parse_txt_id,
)
from carepost.connectors.mx import MxResolver
from carepost.connectors.smtp_tls import build_client_context
from carepost.connectors.tls_status import TlsStatusStore
from carepost.core.states import DeliveryState

from .conftest import MxServers, SenderForMx
from .dns_server import DnsServer
from .policy_server import PolicyServer
from .servers import Certificates
from .test_sender_mx import send

ENFORCE = (b"version: STSv1\r\nmode: enforce\r\nmx: mx1.clinic-mail.example\r\n"
           b"mx: *.mail.protection.example.net\r\nmax_age: 1209600\r\n")


# --- parser ---

def test_parse_crlf_policy() -> None:
    policy = parse_policy(ENFORCE)

    assert policy.mode is StsMode.ENFORCE
    assert policy.max_age == 1209600
    assert policy.mx == ("mx1.clinic-mail.example", "*.mail.protection.example.net")


def test_parse_lf_without_final_newline() -> None:
    body = b"version: STSv1\nmode: testing\nmx: mail.example.org  \nmax_age: 86400"

    policy = parse_policy(body)

    assert policy.mode is StsMode.TESTING
    assert policy.mx == ("mail.example.org",)


def test_parse_mode_none_needs_no_mx() -> None:
    assert parse_policy(b"version: STSv1\nmode: none\nmax_age: 86400\n").mx == ()


@pytest.mark.parametrize("body, problem", [
    (b"version: STSv1\nMode: enforce\nmx: a.example\nmax_age: 1\n", "mode is None"),
    (b"version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n", "mode is 'Enforce'"),
    (b"version: stsv1\nmode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
    (b"version: STSv1\nmode: enforce\nmode: testing\nmx: a.example\nmax_age: 1\n",
     "repeats 'mode'"),
    (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nmax_age: 2\n",
     "repeats 'max_age'"),
    (b"version: STSv1\nmode: enforce\nmax_age: 86400\n", "at least one mx"),
    (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n",
     "max_age"),
    (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "max_age"),
    (b"version: STSv1\nmode: enforce\nmx: mx1.*.example.com\nmax_age: 1\n",
     "mx pattern"),
    (b"version: STSv1\nmode: enforce\nmx: *mail.example.com\nmax_age: 1\n",
     "mx pattern"),
    (b"version: STSv1\nmode enforce\nmx: a.example\nmax_age: 1\n", "line 2"),
])
def test_parse_rejects(body: bytes, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem.replace("*", r"\*")):
        parse_policy(body)


def test_parse_caps_max_age_and_ignores_unknown_keys() -> None:
    body = b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 9999999999\nfoo: x\n"

    assert parse_policy(body).max_age == MAX_AGE_CAP_SECONDS


def test_parse_rejects_oversized_body() -> None:
    with pytest.raises(PolicyError, match="larger than"):
        parse_policy(ENFORCE + b"#" * 70_000)


@pytest.mark.parametrize("pattern, host, matches", [
    ("*.example.com", "mx1.example.com", True),
    ("*.example.com", "MX1.Example.COM.", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "a.b.example.com", False),
    ("mx1.example.com", "mx1.example.com.", True),
    ("mx1.example.com", "mx2.example.com", False),
    ("mx1.example.com.", "MX1.EXAMPLE.COM", True),
])
def test_mx_pattern_matching(pattern: str, host: str, matches: bool) -> None:
    assert mx_pattern_matches(pattern, host) is matches


@pytest.mark.parametrize("records, expected", [
    (["v=STSv1; id=20240301T000000;"], "20240301T000000"),
    (["v=STSv1; id=abc"], "abc"),
    (["something else", "v=STSv1; id=abc;"], "abc"),
    (["v=STSv1; id=abc;", "v=STSv1; id=def;"], None),
    ([], None),
    (["v=STSv1; id=has-dash;"], None),
    (["v=STSv1; id=" + "a" * 33], None),
    (["v=STSv2; id=abc"], None),
])
def test_txt_id(records: list[str], expected: str | None) -> None:
    assert parse_txt_id(records) == expected


# --- fetcher and cache ---

class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def fetcher_for(dns_server: DnsServer, policy_server: PolicyServer,
                certificates: Certificates, clock: Clock,
                cache: MemoryPolicyCache | None = None) -> MtaStsFetcher:
    return MtaStsFetcher(MxResolver(dns_server.resolver()), cache or MemoryPolicyCache(),
                         context=build_client_context(certificates.ca_file),
                         https_port=policy_server.port, clock=clock)


def policy_text(mode: str = "enforce", max_age: int = 86400,
                mx: str = "mx1.clinic.example.test") -> str:
    return f"version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: {max_age}\n"


async def test_policy_fetched_then_cached(
    dns_server: DnsServer, policy_server: PolicyServer, certificates: Certificates
) -> None:
    domain = "cached.example.test"
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=one;")
    policy_server.serve(domain, policy_text())
    clock = Clock()
    fetcher = fetcher_for(dns_server, policy_server, certificates, clock)

    first = await fetcher.policy_for(domain)
    second = await fetcher.policy_for(domain)

    assert first is not None and first.mode is StsMode.ENFORCE
    assert second == first
    assert policy_server.fetches(domain) == 1
    assert policy_server.requests[0][1] == "/.well-known/mta-sts.txt"


async def test_policy_refetched_when_id_changes(
    dns_server: DnsServer, policy_server: PolicyServer, certificates: Certificates
) -> None:
    domain = "cached.example.test"
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=one;")
    policy_server.serve(domain, policy_text())
    fetcher = fetcher_for(dns_server, policy_server, certificates, Clock())
    await fetcher.policy_for(domain)

    dns_server.remove(f"_mta-sts.{domain}", "TXT")
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=two;")
    policy_server.serve(domain, policy_text(mode="testing"))
    policy = await fetcher.policy_for(domain)

    assert policy is not None and policy.mode is StsMode.TESTING
    assert policy_server.fetches(domain) == 2


async def test_fetch_failure_keeps_cached_policy(
    dns_server: DnsServer, policy_server: PolicyServer, certificates: Certificates
) -> None:
    domain = "cached.example.test"
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=one;")
    policy_server.serve(domain, policy_text())
    clock = Clock()
    fetcher = fetcher_for(dns_server, policy_server, certificates, clock)
    await fetcher.policy_for(domain)

    dns_server.remove(f"_mta-sts.{domain}", "TXT")
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=two;")
    policy_server.serve(domain, b"oops", status=500)
    kept = await fetcher.policy_for(domain)
    dns_server.remove(f"_mta-sts.{domain}", "TXT")
    stripped = await fetcher.policy_for(domain)
    clock.now += timedelta(seconds=86401)
    expired = await fetcher.policy_for(domain)

    assert kept is not None and kept.mode is StsMode.ENFORCE
    assert stripped == kept
    assert expired is None


@pytest.mark.parametrize("served, description", [
    ({"status": 301, "headers": {"Location": "https://mta-sts.cached.example.test/x",
                                 "Content-Type": "text/plain"}}, "redirect"),
    ({"status": 404}, "not found"),
    ({"headers": {"Content-Type": "text/html"}}, "wrong content type"),
])
async def test_fetch_rejections_give_no_policy(
    dns_server: DnsServer, policy_server: PolicyServer, certificates: Certificates,
    served: dict[str, object], description: str,
) -> None:
    domain = "redirect.example.test"
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=one;")
    policy_server.serve(domain, policy_text(), **served)
    fetcher = fetcher_for(dns_server, policy_server, certificates, Clock())

    assert await fetcher.policy_for(domain) is None, description
    assert policy_server.fetches("cached.example.test") == 0
    assert [path for _, path in policy_server.requests] == ["/.well-known/mta-sts.txt"]


async def test_oversized_policy_gives_no_policy(
    dns_server: DnsServer, policy_server: PolicyServer, certificates: Certificates
) -> None:
    domain = "large.example.test"
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=one;")
    policy_server.serve(domain, policy_text() + "#" * 70_000)
    fetcher = fetcher_for(dns_server, policy_server, certificates, Clock())

    assert await fetcher.policy_for(domain) is None


async def test_policy_host_certificate_must_verify(
    dns_server: DnsServer, policy_server: PolicyServer, certificates: Certificates
) -> None:
    domain = "uncovered.example.test"  # not in the policy server's certificate
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=one;")
    dns_server.add(f"mta-sts.{domain}", "A", "127.0.0.1")
    policy_server.serve(domain, policy_text())
    fetcher = fetcher_for(dns_server, policy_server, certificates, Clock())

    assert await fetcher.policy_for(domain) is None
    assert policy_server.fetches(domain) == 0


async def test_several_txt_records_mean_no_policy(
    dns_server: DnsServer, policy_server: PolicyServer, certificates: Certificates
) -> None:
    domain = "cached.example.test"
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=one;", "v=STSv1; id=two;")
    policy_server.serve(domain, policy_text())
    fetcher = fetcher_for(dns_server, policy_server, certificates, Clock())

    assert await fetcher.policy_for(domain) is None
    assert policy_server.fetches(domain) == 0


async def test_mode_none_drops_cached_policy(
    dns_server: DnsServer, policy_server: PolicyServer, certificates: Certificates
) -> None:
    domain = "none.example.test"
    cache = MemoryPolicyCache()
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=one;")
    policy_server.serve(domain, policy_text())
    fetcher = fetcher_for(dns_server, policy_server, certificates, Clock(), cache)
    await fetcher.policy_for(domain)
    assert cache.get(domain) is not None

    dns_server.remove(f"_mta-sts.{domain}", "TXT")
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=two;")
    policy_server.serve(domain, "version: STSv1\nmode: none\nmax_age: 86400\n")
    policy = await fetcher.policy_for(domain)

    assert policy is not None and policy.mode is StsMode.NONE
    assert cache.get(domain) is None


async def test_policy_cache_persists_in_store(
    dns_server: DnsServer, policy_server: PolicyServer, certificates: Certificates
) -> None:
    domain = "cached.example.test"
    store = TlsStatusStore()
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=one;")
    policy_server.serve(domain, policy_text(mx="*.clinic.example.test"))
    fetcher = MtaStsFetcher(MxResolver(dns_server.resolver()), store.policy_cache(),
                            context=build_client_context(certificates.ca_file),
                            https_port=policy_server.port)
    await fetcher.policy_for(domain)

    cached = store.get_policy(domain)

    assert cached is not None
    assert cached.policy_id == "one"
    assert cached.policy.mx == ("*.clinic.example.test",)
    assert cached.expires_at - cached.fetched_at == timedelta(seconds=86400)


# --- applied by the sender ---

async def test_enforce_drops_unlisted_mx(
    dns_server: DnsServer, policy_server: PolicyServer, mx_servers: MxServers,
    mx_sender: SenderForMx,
) -> None:
    domain = "enforce.example.test"
    setup = mx_servers({"mx1.clinic.example.test": None})
    dns_server.add_mx(domain, (10, "mx1.clinic.example.test"))
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=one;")
    policy_server.serve(domain, policy_text(mx="*.other.example.test"))

    outcome = await send(mx_sender(setup, policy_port=policy_server.port),
                         f"sam@{domain}")

    assert outcome.state is DeliveryState.DROPPED_NO_TLS
    assert "MTA-STS" in (outcome.reason or "")
    assert outcome.mta_sts_mode == "enforce"
    assert setup.servers["mx1.clinic.example.test"].sessions == 0


async def test_enforce_requires_verified_certificate(
    dns_server: DnsServer, policy_server: PolicyServer, mx_servers: MxServers,
    mx_sender: SenderForMx,
) -> None:
    domain = "enforce.example.test"
    mx = "mx1.clinic.example.test"
    setup = mx_servers({mx: None}, certificate_for={mx: "mail.other.example.test"})
    dns_server.add_mx(domain, (10, mx))
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=one;")
    policy_server.serve(domain, policy_text(mx=mx))

    sender = mx_sender(setup, policy_port=policy_server.port, unverified_mx="encrypt")
    outcome = await send(sender, f"sam@{domain}")

    assert outcome.state is DeliveryState.DROPPED_NO_TLS
    assert "MAIL" not in setup.servers[mx].verbs()


async def test_enforce_sends_to_matching_mx(
    dns_server: DnsServer, policy_server: PolicyServer, mx_servers: MxServers,
    mx_sender: SenderForMx,
) -> None:
    domain = "enforce.example.test"
    mx = "mx1.clinic.example.test"
    setup = mx_servers({mx: None, "mx0.rogue.example.test": None})
    dns_server.add_mx(domain, (5, "mx0.rogue.example.test"), (10, mx))
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=one;")
    policy_server.serve(domain, policy_text(mx="*.clinic.example.test"))

    outcome = await send(mx_sender(setup, policy_port=policy_server.port),
                         f"sam@{domain}")

    assert outcome.state is DeliveryState.SENT
    assert outcome.mx_host == mx
    assert setup.servers["mx0.rogue.example.test"].sessions == 0


async def test_testing_mode_never_blocks(
    dns_server: DnsServer, policy_server: PolicyServer, mx_servers: MxServers,
    mx_sender: SenderForMx,
) -> None:
    domain = "testing.example.test"
    mx = "mx1.clinic.example.test"
    setup = mx_servers({mx: None})
    dns_server.add_mx(domain, (10, mx))
    dns_server.add_txt(f"_mta-sts.{domain}", "v=STSv1; id=one;")
    policy_server.serve(domain, policy_text(mode="testing", mx="*.other.example.test"))

    outcome = await send(mx_sender(setup, policy_port=policy_server.port),
                         f"sam@{domain}")

    assert outcome.state is DeliveryState.SENT
    assert outcome.mta_sts_mode == "testing"
