"""TLS policy of the SMTP sender: the client context and what it records.

The relay policy has no knobs: TLS 1.2 or newer, forward-secret AEAD or
SHA-2 cipher suites only (`CIPHERS`), certificate chain and host name
verified against ``ca_file`` or the system store. The one exception is
`build_unverified_context`, which direct-to-MX mode uses only for an MX
host without an MTA-STS policy when ``smtp.unverified_mx`` is ``encrypt``:
it keeps the version and cipher floor and skips the certificate check.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from carepost.core.errors import ConfigError

__all__ = [
    "CIPHERS",
    "MINIMUM_TLS_VERSION",
    "TlsDetails",
    "build_client_context",
    "build_unverified_context",
    "describe_ssl_failure",
    "is_accepted_version",
    "read_tls_details",
]

MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2

# TLS 1.2 suites with ephemeral (EC)DH key exchange and an AEAD or SHA-2
# MAC: no static RSA key exchange (no forward secrecy) and no SHA-1 MAC.
# TLS 1.3 suites are configured apart by OpenSSL and all qualify.
CIPHERS = (
    "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:"
    "ECDHE+AES+SHA256:ECDHE+AES+SHA384:!aNULL:!eNULL:!SHA1:!DSS:!PSK:!SRP"
)

# Protocol names as `ssl.SSLObject.version()` returns them.
_ACCEPTED_VERSIONS = frozenset({"TLSv1.2", "TLSv1.3"})


@dataclass(frozen=True)
class TlsDetails:
    """Negotiated protocol, cipher suite and the server's leaf certificate."""

    version: str | None
    cipher: str | None
    cert_sha256: str | None
    # False only for an MX host sent to under ``smtp.unverified_mx: encrypt``.
    verified: bool = True


def build_client_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """Create the verifying client context, trusting ``ca_file`` or the system."""
    if ca_file is not None and not Path(ca_file).is_file():
        raise ConfigError(
            f"smtp.ca_file {ca_file} not found",
            hint="point smtp.ca_file at a PEM bundle, or remove it to use the "
            "system's certificate store",
        )
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(ca_file) if ca_file is not None else None,
        )
    except ssl.SSLError as exc:
        raise ConfigError(
            f"smtp.ca_file {ca_file} is not a valid PEM certificate bundle: "
            f"{exc.reason or exc}"
        ) from None

    # create_default_context already sets these. Setting them again keeps
    # the policy visible here and safe if those defaults ever change.
    context.minimum_version = MINIMUM_TLS_VERSION
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_ciphers(CIPHERS)
    return context


def build_unverified_context() -> ssl.SSLContext:
    """Create a context that encrypts with the same floor but checks no certificate.

    Only for an MX host without MTA-STS under ``smtp.unverified_mx:
    encrypt``, and for the observe-only second handshake of ``tls-check``.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = MINIMUM_TLS_VERSION
    context.set_ciphers(CIPHERS)
    return context


def is_accepted_version(version: str | None) -> bool:
    """Return whether a negotiated protocol name meets the TLS 1.2 minimum."""
    return version in _ACCEPTED_VERSIONS


def read_tls_details(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, *, verified: bool = True
) -> TlsDetails:
    """Read the version, cipher and leaf certificate SHA-256 of a live session."""
    cipher = ssl_object.cipher()
    certificate = ssl_object.getpeercert(binary_form=True)
    return TlsDetails(
        version=ssl_object.version(),
        cipher=cipher[0] if cipher else None,
        cert_sha256=hashlib.sha256(certificate).hexdigest() if certificate else None,
        verified=verified,
    )


def describe_ssl_failure(error: BaseException) -> str:
    """Describe a failed TLS upgrade in a short line without addresses.

    Looks through the exception's causes, because aiosmtplib wraps the
    ssl.SSLError, timeout or reset that actually ended the handshake.
    """
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__

    for item in chain:
        if isinstance(item, ssl.SSLCertVerificationError):
            return f"certificate verification failed: {item.verify_message}"
        if isinstance(item, ssl.SSLError):
            return f"TLS handshake failed: {item.reason or type(item).__name__}"
    if any(isinstance(item, TimeoutError) for item in chain):
        return "TLS handshake timed out"
    if any(isinstance(item, ConnectionError) for item in chain):
        # A server that cannot agree on a protocol version often just closes
        # the connection, so the client never sees an alert.
        return "TLS handshake failed: the server closed the connection"
    return f"TLS handshake failed: {type(error).__name__}"
