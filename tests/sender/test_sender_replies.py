"""Reply handling: 4xx defers, 5xx to RCPT/DATA bounces, a lost reply is unknown."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from carepost.connectors.smtp import OUTCOME_UNKNOWN, SendOutcome, TlsSender
from carepost.core.settings import SmtpSettings
from carepost.core.states import DeliveryState

from .conftest import SettingsFor, StartServer
from .servers import Script, build_message

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


def delivered_bodies(messages: list[bytes]) -> list[str]:
    return [m.split(b"\r\n\r\n", 1)[1].strip().decode() for m in messages]


async def test_one_rejected_recipient_bounces_alone(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    script = Script(rcpt_replies={address("ben"): "550 5.1.1 <ben@example.org>: no"})
    server = start_server(script)

    ana, ben, cy = await send_batch(settings_for(server), ["ana", "ben", "cy"])

    assert ana.state is DeliveryState.SENT
    assert ben.state is DeliveryState.BOUNCED
    assert ben.smtp_code == 550
    assert ben.reason == "RCPT rejected: 550 5.1.1"
    assert cy.state is DeliveryState.SENT
    assert delivered_bodies(server.messages) == ["Hello ana", "Hello cy"]
    assert server.sessions == 1


async def test_malformed_address_batch_sends_others_once(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    # The shape of a batch where the relay rejects one address with 553:
    # only that recipient fails, and no other recipient gets a second copy.
    script = Script(rcpt_replies={address("carl"): "553 5.1.3 bad address syntax"})
    server = start_server(script)

    outcomes = await send_batch(settings_for(server), ["ana", "ben", "carl"])

    states = [outcome.state for outcome in outcomes]
    assert states == [DeliveryState.SENT, DeliveryState.SENT, DeliveryState.BOUNCED]
    assert outcomes[2].smtp_code == 553
    assert delivered_bodies(server.messages) == ["Hello ana", "Hello ben"]
    assert server.count("DATA") == 2


@pytest.mark.parametrize("code", [450, 451, 452])
async def test_temporary_rcpt_reply_defers(
    start_server: StartServer, settings_for: SettingsFor, code: int
) -> None:
    reply = f"{code} 4.2.0 try again later"
    server = start_server(Script(rcpt_replies={address("ben"): reply}))

    ana, ben, cy = await send_batch(settings_for(server), ["ana", "ben", "cy"])

    assert ben.state is DeliveryState.DEFERRED
    assert ben.smtp_code == code
    assert ana.state is DeliveryState.SENT
    assert cy.state is DeliveryState.SENT
    assert len(server.messages) == 2
    assert server.sessions == 1


async def test_421_on_rcpt_defers_and_reconnects(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    reply = "421 4.7.0 try again later"
    server = start_server(Script(rcpt_replies={address("ben"): reply}))

    ana, ben, cy = await send_batch(settings_for(server), ["ana", "ben", "cy"])

    assert ben.state is DeliveryState.DEFERRED
    assert ben.smtp_code == 421
    assert cy.state is DeliveryState.SENT
    assert ana.state is DeliveryState.SENT
    assert server.sessions == 2
    assert server.tls_sessions == 2


async def test_421_after_two_messages(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    # The relay accepts two messages, then replies 421 and closes the
    # connection, and does the same on every new connection.
    server = start_server(Script(accept_messages=2))

    outcomes = await send_batch(settings_for(server), ["a", "b", "c", "d"])

    states = [outcome.state for outcome in outcomes]
    assert states == [
        DeliveryState.SENT,
        DeliveryState.SENT,
        DeliveryState.DEFERRED,
        DeliveryState.DEFERRED,
    ]
    assert [outcome.smtp_code for outcome in outcomes[2:]] == [421, 421]
    assert delivered_bodies(server.messages) == ["Hello a", "Hello b"]
    assert server.count("DATA") == 2


@pytest.mark.parametrize(
    ("reply", "state"),
    [
        ("554 5.6.0 message content rejected", DeliveryState.BOUNCED),
        ("451 4.3.0 local problem, try later", DeliveryState.DEFERRED),
    ],
)
async def test_final_data_reply_settles(
    start_server: StartServer,
    settings_for: SettingsFor,
    reply: str,
    state: DeliveryState,
) -> None:
    server = start_server(Script(data_reply=reply))

    (outcome,) = await send_batch(settings_for(server), ["ana"])

    assert outcome.state is state
    assert outcome.smtp_code == int(reply[:3])
    assert len(server.messages) == 1


async def test_close_after_data_is_unknown(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(Script(close_after_data=True))

    (outcome,) = await send_batch(settings_for(server), ["ana"])

    assert outcome.state is DeliveryState.SENDING
    assert outcome.reason == OUTCOME_UNKNOWN
    assert outcome.reason == "outcome unknown: no reply after DATA"
    assert outcome.smtp_code is None
    assert len(server.messages) == 1


async def test_late_final_reply_is_unknown(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(Script(data_delay_seconds=3.0))
    settings = settings_for(server, timeout_seconds=0.5)

    first, second = await send_batch(settings, ["ana", "ben"])

    assert first.state is DeliveryState.SENDING
    assert first.reason == OUTCOME_UNKNOWN
    # The connection that lost its reply is discarded; the next message
    # opens a new one instead of reading the stale 250 as its own.
    assert second.state is DeliveryState.SENDING
    assert server.sessions == 2
    assert len(server.messages) == 2


async def test_connect_refused_defers(settings_for: SettingsFor, start_server) -> None:
    server = start_server()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings = settings_for(server, port=closed_port)

    (outcome,) = await send_batch(settings, ["ana"])

    assert outcome.state is DeliveryState.DEFERRED
    assert outcome.reason == "connect failed: ConnectionRefusedError"
    assert server.commands == []


async def test_ehlo_timeout_defers(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(Script(ehlo_delay_seconds=3.0))
    settings = settings_for(server, timeout_seconds=0.5)

    (outcome,) = await send_batch(settings, ["ana"])

    assert outcome.state is DeliveryState.DEFERRED
    assert outcome.reason == "EHLO failed: SMTPReadTimeoutError"
    assert server.verbs() == ["EHLO"]
    assert server.messages == []


async def test_no_address_in_reasons_or_logs(
    start_server: StartServer,
    settings_for: SettingsFor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    replies = {
        address("ben"): "550 5.1.1 <ben@example.org>: user unknown",
        address("cy"): "452 4.2.2 <cy@example.org>: mailbox full",
    }
    server = start_server(Script(rcpt_replies=replies))
    caplog.set_level(logging.DEBUG, logger="carepost.connectors.smtp")

    outcomes = await send_batch(settings_for(server), ["ana", "ben", "cy"])

    for outcome in outcomes:
        assert "example.org" not in (outcome.reason or "")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "example.org" not in logged
    assert "Hello" not in logged
    assert "p-ben" in logged
    assert "550" in logged


async def test_concurrent_sends_settle_each(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    script = Script(rcpt_replies={address("b2"): "550 5.1.1 unknown"})
    server = start_server(script)
    names = [f"b{i}" for i in range(6)]

    async with TlsSender(settings_for(server, max_connections=3)) as sender:
        outcomes = await asyncio.gather(
            *(
                sender.send(
                    envelope_from=SENDER,
                    recipient=address(name),
                    data=build_message(address(name), body=f"Hello {name}"),
                    profile_id=f"p-{name}",
                )
                for name in names
            )
        )

    states = {name: outcome.state for name, outcome in zip(names, outcomes)}
    assert states.pop("b2") is DeliveryState.BOUNCED
    assert set(states.values()) == {DeliveryState.SENT}
    expected = sorted(f"Hello {name}" for name in names if name != "b2")
    assert sorted(delivered_bodies(server.messages)) == expected
