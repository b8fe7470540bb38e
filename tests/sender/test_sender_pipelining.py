"""PIPELINING (RFC 2920): one write for MAIL, RCPT and DATA, replies in order.

Every server here is aiosmtpd, which reads commands line by line and so
serves a pipelined group. What arrived in one write is read from the
server's side (`RecordingServer.encrypted_reads`).
"""

from __future__ import annotations

import pytest

from carepost.connectors.smtp import (
    NEEDS_SMTPUTF8,
    OUTCOME_UNKNOWN,
    SendOutcome,
    TlsSender,
)
from carepost.core.settings import SmtpSettings
from carepost.core.states import DeliveryState

from .conftest import SettingsFor, StartServer
from .servers import RecordingServer, Script, build_message

SENDER = "clinic@example.org"


def address(name: str) -> str:
    return f"{name}@example.org"


async def send_batch(settings: SmtpSettings, names: list[str]) -> list[SendOutcome]:
    """Send one message to each name, in order, over one sender."""
    outcomes = []
    async with TlsSender(settings) as sender:
        for name in names:
            outcome = await sender.send(
                envelope_from=SENDER,
                recipient=address(name),
                data=build_message(address(name), body=f"Hello {name}"),
                profile_id=f"p-{name}",
            )
            outcomes.append(outcome)
    return outcomes


def delivered_bodies(server: RecordingServer) -> list[str]:
    return [m.split(b"\r\n\r\n", 1)[1].strip().decode() for m in server.messages]


def reads_with_mail(server: RecordingServer) -> list[bytes]:
    return [read for read in server.encrypted_reads if b"MAIL FROM:" in read]


def pipelining_server(start_server: StartServer, **script: object) -> RecordingServer:
    return start_server(Script(advertise_pipelining="always", **script))  # type: ignore[arg-type]


