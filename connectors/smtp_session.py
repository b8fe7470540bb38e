"""One SMTP connection of the TLS-exclusive sender.

`open_session` connects, makes the connection TLS (implicit TLS or a
required STARTTLS), checks the negotiated version, sends EHLO over TLS and
authenticates. Every failure before the session is ready raises
`TransportError`, or `TlsRequiredError` when TLS itself could not be
established or verified. The sender turns either into a delivery outcome.

`SmtpSession.transmit` runs one MAIL/RCPT/DATA transaction and returns a
`Reply`. The session writes commands and reads replies through its own
`ReplyReader` rather than aiosmtplib, for two reasons. When the server
advertises PIPELINING, MAIL, RCPT and DATA go out in one write and their
replies are read in order, which aiosmtplib cannot do. And the session
records whether the end-of-data marker went out, because a reply lost
after that point means the outcome is unknown.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass
from typing import cast

from aiosmtplib import (
    SMTP,
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPConnectTimeoutError,
    SMTPException,
    SMTPHeloError,
    SMTPResponse,
    SMTPResponseException,
)
from pydantic import SecretStr

from carepost.connectors.smtp_tls import (
    TlsDetails,
    describe_ssl_failure,
    is_accepted_version,
    read_tls_details,
)
from carepost.connectors.smtp_wire import (
    Command,
    InvalidReplyError,
    ReplyError,
    ReplyReader,
    ReplyTimeoutError,
    encode_content,
    envelope_commands,
)
from carepost.core.errors import CarepostError
from carepost.core.states import DeliveryState

__all__ = [
    "NEEDS_SMTPUTF8",
    "OUTCOME_UNKNOWN",
    "Reply",
    "SessionConfig",
    "SmtpSession",
    "TlsRequiredError",
    "TransportError",
    "open_session",
]

OUTCOME_UNKNOWN = "outcome unknown: no reply after DATA"
# A reused connection idle for less than this skips RSET (see reset()).
RSET_SKIP_IDLE_SECONDS = 2.0
NEEDS_SMTPUTF8 = (
    "undeliverable: the address needs SMTPUTF8 and the server does not offer it"
)

_COMPLETED = 250
_SERVICE_CLOSING = 421

# The enhanced status code at the start of a reply text (RFC 3463), such as
# "5.1.1". Only this part of a reply is kept, because the free text after it
# often repeats the recipient's address.
_ENHANCED_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


class TransportError(CarepostError):
    """The relay did not take a message, and ``state`` is how to settle it."""

    state = DeliveryState.DEFERRED

    def __init__(
        self,
        reason: str,
        *,
        smtp_code: int | None = None,
        tls: TlsDetails | None = None,
    ) -> None:
        self.reason = reason
        self.smtp_code = smtp_code
        self.tls = tls
        super().__init__(reason)


class TlsRequiredError(TransportError):
    """TLS was not offered, was rejected, or did not verify: never send in clear."""

    state = DeliveryState.DROPPED_NO_TLS


@dataclass(frozen=True)
class SessionConfig:
    """Everything one connection needs, validated by the sender beforehand."""

    host: str
    port: int
    implicit_tls: bool
    helo_name: str
    timeout_seconds: float
    context: ssl.SSLContext
    username: str | None
    password: SecretStr | None
    # The name the certificate must match when ``host`` is an MX host's
    # address; None means ``host`` itself.
    tls_server_name: str | None = None
    connect_timeout_seconds: float | None = None
    # False only under ``smtp.unverified_mx: encrypt`` for an MX host that
    # has no MTA-STS policy; ``context`` then checks no certificate.
    verify_certificate: bool = True


@dataclass(frozen=True)
class Reply:
    """Result of one transaction: the delivery state, a reason and the code."""

    state: DeliveryState
    reason: str | None
    smtp_code: int | None


class _StepFailed(Exception):
    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(reply.reason)


async def open_session(config: SessionConfig) -> SmtpSession:
    """Open a connection that is TLS-verified, greeted and authenticated."""
    client = SMTP(
        hostname=config.host,
        port=config.port,
        local_hostname=config.helo_name,
        timeout=config.timeout_seconds,
        use_tls=config.implicit_tls,
        # False, not aiosmtplib's default None: None upgrades only when the
        # server offers STARTTLS and carries on in clear when it does not.
        start_tls=False,
        validate_certs=True,
        tls_context=config.context,
    )
    try:
        await _connect(client, config.connect_timeout_seconds)
        if not config.implicit_tls:
            await _ehlo(client)
            await _start_tls(client, config)
        tls = _verified_tls(client, config.verify_certificate)
        await _ehlo(client)
        await _authenticate(client, config)
        return SmtpSession(client, tls, config.timeout_seconds)
    except BaseException:
        _abort(client, client.transport)
        raise


class SmtpSession:
    """A ready connection: TLS verified, EHLO sent over TLS, authenticated.

    From here on a `ReplyReader` owns the transport, and aiosmtplib is no
    longer used for commands. ``pipelining`` is True when the EHLO reply
    over TLS advertised PIPELINING (RFC 2920); only then do MAIL, RCPT and
    DATA go out in one write.
    """

    def __init__(self, client: SMTP, tls: TlsDetails, timeout_seconds: float) -> None:
        self.tls = tls
        self.messages_sent = 0
        self.pipelining = client.supports_extension("pipelining")
        self._smtputf8 = client.supports_extension("smtputf8")
        self._client = client
        # aiosmtplib drops its transport reference when it closes itself,
        # so keep it here for _abort. uvloop's TLS transport has the methods
        # of asyncio.Transport without subclassing it, hence the cast.
        if client.transport is None:
            raise TransportError("connection lost after AUTH")
        transport = cast(asyncio.Transport, client.transport)
        self._transport = transport
        self._reader = ReplyReader(transport)
        self._timeout_seconds = timeout_seconds
        self._deadline: float | None = None
        self._broken = False
        self._transaction_closed = False
        self._finished_at = 0.0

    @property
    def is_usable(self) -> bool:
        return not self._broken and self._reader.is_open

    async def reset(self) -> bool:
        """Make the connection ready for a new transaction; return whether it is.

        After a final reply to DATA the server has already reset its state
        (RFC 5321 section 4.1.1.4), so a connection used less than
        `RSET_SKIP_IDLE_SECONDS` ago skips RSET and its round trip. An
        aborted transaction, or a longer idle time, gets RSET, which also
        shows that the server has not closed the connection meanwhile.
        """
        idle = asyncio.get_running_loop().time() - self._finished_at
        if self._transaction_closed and idle < RSET_SKIP_IDLE_SECONDS:
            return True
        try:
            self._reader.send(b"RSET\r\n", 1)
            reply = await self._reader.read_reply(self._timeout_seconds)
        except ReplyError:
            self.close()
            return False
        if reply.code != _COMPLETED:
            self.close()
            return False
        return True

    async def transmit(
        self,
        envelope_from: str,
        recipient: str,
        data: bytes,
        *,
        smtputf8: bool = False,
        deadline: float | None = None,
    ) -> Reply:
        """Run MAIL, RCPT and DATA for one message and return its reply.

        ``smtputf8`` marks an address with a non-ASCII local part: it goes
        out only when the server offers SMTPUTF8 (RFC 6531), otherwise the
        reply is a bounce with `NEEDS_SMTPUTF8` and no command is sent.
        ``deadline`` (event loop time) bounds the whole transaction; each
        reply still gets at most the per-command timeout. Raises
        ValueError, before anything is written, when an address contains
        a character that could end or extend the command line.
        """
        if not self.is_usable:
            self.close()
            return Reply(DeliveryState.DEFERRED, "connection lost before MAIL", None)
        if self._transport.get_extra_info("ssl_object") is None:
            # Unreachable while open_session is the only way in. It stays as
            # the last check before an address would leave this process.
            self.close()
            raise TlsRequiredError("connection is not encrypted before MAIL FROM")

        if smtputf8 and not self._smtputf8:
            return Reply(DeliveryState.BOUNCED, NEEDS_SMTPUTF8, None)
        commands = envelope_commands(envelope_from, recipient, smtputf8)
        self._deadline = deadline
        self._transaction_closed = False
        try:
            if self.pipelining:
                await self._pipelined_envelope(commands)
            else:
                await self._stepwise_envelope(commands)
        except _StepFailed as failure:
            return failure.reply

        return await self._send_content(data)

    async def quit(self) -> None:
        """Send QUIT and close, ignoring errors because the session is over."""
        try:
            self._reader.send(b"QUIT\r\n", 1)
            await self._reader.read_reply(self._timeout_seconds)
        except ReplyError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self._broken = True
        _abort(self._client, self._transport)

    async def _stepwise_envelope(self, commands: tuple[Command, ...]) -> None:
        """Send each command after the reply to the one before (no PIPELINING)."""
        for command in commands:
            self._send(command.line, 1, command.step)
            reply = await self._read_reply(command.step)
            if reply.code not in command.accepted:
                raise _StepFailed(self._rejection(command.step, reply.code, reply.message))

    async def _pipelined_envelope(self, commands: tuple[Command, ...]) -> None:
        """Send MAIL, RCPT and DATA in one write, then check their replies in order.

        The first rejection settles the message, and the replies after it
        are still read so the next transaction starts in step. The server
        rejects DATA when MAIL or RCPT failed (RFC 2920 section 3.1). If it
        replies 354 anyway, no content is sent and the session is closed.
        """
        self._send(b"".join(command.line for command in commands), len(commands),
                   commands[0].step)
        failure: Reply | None = None
        for command in commands:
            try:
                reply = await self._read_reply(command.step)
            except _StepFailed:
                if failure is not None:
                    raise _StepFailed(failure) from None
                raise
            if reply.code in command.accepted:
                if failure is not None and command.step == "DATA":
                    self.close()
                    raise _StepFailed(failure)
                continue
            rejection = self._rejection(command.step, reply.code, reply.message)
            failure = failure or rejection
            if self._broken:
                # 421 or an unexpected code: _rejection closed the session.
                raise _StepFailed(failure)
        if failure is not None:
            raise _StepFailed(failure)

    def _send(self, commands: bytes, replies: int, step: str) -> None:
        try:
            self._reader.send(commands, replies)
        except ReplyError:
            self.close()
            reason = f"connection lost before {step}"
            raise _StepFailed(Reply(DeliveryState.DEFERRED, reason, None)) from None

    async def _read_reply(self, step: str) -> SMTPResponse:
        timeout = self._command_timeout(step)
        try:
            return await self._reader.read_reply(timeout)
        except ReplyError as error:
            self.close()
            reason = _reply_failure(step, error)
            raise _StepFailed(Reply(DeliveryState.DEFERRED, reason, None)) from None

    def _command_timeout(self, step: str) -> float:
        """Return the timeout of the next reply, or raise when the message timed out."""
        if self._deadline is None:
            return self._timeout_seconds
        remaining = self._deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            self.close()
            reason = f"message timed out before {step}"
            raise _StepFailed(Reply(DeliveryState.DEFERRED, reason, None))
        return min(self._timeout_seconds, remaining)

    async def _send_content(self, data: bytes) -> Reply:
        try:
            self._reader.send(encode_content(data), 1)
        except ReplyError:
            self.close()
            return Reply(DeliveryState.DEFERRED, "connection lost before content", None)

        # From here the server may have the whole message, so a missing reply
        # must never turn into a retry (it would be a second copy).
        try:
            timeout = self._command_timeout("the final reply")
        except _StepFailed:
            return Reply(DeliveryState.SENDING, OUTCOME_UNKNOWN, None)
        try:
            final = await self._reader.read_reply(timeout)
        except ReplyError:
            self.close()
            return Reply(DeliveryState.SENDING, OUTCOME_UNKNOWN, None)

        self._transaction_closed = True
        self._finished_at = asyncio.get_running_loop().time()
        if final.code == _COMPLETED:
            self.messages_sent += 1
            return Reply(DeliveryState.SENT, None, final.code)
        return self._rejection("DATA", final.code, final.message)

    def _rejection(self, step: str, code: int, message: str) -> Reply:
        if code == _SERVICE_CLOSING or not 400 <= code < 600:
            self.close()
        if not 400 <= code < 600:
            reason = f"unexpected reply to {step}: {code}"
            return Reply(DeliveryState.DEFERRED, reason, code if code > 0 else None)

        reason = f"{step} rejected: {code}{_enhanced_status(message)}"
        if code >= 500 and step in ("RCPT", "DATA"):
            return Reply(DeliveryState.BOUNCED, reason, code)
        # 4xx is temporary. A 5xx to MAIL FROM rejects the sender or the
        # session, not the patient's address, so it must not bounce them.
        return Reply(DeliveryState.DEFERRED, reason, code)


def _reply_failure(step: str, error: ReplyError) -> str:
    if isinstance(error, ReplyTimeoutError):
        return f"reply to {step} timed out"
    if isinstance(error, InvalidReplyError):
        return f"invalid reply to {step}"
    return f"connection lost at {step}"


async def _connect(client: SMTP, timeout_seconds: float | None) -> None:
    try:
        if timeout_seconds is None:
            await client.connect()
        else:
            await client.connect(timeout=timeout_seconds)
    except SMTPConnectResponseError as exc:
        reason = f"greeting rejected: {exc.code}{_enhanced_status(exc.message)}"
        raise TransportError(reason, smtp_code=exc.code) from None
    except SMTPConnectTimeoutError:
        raise TransportError("connect timed out") from None
    except SMTPConnectError as exc:
        # Implicit TLS: aiosmtplib wraps a failed handshake in SMTPConnectError.
        if isinstance(exc.__cause__, ssl.SSLError):
            raise TlsRequiredError(describe_ssl_failure(exc.__cause__)) from None
        cause = type(exc.__cause__ or exc).__name__
        raise TransportError(f"connect failed: {cause}") from None


async def _ehlo(client: SMTP) -> None:
    try:
        await client.ehlo()
    except SMTPHeloError as exc:
        reason = f"EHLO rejected: {exc.code}{_enhanced_status(exc.message)}"
        raise TransportError(reason, smtp_code=exc.code) from None
    except (SMTPException, OSError) as exc:
        raise TransportError(f"EHLO failed: {type(exc).__name__}") from None


async def _start_tls(client: SMTP, config: SessionConfig) -> None:
    if not client.supports_extension("starttls"):
        raise TlsRequiredError("server did not offer STARTTLS")
    try:
        await client.starttls(
            server_hostname=config.tls_server_name or config.host,
            tls_context=config.context,
        )
    except SMTPResponseException as exc:
        # NOTE: a temporary 454 reply drops the message like a permanent
        # refusal; it is not deferred and retried over TLS later.
        reason = f"STARTTLS rejected: {exc.code}{_enhanced_status(exc.message)}"
        raise TlsRequiredError(reason, smtp_code=exc.code) from None
    except (SMTPException, OSError) as exc:
        # aiosmtplib 5.1 lets a failed handshake through as the raw
        # ssl.SSLError, a subclass of OSError, and wraps timeouts and resets.
        raise TlsRequiredError(describe_ssl_failure(exc)) from None


def _verified_tls(client: SMTP, verified: bool) -> TlsDetails:
    ssl_object = client.get_transport_info("ssl_object")
    if ssl_object is None:
        raise TlsRequiredError("connection is not encrypted after the TLS step")
    details = read_tls_details(ssl_object, verified=verified)
    if not is_accepted_version(details.version):
        reason = f"negotiated {details.version}, older than the TLS 1.2 minimum"
        raise TlsRequiredError(reason, tls=details)
    return details


async def _authenticate(client: SMTP, config: SessionConfig) -> None:
    if config.username is None or config.password is None:
        return
    if client.get_transport_info("ssl_object") is None:
        raise TlsRequiredError("refusing AUTH on a connection without TLS")
    if not client.supports_extension("auth"):
        raise TransportError("server did not offer AUTH after TLS")
    try:
        await client.login(config.username, config.password.get_secret_value())
    except SMTPAuthenticationError as exc:
        reason = f"AUTH rejected: {exc.code}{_enhanced_status(exc.message)}"
        raise TransportError(reason, smtp_code=exc.code) from None
    except (SMTPException, OSError) as exc:
        raise TransportError(f"AUTH failed: {type(exc).__name__}") from None


def _abort(client: SMTP, transport: asyncio.BaseTransport | None) -> None:
    """Close the client and drop its socket without a TLS shutdown exchange.

    A plain close() of a TLS transport waits for the server's close_notify,
    which can outlive the caller's event loop and leak the socket. The
    session is over either way, after QUIT or after an error.
    """
    client.close()
    # uvloop's TLS transport has abort() without subclassing asyncio.Transport.
    abort = getattr(transport, "abort", None)
    if abort is not None:
        abort()


def _enhanced_status(message: str) -> str:
    match = _ENHANCED_STATUS.match(message or "")
    return f" {match.group()}" if match else ""
