"""Connection reuse and bounded concurrency, counted from the server side."""

from __future__ import annotations

import asyncio

from carepost.connectors.smtp import TlsSender
from carepost.core.states import DeliveryState

from .conftest import SettingsFor, StartServer
from .servers import Script, build_message

SENDER = "clinic@example.org"


async def test_twenty_messages_share_one_connection(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server()

    async with TlsSender(settings_for(server)) as sender:
        outcomes = [
            await sender.send(
                envelope_from=SENDER,
                recipient=f"patient{i}@example.org",
                data=build_message(f"patient{i}@example.org"),
                profile_id=f"p-{i}",
            )
            for i in range(20)
        ]

    assert {outcome.state for outcome in outcomes} == {DeliveryState.SENT}
    assert len({outcome.cert_sha256 for outcome in outcomes}) == 1
    assert sender.sessions_opened == 1
    assert server.sessions == 1
    assert server.tls_sessions == 1
    assert server.count("STARTTLS") == 1
    # Back-to-back completed transactions need no RSET (RFC 5321 4.1.1.4).
    assert server.count("RSET") == 0
    assert server.count("MAIL") == 20
    assert len(server.messages) == 20
    assert server.count("QUIT") == 1


async def test_concurrency_bounded_by_max_connections(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(Script(data_delay_seconds=0.3))

    async with TlsSender(settings_for(server, max_connections=2)) as sender:
        outcomes = await asyncio.gather(
            *(
                sender.send(
                    envelope_from=SENDER,
                    recipient=f"patient{i}@example.org",
                    data=build_message(f"patient{i}@example.org"),
                    profile_id=f"p-{i}",
                )
                for i in range(4)
            )
        )

    assert {outcome.state for outcome in outcomes} == {DeliveryState.SENT}
    assert server.max_concurrent_data == 2
    assert server.sessions == 2
    assert sender.sessions_opened == 2
    assert len(server.messages) == 4


async def test_single_connection_serialises_sends(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(Script(data_delay_seconds=0.1))

    async with TlsSender(settings_for(server, max_connections=1)) as sender:
        await asyncio.gather(
            *(
                sender.send(
                    envelope_from=SENDER,
                    recipient=f"patient{i}@example.org",
                    data=build_message(f"patient{i}@example.org"),
                    profile_id=f"p-{i}",
                )
                for i in range(3)
            )
        )

    assert server.max_concurrent_data == 1
    assert server.sessions == 1
    assert len(server.messages) == 3


async def test_broken_connection_is_replaced(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(Script(rcpt_replies={"b@example.org": "421 4.4.2 bye"}))

    async with TlsSender(settings_for(server, max_connections=1)) as sender:
        states = []
        for name in ["a", "b", "c", "d"]:
            outcome = await sender.send(
                envelope_from=SENDER,
                recipient=f"{name}@example.org",
                data=build_message(f"{name}@example.org"),
                profile_id=f"p-{name}",
            )
            states.append(outcome.state)

    assert states == [
        DeliveryState.SENT,
        DeliveryState.DEFERRED,
        DeliveryState.SENT,
        DeliveryState.SENT,
    ]
    assert sender.sessions_opened == 2
    assert server.sessions == 2
    assert len(server.messages) == 3


async def test_idle_connection_closed_by_server(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(Script(idle_timeout_seconds=0.3))

    async with TlsSender(settings_for(server)) as sender:
        first = await sender.send(
            envelope_from=SENDER,
            recipient="a@example.org",
            data=build_message("a@example.org"),
            profile_id="p-a",
        )
        await asyncio.sleep(0.8)
        second = await sender.send(
            envelope_from=SENDER,
            recipient="b@example.org",
            data=build_message("b@example.org"),
            profile_id="p-b",
        )

    assert first.state is DeliveryState.SENT
    assert second.state is DeliveryState.SENT
    assert sender.sessions_opened == 2
    assert server.sessions == 2
    assert len(server.messages) == 2


async def test_rset_after_rejected_recipient(
    start_server: StartServer, settings_for: SettingsFor
) -> None:
    server = start_server(Script(rcpt_replies={"bad@example.org": "550 5.1.1 no"}))

    async with TlsSender(settings_for(server, max_connections=1)) as sender:
        states = [
            (await sender.send(envelope_from=SENDER, recipient=address,
                               data=build_message(address), profile_id="p")).state
            for address in ("bad@example.org", "good@example.org")
        ]

    assert states == [DeliveryState.BOUNCED, DeliveryState.SENT]
    assert server.verbs().count("RSET") == 1
    assert server.sessions == 1
