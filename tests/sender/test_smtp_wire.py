"""The wire format: command lines, DATA content, and ReplyReader on real TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from carepost.connectors.smtp_wire import (
    MAX_REPLY_BYTES,
    ConnectionLostError,
    InvalidReplyError,
    ReplyReader,
    ReplyTimeoutError,
    encode_content,
    envelope_commands,
)


@dataclass
class ScriptedPeer:
    """The server end: what the reader's client sent, and a writer to reply."""

    received: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    writer: asyncio.StreamWriter | None = None

    async def reply(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        assert self.writer is not None
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
async def connection() -> AsyncIterator[tuple[ReplyReader, ScriptedPeer]]:
    peer = ScriptedPeer()
    connected = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer.writer = writer
        connected.set()
        while data := await reader.read(4096):
            await peer.received.put(data)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    await connected.wait()
    assert isinstance(transport, asyncio.Transport)
    reply_reader = ReplyReader(transport)
    yield reply_reader, peer
    transport.abort()
    server.close()
    await server.wait_closed()
    # Let the closed transports release their sockets before the loop ends.
    await asyncio.sleep(0.01)


async def test_replies_read_in_order(connection) -> None:
    reader, peer = connection
    reader.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n", 3)
    assert await peer.received.get() == (
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")

    # One reply split across two reads, then a multi-line reply and a
    # third reply in one read.
    await peer.reply(b"250 2.1")
    await peer.reply(b".0 OK\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n503 5.5.1 no\r\n")

    first = await reader.read_reply(1.0)
    second = await reader.read_reply(1.0)
    third = await reader.read_reply(1.0)
    assert (first.code, first.message) == (250, "2.1.0 OK")
    assert (second.code, second.message) == (550, "5.1.1 no such")
    assert (third.code, third.message) == (503, "5.5.1 no")
    assert reader.is_open


async def test_reply_without_command_is_invalid(connection) -> None:
    reader, peer = connection
    reader.send(b"RSET\r\n", 1)
    await peer.reply(b"250 OK\r\n421 4.4.2 idle too long\r\n")

    with pytest.raises(InvalidReplyError):
        await reader.read_reply(1.0)
    assert not reader.is_open


async def test_malformed_reply_is_invalid(connection) -> None:
    reader, peer = connection
    reader.send(b"NOOP\r\n", 1)
    await peer.reply(b"hello there\r\n")

    with pytest.raises(InvalidReplyError):
        await reader.read_reply(1.0)
    assert not reader.is_open


async def test_oversized_reply_is_invalid(connection) -> None:
    reader, peer = connection
    reader.send(b"NOOP\r\n", 1)
    await peer.reply(b"250-" + b"x" * (MAX_REPLY_BYTES + 10))

    with pytest.raises(InvalidReplyError):
        await reader.read_reply(1.0)
    assert not reader.is_open


async def test_missing_reply_times_out(connection) -> None:
    reader, _ = connection
    reader.send(b"NOOP\r\n", 1)

    with pytest.raises(ReplyTimeoutError):
        await reader.read_reply(0.1)


async def test_queued_reply_read_before_lost_connection(connection) -> None:
    reader, peer = connection
    reader.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n", 2)
    await peer.reply(b"421 4.3.2 shutting down\r\n")
    await peer.close()

    reply = await reader.read_reply(1.0)
    assert reply.code == 421
    with pytest.raises(ConnectionLostError):
        await reader.read_reply(1.0)
    with pytest.raises(ConnectionLostError):
        reader.send(b"QUIT\r\n", 1)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b".\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
        (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),
        (b".a\r\n.\r\nb\r\n", b"..a\r\n..\r\nb\r\n.\r\n"),
        (b"a\n.b\n", b"a\r\n..b\r\n.\r\n"),
        (b"a\r\n\r\n", b"a\r\n\r\n.\r\n"),
    ],
    ids=["empty", "crlf", "no-final-crlf", "bare-lf-and-cr", "dots", "dot-after-lf",
         "blank-line"],
)
def test_content_line_ends_and_dots(data: bytes, expected: bytes) -> None:
    assert encode_content(data) == expected


def test_envelope_commands_lines() -> None:
    mail, rcpt, data = envelope_commands("a@example.org", "b@example.org", False)

    assert mail.line == b"MAIL FROM:<a@example.org>\r\n"
    assert rcpt.line == b"RCPT TO:<b@example.org>\r\n"
    assert data.line == b"DATA\r\n"
    assert rcpt.accepted == (250, 251)


def test_envelope_commands_smtputf8() -> None:
    mail, rcpt, _ = envelope_commands("a@example.org", "zoë@example.org", True)

    assert mail.line == b"MAIL FROM:<a@example.org> SMTPUTF8\r\n"
    assert rcpt.line == "RCPT TO:<zoë@example.org>\r\n".encode()


@pytest.mark.parametrize(
    "recipient",
    ["b@example.org> NOTIFY=NEVER", "b\r\nRCPT TO:<c@example.org", "zo\u3000ë@example.org",
     'b"@example.org', "b\x00@example.org"],
    ids=["parameter", "crlf", "unicode-space", "quote", "nul"],
)
def test_envelope_commands_reject_unsafe(recipient: str) -> None:
    with pytest.raises(ValueError, match="envelope recipient contains a character"):
        envelope_commands("a@example.org", recipient, True)


def test_envelope_commands_ascii_without_smtputf8() -> None:
    with pytest.raises(UnicodeEncodeError):
        envelope_commands("a@example.org", "zoë@example.org", False)