async def test_pipelined_group_is_one_write(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = pipelining_server(start_server)

    outcomes = await send_batch(settings_for(server), ["ana", "ben", "cy"])

    assert [outcome.state for outcome in outcomes] == [DeliveryState.SENT] * 3
    reads = reads_with_mail(server)
    assert len(reads) == 3
    for read in reads:
        assert read.count(b"\r\n") == 3
        assert b"RCPT TO:<" in read
        assert read.endswith(b"DATA\r\n")
    assert delivered_bodies(server) == ["Hello ana", "Hello ben", "Hello cy"]
    assert server.sessions == 1
    assert server.count("RSET") == 0


@pytest.mark.parametrize("advertise", ["never", "before_tls"])
async def test_without_pipelining_one_command_per_write(
    start_server: StartServer, settings_for: SettingsFor, advertise: str
) -> None:
    # "before_tls": PIPELINING only in the EHLO reply sent in clear, which
    # an attacker could have added; only the EHLO over TLS counts.
    server = start_server(Script(advertise_pipelining=advertise))

    outcomes = await send_batch(settings_for(server), ["ana", "ben"])

    assert [outcome.state for outcome in outcomes] == [DeliveryState.SENT] * 2
    reads = reads_with_mail(server)
    assert len(reads) == 2
    for read in reads:
        assert read.count(b"\r\n") == 1
    assert not any(b"RCPT TO:" in read and b"DATA\r\n" in read
                   for read in server.encrypted_reads)
    assert server.verbs().count("MAIL") == 2
    assert delivered_bodies(server) == ["Hello ana", "Hello ben"]


async def test_pipelined_rcpt_550_bounces_alone(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = pipelining_server(
        start_server, rcpt_replies={address("ben"): "550 5.1.1 <ben@example.org>: no"}
    )

    ana, ben, cy = await send_batch(settings_for(server), ["ana", "ben", "cy"])

    assert ana.state is DeliveryState.SENT
    assert ben.state is DeliveryState.BOUNCED
    assert ben.smtp_code == 550
    assert ben.reason == "RCPT rejected: 550 5.1.1"
    assert ben.suppress is True
    assert cy.state is DeliveryState.SENT
    # ben's DATA arrived in the group and got 503; no content followed.
    assert server.count("DATA") == 3
    assert delivered_bodies(server) == ["Hello ana", "Hello cy"]
    assert not any(b"Hello ben" in read for read in server.encrypted_reads)
    # The next message reuses the connection after RSET.
    assert server.sessions == 1
    assert server.count("RSET") == 1


async def test_pipelined_mail_451_defers(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = pipelining_server(
        start_server, mail_reply="451 4.3.0 try again later", mail_reply_limit=1
    )

    first, second = await send_batch(settings_for(server), ["ana", "ben"])

    assert first.state is DeliveryState.DEFERRED
    assert first.smtp_code == 451
    assert first.reason == "MAIL rejected: 451 4.3.0"
    assert first.suppress is False
    assert second.state is DeliveryState.SENT
    assert delivered_bodies(server) == ["Hello ben"]
    assert server.sessions == 1


async def test_pipelined_421_on_rcpt_defers(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = pipelining_server(
        start_server, rcpt_replies={address("ben"): "421 4.7.0 closing"}
    )

    ana, ben, cy = await send_batch(settings_for(server), ["ana", "ben", "cy"])

    assert ana.state is DeliveryState.SENT
    assert ben.state is DeliveryState.DEFERRED
    assert ben.smtp_code == 421
    assert ben.reason == "RCPT rejected: 421 4.7.0"
    assert cy.state is DeliveryState.SENT
    assert delivered_bodies(server) == ["Hello ana", "Hello cy"]
    assert server.sessions == 2
    assert server.tls_sessions == 2


async def test_pipelined_421_on_mail_defers(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = pipelining_server(start_server, accept_messages=1)

    outcomes = await send_batch(settings_for(server), ["a", "b", "c"])

    states = [outcome.state for outcome in outcomes]
    assert states == [DeliveryState.SENT, DeliveryState.DEFERRED, DeliveryState.DEFERRED]
    assert [outcome.smtp_code for outcome in outcomes[1:]] == [421, 421]
    assert delivered_bodies(server) == ["Hello a"]


async def test_drop_before_354_is_not_ambiguous(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = pipelining_server(start_server, drop_at_data=1)

    first, retry = await send_batch(settings_for(server), ["ana", "ana"])

    # No content was written, so the message is deferred and may be retried.
    assert first.state is DeliveryState.DEFERRED
    assert first.reason == "connection lost at DATA"
    assert first.smtp_code is None
    assert retry.state is DeliveryState.SENT
    assert delivered_bodies(server) == ["Hello ana"]
    assert server.sessions == 2


async def test_drop_after_content_is_unknown(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = pipelining_server(start_server, close_after_data=True)

    (outcome,) = await send_batch(settings_for(server), ["ana"])

    assert outcome.state is DeliveryState.SENDING
    assert outcome.reason == OUTCOME_UNKNOWN
    assert outcome.smtp_code is None
    assert len(server.messages) == 1


async def test_354_after_rejected_rcpt_gets_no_content(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    # This server accepts DATA although it rejected the only recipient.
    server = pipelining_server(
        start_server,
        rcpt_replies={address("ben"): "550 5.1.1 no such user"},
        data_despite_rejection=True,
    )

    ben, cy = await send_batch(settings_for(server), ["ben", "cy"])

    assert ben.state is DeliveryState.BOUNCED
    assert ben.smtp_code == 550
    assert cy.state is DeliveryState.SENT
    assert not any(b"Hello ben" in read for read in server.encrypted_reads)
    assert delivered_bodies(server) == ["Hello cy"]
    # The session that got the 354 was closed instead of reused.
    assert server.sessions == 2


@pytest.mark.parametrize("offer_smtputf8", [False, True])
async def test_pipelined_smtputf8_only_when_offered(
    start_server: StartServer, settings_for: SettingsFor, offer_smtputf8: bool
) -> None:
    server = pipelining_server(start_server, offer_smtputf8=offer_smtputf8)
    recipient = "zoë@example.org"
    data = f"From: {SENDER}\r\nTo: {recipient}\r\n\r\nHello zoë\r\n".encode()

    async with TlsSender(settings_for(server)) as sender:
        outcome = await sender.send(envelope_from=SENDER, recipient=recipient,
                                    data=data, profile_id="p-zoe")

    if offer_smtputf8:
        assert outcome.state is DeliveryState.SENT
        (read,) = reads_with_mail(server)
        assert read.startswith(b"MAIL FROM:<clinic@example.org> SMTPUTF8\r\n")
    else:
        assert outcome.state is DeliveryState.BOUNCED
        assert outcome.reason == NEEDS_SMTPUTF8
        assert server.count("MAIL") == 0


@pytest.mark.parametrize(
    ("script", "certificate"),
    [
        (Script(offer_starttls=False, advertise_pipelining="always"), "good"),
        (Script(advertise_pipelining="always"), "wrong_host"),
        (Script(advertise_pipelining="always"), "expired"),
    ],
    ids=["no-starttls", "wrong-host", "expired"],
)
async def test_pipelining_server_without_tls_gets_no_mail(
    start_server: StartServer, settings_for: SettingsFor, script: Script,
    certificate: str,
) -> None:
    server = start_server(script, certificate=certificate)

    (outcome,) = await send_batch(settings_for(server), ["ana"])

    assert outcome.state is DeliveryState.DROPPED_NO_TLS
    assert server.count("MAIL") == 0
    assert server.count("RCPT") == 0
    assert b"MAIL" not in bytes(server.plaintext).upper()


def test_pipelined_send_on_uvloop(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    # uvloop's TLS transport does not subclass asyncio.Transport, and the
    # session must still take it over from aiosmtplib.
    uvloop = pytest.importorskip("uvloop")
    server = pipelining_server(start_server)

    outcomes = uvloop.run(send_batch(settings_for(server), ["ana", "ben"]))

    assert [outcome.state for outcome in outcomes] == [DeliveryState.SENT] * 2
    assert len(reads_with_mail(server)) == 2
    assert delivered_bodies(server) == ["Hello ana", "Hello ben"]
