"""Check one SMTP host's TLS without sending mail, for ``carepost tls-check``.

The probe connects, requires STARTTLS (or implicit TLS on port 465),
verifies the certificate for the host name, sends EHLO over TLS and QUIT.
It never sends MAIL. When the certificate does not verify, a second,
observe-only handshake without verification reads the version and cipher
the host offers, so the status shows what is wrong, not only that it is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from carepost.connectors.smtp_session import (
    SessionConfig,
    TlsRequiredError,
    TransportError,
    open_session,
)
from carepost.connectors.smtp_tls import build_client_context, build_unverified_context
from carepost.connectors.tls_status import DomainStatus

__all__ = ["IMPLICIT_TLS_PORT", "probe_host"]

IMPLICIT_TLS_PORT = 465


async def probe_host(
    domain: str,
    host: str,
    port: int,
    *,
    address: str | None = None,
    ca_file: str | Path | None = None,
    helo_name: str = "carepost.localhost",
    timeout_seconds: float = 10.0,
    mta_sts_mode: str | None = None,
) -> DomainStatus:
    """Return the TLS status of ``host``:``port``, recorded under ``domain``.

    ``address`` is where to connect (default ``host``); the certificate is
    always checked against ``host``.
    """
    config = SessionConfig(
        host=address or host, port=port, implicit_tls=port == IMPLICIT_TLS_PORT,
        helo_name=helo_name, timeout_seconds=timeout_seconds,
        context=build_client_context(ca_file), username=None, password=None,
        tls_server_name=host, connect_timeout_seconds=timeout_seconds,
    )
    checked = datetime.now(UTC)
    try:
        session = await open_session(config)
    except TlsRequiredError as exc:
        status = await _failed_status(domain, host, port, config, exc)
        return DomainStatus(**{**status.__dict__, "mta_sts_mode": mta_sts_mode})
    except TransportError as exc:
        return DomainStatus(domain, host, port, None, None, None, None, mta_sts_mode,
                            exc.reason, checked)
    tls = session.tls
    await session.quit()
    return DomainStatus(domain, host, port, True, tls.version, tls.cipher, True,
                        mta_sts_mode, None, checked)


async def _failed_status(domain: str, host: str, port: int, config: SessionConfig,
                         error: TlsRequiredError) -> DomainStatus:
    checked = datetime.now(UTC)
    if "did not offer STARTTLS" in error.reason:
        return DomainStatus(domain, host, port, False, None, None, None, None,
                            error.reason, checked)
    version = error.tls.version if error.tls else None
    cipher = error.tls.cipher if error.tls else None
    verified: bool | None = None
    if "certificate verification failed" in error.reason:
        verified = False
        observe = SessionConfig(**{**config.__dict__,
                                   "context": build_unverified_context(),
                                   "verify_certificate": False})
        try:
            session = await open_session(observe)
        except TransportError:
            pass
        else:
            version, cipher = session.tls.version, session.tls.cipher
            await session.quit()
    return DomainStatus(domain, host, port, True, version, cipher, verified, None,
                        error.reason, checked)
