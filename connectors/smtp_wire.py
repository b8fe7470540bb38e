"""The sender's SMTP wire format: command lines, DATA content, ordered replies.

`envelope_commands` builds the MAIL, RCPT and DATA lines of one
transaction and `encode_content` the dot-stuffed DATA payload.

aiosmtplib 5.1 reads one reply per command and drops reply bytes that
arrive while no command waits, so it cannot read the replies to MAIL, RCPT
and DATA sent in one write (RFC 2920 PIPELINING). Once `open_session` has
set up the connection with aiosmtplib (connect, STARTTLS, EHLO, AUTH),
`ReplyReader` replaces aiosmtplib's protocol on the TLS transport. It
queues every complete reply in arrival order, so a caller can write
several commands and then read their replies one by one.

A reply that arrives when no command is waiting for one, a malformed
reply line and an oversized reply all make the reader unusable, and the
session is then discarded. Reading such bytes as the reply to a later
command could settle a message with another message's reply.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import dataclass

from aiosmtplib import SMTPResponse

__all__ = [
    "MAX_REPLY_BYTES",
    "Command",
    "ConnectionLostError",
    "InvalidReplyError",
    "ReplyError",
    "ReplyReader",
    "ReplyTimeoutError",
    "encode_content",
    "envelope_commands",
]

# A whole reply, continuation lines included, may not exceed this many
# bytes, so a misbehaving server cannot fill memory. Real replies are a few
# hundred bytes. The value is aiosmtplib 5.1's MAX_RESPONSE_LENGTH.
MAX_REPLY_BYTES = 32 * 1024

_COMPLETED = 250
_WILL_FORWARD = 251
_START_MAIL_INPUT = 354

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
# Characters that would end a command line or add parameters after the
# address: whitespace (CR and LF included), angle brackets, quotes, C0, DEL.
_UNSAFE_IN_PATH = re.compile(r'[\s<>"\x00-\x1f\x7f]')


class ReplyError(Exception):
    """No usable reply: the session must be closed."""


class ConnectionLostError(ReplyError):
    """The server closed the connection, or it broke, before the reply."""


class ReplyTimeoutError(ReplyError):
    """The reply did not arrive within the timeout."""


class InvalidReplyError(ReplyError):
    """The server sent a malformed, oversized or unsolicited reply."""


class ReplyReader(asyncio.Protocol):
    """The protocol of a session's transport after setup: writes commands, queues replies.

    `send` counts how many replies the written commands call for, and a
    reply beyond that count is a protocol violation.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._replies: deque[SMTPResponse] = deque()
        self._awaited = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: ReplyError | None = None
        transport.set_protocol(self)

    @property
    def is_open(self) -> bool:
        return self._error is None and not self._transport.is_closing()

    def send(self, commands: bytes, replies: int) -> None:
        """Write ``commands``, which call for ``replies`` replies in order.

        Raises `ConnectionLostError` when the connection is already gone,
        in which case nothing was written.
        """
        if self._error is not None:
            raise self._new_error()
        if self._transport.is_closing():
            raise ConnectionLostError("the connection is closed")
        self._awaited += replies
        self._transport.write(commands)

    async def read_reply(self, timeout: float) -> SMTPResponse:
        """Return the next reply in order, waiting at most ``timeout`` seconds.

        Raises a `ReplyError` when the connection is lost, the reply is
        invalid or the time runs out.
        """
        if self._replies:
            return self._replies.popleft()
        if self._error is not None:
            raise self._new_error()
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = self._loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return self._replies.popleft()

    # --- asyncio.Protocol callbacks ---

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._buffer += data
        try:
            self._parse_replies()
        except InvalidReplyError as error:
            self._fail(error)
            self._transport.abort()
            return
        if self._replies and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def eof_received(self) -> bool:
        self._fail(ConnectionLostError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionLostError("the connection was lost"))

    def _fail(self, error: ReplyError) -> None:
        if self._error is None:
            self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._new_error())

    def _new_error(self) -> ReplyError:
        """Return a fresh copy of the stored error, so each raise has its own traceback."""
        assert self._error is not None
        return type(self._error)(*self._error.args)

    def _parse_replies(self) -> None:
        """Move every complete reply from the buffer to the queue."""
        buffer = self._buffer
        start = 0
        try:
            while True:
                reply, end = _parse_reply(buffer, start)
                if reply is None:
                    break
                if self._awaited == 0:
                    raise InvalidReplyError("reply without a command")
                self._awaited -= 1
                self._replies.append(reply)
                start = end
        finally:
            del buffer[:start]
        if len(buffer) > MAX_REPLY_BYTES:
            raise InvalidReplyError("reply longer than the limit")


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ReplyTimeoutError("no reply within the timeout"))


