"""TLS-exclusive SMTP sender: one verified connection pool, one recipient a message.

Invariant, never in clear: no envelope address, credential or message byte
is written to a connection before TLS 1.2 or newer is negotiated and the
server's certificate chain and host name are verified. No setting relaxes
this. ``smtp.tls`` is ``implicit`` (TLS on connect, port 465) or
``starttls`` (STARTTLS required, port 587). Any other value is a
`ConfigError` at construction. A server that does not offer STARTTLS,
rejects it or fails verification gives ``dropped_no_tls``.

Errors::

    CarepostError
    ├── ConfigError          invalid sender settings; raised by TlsSender()
    ├── EnvelopeError        unsafe envelope or headers (also a ValueError);
    │                        raised by send() before anything is written
    └── TransportError       the relay could not take one message; carries
        │                    the delivery state, SMTP code and TLS details
        └── TlsRequiredError TLS missing, rejected, too old or unverified

``send`` returns every `TransportError` as a `SendOutcome`, so callers see
exceptions only for programming errors (an `EnvelopeError`, or a call
outside ``async with``). Outcome states:

    sent            250 to the end of DATA
    deferred        any 4xx (421 included); a 5xx to MAIL FROM, EHLO or AUTH;
                    a connection failure before the message content went out
    bounced         5xx to RCPT or DATA
    dropped_no_tls  TLS could not be established and verified
    sending         content sent, final reply lost: outcome unknown, and the
                    caller must not resend it automatically

Logs go to ``carepost.connectors.smtp`` and carry profile ids, SMTP codes and
TLS details, never an address, a reply text or a message body.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pydantic import SecretStr

from carepost.connectors.smtp_envelope import EnvelopeError, check_envelope
from carepost.connectors.smtp_session import (
    OUTCOME_UNKNOWN,
    SessionConfig,
    SmtpSession,
    TlsRequiredError,
    TransportError,
    open_session,
)
from carepost.connectors.smtp_tls import TlsDetails, build_client_context
from carepost.core.errors import ConfigError
from carepost.core.settings import SmtpSettings
from carepost.core.states import DeliveryState

__all__ = [
    "OUTCOME_UNKNOWN",
    "EnvelopeError",
    "SendOutcome",
    "TlsRequiredError",
    "TlsSender",
    "TransportError",
]

logger = logging.getLogger("carepost.connectors.smtp")

_TLS_MODES = ("starttls", "implicit")


@dataclass(frozen=True)
class SendOutcome:
    """How one message ended, with the TLS session it went over.

    ``reason`` contains the failed step and codes only, never an address or
    the server's reply text.
    """

    state: DeliveryState
    reason: str | None = None
    smtp_code: int | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    cert_sha256: str | None = None


class TlsSender:
    """Send single-recipient messages over a pool of verified TLS connections.

    Use as ``async with TlsSender(settings) as sender``. Up to
    ``settings.max_connections`` connections are opened on demand and
    reused across messages, with RSET before each reuse. A semaphore bounds
    the concurrent sends to the same number. A connection that got 421, timed
    out or broke is discarded and a new one is opened for the next message.
    """

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        password: SecretStr | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        if settings.tls not in _TLS_MODES:
            raise ConfigError(
                f"smtp.tls is {settings.tls!r}, expected one of {_TLS_MODES}",
                hint="use 'starttls' for port 587 or 'implicit' for port 465; "
                "there is no plaintext mode",
            )
        if settings.timeout_seconds <= 0:
            raise ConfigError(
                f"smtp.timeout_seconds is {settings.timeout_seconds}, "
                "expected a number of seconds above 0"
            )
        if password is None:
            password = settings.password()
        _check_credentials(settings, password)

        self._settings = settings
        self._config = SessionConfig(
            host=settings.host,
            port=settings.port,
            implicit_tls=settings.tls == "implicit",
            helo_name=settings.helo_name,
            timeout_seconds=settings.timeout_seconds,
            context=build_client_context(
                ca_file if ca_file is not None else settings.ca_file
            ),
            username=settings.username,
            password=password,
        )
        self._idle: list[SmtpSession] = []
        self._slots: asyncio.Semaphore | None = None
        self.sessions_opened = 0

    def __repr__(self) -> str:
        auth = "on" if self._config.username else "off"
        return (
            f"TlsSender(host={self._config.host!r}, port={self._config.port}, "
            f"tls={self._settings.tls!r}, auth={auth})"
        )

    async def __aenter__(self) -> TlsSender:
        self._slots = asyncio.Semaphore(self._settings.max_connections)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._slots = None
        idle, self._idle = self._idle, []
        await asyncio.gather(*(session.quit() for session in idle))
        # A closed transport releases its socket in a callback on the next
        # loop iteration. Yield once so that happens before the caller's
        # event loop can be closed.
        await asyncio.sleep(0)

    async def send(
        self, *, envelope_from: str, recipient: str, data: bytes, profile_id: str
    ) -> SendOutcome:
        """Send one message to one recipient and return how it ended.

        Raises `EnvelopeError` before touching the network when the envelope
        or headers are unsafe. Every server or network failure is returned
        as an outcome instead.
        """
        check_envelope(
            envelope_from=envelope_from,
            recipient=recipient,
            data=data,
            profile_id=profile_id,
        )
        slots = self._slots
        if slots is None:
            raise RuntimeError(
                "call TlsSender.send() inside 'async with TlsSender(...)'"
            )

        async with slots:
            outcome = await self._send_pooled(envelope_from, recipient, data)
        _log_outcome(profile_id, outcome)
        return outcome

    async def _send_pooled(
        self, envelope_from: str, recipient: str, data: bytes
    ) -> SendOutcome:
        try:
            session = await self._checkout()
        except TransportError as exc:
            return _outcome(exc.state, exc.reason, exc.smtp_code, exc.tls)

        try:
            reply = await session.transmit(envelope_from, recipient, data)
        except TransportError as exc:
            session.close()
            return _outcome(exc.state, exc.reason, exc.smtp_code, session.tls)
        except BaseException:
            session.close()
            raise

        self._checkin(session)
        return _outcome(reply.state, reply.reason, reply.smtp_code, session.tls)

    async def _checkout(self) -> SmtpSession:
        while self._idle:
            session = self._idle.pop()
            if session.is_usable and await session.reset():
                return session
            # The server dropped the idle connection or refused RSET. Nothing
            # of a message was sent on it yet, so opening a new one is safe.
            logger.debug("discarded an idle SMTP connection that failed RSET")
            session.close()

        session = await open_session(self._config)
        self.sessions_opened += 1
        logger.info(
            "SMTP connection opened to %s:%d over %s %s, certificate sha256 %s",
            self._config.host,
            self._config.port,
            session.tls.version,
            session.tls.cipher,
            session.tls.cert_sha256,
        )
        return session

    def _checkin(self, session: SmtpSession) -> None:
        if session.is_usable and self._slots is not None:
            self._idle.append(session)
        else:
            session.close()


def _check_credentials(settings: SmtpSettings, password: SecretStr | None) -> None:
    if password is not None and not isinstance(password, SecretStr):
        raise ConfigError(
            f"the SMTP password must be a pydantic SecretStr, got "
            f"{type(password).__name__}",
            hint="wrap it with SecretStr(...) so it never prints",
        )
    if settings.username and password is None:
        env_name = settings.password_env or "(smtp.password_env is not set)"
        raise ConfigError(
            "smtp.username is set but no SMTP password was found",
            hint=f"set the environment variable {env_name}",
        )
    if password is not None and not settings.username:
        raise ConfigError(
            "an SMTP password was given but smtp.username is not set",
            hint="set smtp.username, or remove the password",
        )


def _outcome(
    state: DeliveryState,
    reason: str | None,
    smtp_code: int | None,
    tls: TlsDetails | None,
) -> SendOutcome:
    return SendOutcome(
        state=state,
        reason=reason,
        smtp_code=smtp_code,
        tls_version=tls.version if tls else None,
        tls_cipher=tls.cipher if tls else None,
        cert_sha256=tls.cert_sha256 if tls else None,
    )


def _log_outcome(profile_id: str, outcome: SendOutcome) -> None:
    if outcome.state is DeliveryState.SENT:
        logger.debug(
            "profile %s sent (%s) over %s %s",
            profile_id,
            outcome.smtp_code,
            outcome.tls_version,
            outcome.tls_cipher,
        )
    elif outcome.state is DeliveryState.DROPPED_NO_TLS:
        logger.warning("profile %s dropped, not sent: %s", profile_id, outcome.reason)
    elif outcome.state is DeliveryState.SENDING:
        logger.warning(
            "profile %s %s; the relay may have the message, do not resend",
            profile_id,
            outcome.reason,
        )
    else:
        logger.info("profile %s %s: %s", profile_id, outcome.state, outcome.reason)
