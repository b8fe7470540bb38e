"""TLS-exclusive SMTP sender: verified connection pools, one recipient a message.

Invariant, never in clear: no envelope address, credential or message byte
is written to a connection before TLS 1.2 or newer is negotiated and the
server's certificate chain and host name are verified. No setting relaxes
this. ``smtp.tls`` is ``implicit`` (TLS on connect, port 465) or
``starttls`` (STARTTLS required, port 587). Any other value is a
`ConfigError` at construction. A server that does not offer STARTTLS,
rejects it or fails verification gives ``dropped_no_tls``.

``smtp.mode`` is ``relay`` (one smarthost, with AUTH when configured) or
``mx`` (each recipient domain's MX hosts, with MTA-STS; see `smtp_mx`).
Both modes reuse connections, bound concurrent sends in total
(``max_connections``) and per host, space messages to one recipient
domain (``rate_per_domain``), and bound each command
(``timeout_seconds``), the connect (``connect_timeout_seconds``) and the
whole transaction (``message_timeout_seconds``). When ``smtp.dkim`` is
set, every message is DKIM-signed before it leaves.

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
                    a connection failure before the message content went out;
                    a temporary DNS failure (mx mode)
    bounced         5xx to RCPT or DATA, a null MX or a domain that does not
                    exist (these set ``suppress``); an address that needs
                    SMTPUTF8 when the server does not offer it (no suppress)
    dropped_no_tls  TLS could not be established and verified
    sending         content sent, final reply lost: outcome unknown, and the
                    caller must not resend it automatically

Logs go to ``carepost.connectors.smtp`` and carry profile ids, SMTP codes and
TLS details, never an address, a reply text or a message body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pydantic import SecretStr
from sqlalchemy import Engine

from carepost.connectors.dkim_signing import DkimSigner
from carepost.connectors.mta_sts import MtaStsFetcher
from carepost.connectors.mx import MxResolver, to_ascii_domain
from carepost.connectors.smtp_envelope import EnvelopeError, check_envelope, wire_address
from carepost.connectors.smtp_mx import MxResult, MxRouter
from carepost.connectors.smtp_pool import DomainRateLimiter, PoolResult, SessionPool
from carepost.connectors.smtp_session import (
    NEEDS_SMTPUTF8,
    OUTCOME_UNKNOWN,
    SessionConfig,
    TlsRequiredError,
    TransportError,
)
from carepost.connectors.smtp_tls import build_client_context
from carepost.connectors.tls_status import TlsStatusStore
from carepost.core.errors import ConfigError
from carepost.core.settings import SmtpSettings
from carepost.core.states import DeliveryState

__all__ = [
    "NEEDS_SMTPUTF8",
    "OUTCOME_UNKNOWN",
    "EnvelopeError",
    "SendOutcome",
    "TlsRequiredError",
    "TlsSender",
    "TransportError",
]

logger = logging.getLogger("carepost.connectors.smtp")

_TLS_MODES = ("starttls", "implicit")
_MODES = ("relay", "mx")


@dataclass(frozen=True)
class SendOutcome:
    """The end state of one message, with the TLS session and host it went over.

    ``reason`` contains the failed step and codes only, never an address or
    the server's reply text. ``suppress`` is True when the address can
    never take mail (a 5xx bounce, a null MX, a domain that does not
    exist). ``mx_host`` is the MX host name in mx mode.
    """

    state: DeliveryState
    reason: str | None = None
    smtp_code: int | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    cert_sha256: str | None = None
    cert_verified: bool | None = None
    mx_host: str | None = None
    mta_sts_mode: str | None = None
    suppress: bool = False


class TlsSender:
    """Send single-recipient messages over pools of verified TLS connections.

    Use as ``async with TlsSender(settings) as sender``. In relay mode one
    pool of up to ``settings.max_connections`` sessions goes to the relay.
    In mx mode each MX host gets its own pool of up to
    ``max_connections_per_host``, and ``max_connections`` bounds the sends
    in flight across all of them.

    ``resolver``, ``status_store``, ``mx_ports`` and ``mta_sts_https_port``
    serve mx mode. ``mx_ports`` and ``mta_sts_https_port`` exist for tests
    only (local servers on their own ports); production uses 25 and 443.
    """

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        password: SecretStr | None = None,
        ca_file: str | Path | None = None,
        resolver: MxResolver | None = None,
        status_store: TlsStatusStore | None = None,
        mx_ports: Mapping[str, int] | None = None,
        mta_sts_https_port: int = 443,
    ) -> None:
        _check_modes(settings)
        if password is None and settings.mode == "relay":
            password = settings.password()
        _check_credentials(settings, password)

        self._settings = settings
        ca = ca_file if ca_file is not None else settings.ca_file
        self._dkim = DkimSigner(settings.dkim) if settings.dkim is not None else None
        self._rate = DomainRateLimiter(settings.rate_per_domain, settings.rate_burst)
        self._slots: asyncio.Semaphore | None = None
        self._relay: SessionPool | None = None
        self._router: MxRouter | None = None
        self.status_store = status_store or TlsStatusStore()
        if settings.mode == "relay":
            self._relay_config = _relay_config(settings, password, ca)
        else:
            self._router = _build_router(settings, ca, resolver, self.status_store,
                                         mx_ports, mta_sts_https_port)

    def __repr__(self) -> str:
        if self._router is not None:
            return f"TlsSender(mode='mx', unverified_mx={self._settings.unverified_mx!r})"
        auth = "on" if self._relay_config.username else "off"
        return (
            f"TlsSender(host={self._relay_config.host!r}, "
            f"port={self._relay_config.port}, tls={self._settings.tls!r}, auth={auth})"
        )

    @property
    def sessions_opened(self) -> int:
        if self._router is not None:
            return self._router.sessions_opened
        return self._relay.sessions_opened if self._relay is not None else 0

    async def __aenter__(self) -> TlsSender:
        self._slots = asyncio.Semaphore(self._settings.max_connections)
        if self._router is None:
            self._relay = SessionPool(self._relay_config, self._settings.max_connections)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._slots = None
        if self._relay is not None:
            await self._relay.close()
        if self._router is not None:
            await self._router.close()
        # A closed transport releases its socket in a callback on the next
        # loop iteration. Yield once so that happens before the caller's
        # event loop can be closed.
        await asyncio.sleep(0)

    def use_ledger(self, engine: Engine) -> None:
        """Keep domain TLS statuses and MTA-STS policies in the ledger database.

        Does nothing when the store is already persistent.
        """
        if not self.status_store.persistent:
            self.status_store.attach(engine)

    def tls_refusal(self, recipient: str) -> str | None:
        """Return why the recipient's domain is known not to take TLS mail, or None.

        Only mx mode tracks domains; a relay decides for itself per message.
        """
        if self._router is None:
            return None
        try:
            domain = to_ascii_domain(recipient.rpartition("@")[2])
        except ValueError:
            return None
        return self._router.refusal(domain)

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
        wire_from, sender_utf8 = wire_address(envelope_from)
        wire_to, recipient_utf8 = wire_address(recipient)
        if self._dkim is not None:
            data = self._dkim.sign(data)

        await self._rate.acquire(wire_to.rpartition("@")[2])
        async with slots:
            deadline = (asyncio.get_running_loop().time()
                        + self._settings.message_timeout_seconds)
            outcome = await self._deliver(wire_from, wire_to, data,
                                          sender_utf8 or recipient_utf8, deadline)
        _log_outcome(profile_id, outcome)
        return outcome

    async def _deliver(self, envelope_from: str, recipient: str, data: bytes,
                       smtputf8: bool, deadline: float) -> SendOutcome:
        if self._router is not None:
            routed = await self._router.send(envelope_from, recipient, data,
                                             smtputf8=smtputf8, deadline=deadline)
            return _outcome(routed)
        assert self._relay is not None
        result = await self._relay.send(envelope_from, recipient, data,
                                        smtputf8=smtputf8, deadline=deadline)
        return _outcome(MxResult(result))


def _check_modes(settings: SmtpSettings) -> None:
    if settings.mode not in _MODES:
        raise ConfigError(
            f"smtp.mode is {settings.mode!r}, expected one of {_MODES}",
            hint="use 'relay' for a smarthost or 'mx' to deliver to MX hosts",
        )
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
    if settings.mode == "mx" and settings.username:
        raise ConfigError(
            "smtp.username is set but smtp.mode is 'mx', and MX hosts take no AUTH",
            hint="remove smtp.username, or use mode 'relay' for a smarthost",
        )


def _relay_config(settings: SmtpSettings, password: SecretStr | None,
                  ca_file: str | Path | None) -> SessionConfig:
    return SessionConfig(
        host=settings.host,
        port=settings.port,
        implicit_tls=settings.tls == "implicit",
        helo_name=settings.helo_name,
        timeout_seconds=settings.timeout_seconds,
        context=build_client_context(ca_file),
        username=settings.username,
        password=password,
        connect_timeout_seconds=settings.connect_timeout_seconds,
    )


def _build_router(settings: SmtpSettings, ca_file: str | Path | None,
                  resolver: MxResolver | None, store: TlsStatusStore,
                  mx_ports: Mapping[str, int] | None, https_port: int) -> MxRouter:
    resolver = resolver or MxResolver()
    fetcher = MtaStsFetcher(resolver, store.policy_cache(),
                            context=build_client_context(ca_file),
                            https_port=https_port)
    return MxRouter(settings, resolver=resolver, store=store, mta_sts=fetcher,
                    ca_file=ca_file, mx_ports=mx_ports)


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


def _outcome(routed: MxResult) -> SendOutcome:
    result: PoolResult = routed.result
    tls = result.tls
    code = result.smtp_code
    suppress = routed.suppress or (
        result.state is DeliveryState.BOUNCED and code is not None and code >= 500
    )
    return SendOutcome(
        state=result.state,
        reason=result.reason,
        smtp_code=code,
        tls_version=tls.version if tls else None,
        tls_cipher=tls.cipher if tls else None,
        cert_sha256=tls.cert_sha256 if tls else None,
        cert_verified=tls.verified if tls else None,
        mx_host=routed.mx_host,
        mta_sts_mode=routed.mta_sts_mode,
        suppress=suppress,
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