def _parse_reply(buffer: bytearray, start: int) -> tuple[SMTPResponse | None, int]:
    """Parse the reply that starts at ``start``; return it and where the next starts.

    Returns ``(None, start)`` while the reply is incomplete. RFC 5321
    section 4.2: every line starts with the same three-digit code, and a
    hyphen after the code marks a continuation line. The message is the
    text of the first line, which starts with the enhanced status code
    (RFC 3463) when the server sends one.
    """
    position = start
    first_text: bytes | None = None
    while True:
        end = buffer.find(b"\n", position)
        if end == -1:
            return None, start
        line = bytes(buffer[position:end]).rstrip(b"\r")
        line_code = line[:3]
        separator = line[3:4]
        if not (len(line_code) == 3 and line_code.isdigit()
                and separator in (b"", b" ", b"-")):
            raise InvalidReplyError("malformed reply line")
        if first_text is None:
            first_text = line[4:]
        position = end + 1
        if separator != b"-":
            text = first_text.strip().decode("utf-8", "surrogateescape")
            # The last line's code counts, as in aiosmtplib, if they differ.
            return SMTPResponse(int(line_code), text), position


@dataclass(frozen=True)
class Command:
    """One command line of a transaction and the reply codes that accept it."""

    step: str
    line: bytes
    accepted: tuple[int, ...]


def envelope_commands(envelope_from: str, recipient: str,
                      smtputf8: bool) -> tuple[Command, ...]:
    """Build the MAIL, RCPT and DATA lines, raising ValueError before any write.

    ``smtputf8`` adds the SMTPUTF8 parameter (RFC 6531) and encodes the
    addresses as UTF-8; otherwise a non-ASCII address raises
    UnicodeEncodeError, a ValueError.
    """
    encoding = "utf-8" if smtputf8 else "ascii"
    sender = _path(envelope_from, "envelope sender", encoding)
    target = _path(recipient, "envelope recipient", encoding)
    option = b" SMTPUTF8" if smtputf8 else b""
    return (
        Command("MAIL", b"MAIL FROM:" + sender + option + b"\r\n", (_COMPLETED,)),
        Command("RCPT", b"RCPT TO:" + target + b"\r\n", (_COMPLETED, _WILL_FORWARD)),
        Command("DATA", b"DATA\r\n", (_START_MAIL_INPUT,)),
    )


def _path(address: str, role: str, encoding: str) -> bytes:
    """Return ``<address>`` for a command line, or raise ValueError.

    `check_envelope` runs first and rejects control characters. This check
    sits next to the write and also rejects whitespace, which
    `check_envelope` lets through in a non-ASCII local part, because any of
    these would end the command or add parameters to it.
    """
    if _UNSAFE_IN_PATH.search(address):
        raise ValueError(f"{role} contains a character not allowed in an SMTP command")
    return f"<{address}>".encode(encoding)


def encode_content(data: bytes) -> bytes:
    """Return the DATA payload: CRLF lines, dot-stuffed, then the end marker.

    RFC 5321 section 4.5.2: a line that starts with "." gets one more "." so
    the server does not read it as the end of the message.
    """
    if not data:
        return b".\r\n"
    content = data
    line_ends = data.count(b"\r\n")
    if data.count(b"\n") != line_ends or data.count(b"\r") != line_ends:
        # A bare CR or LF: rewrite every line end as CRLF.
        content = _LINE_BREAK.sub(b"\r\n", data)
    if content.startswith(b"."):
        content = b"." + content
    content = content.replace(b"\r\n.", b"\r\n..")
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    return content + b".\r\n"
