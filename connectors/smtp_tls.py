"""TLS policy of the SMTP sender: the client context and what it records.

The policy has no knobs: TLS 1.2 or newer, the default cipher list of
`ssl.create_default_context`, certificate chain and host name verified
against ``ca_file`` or the system store. Nothing here can turn that off.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from carepost.core.errors import ConfigError

__all__ = [
    "MINIMUM_TLS_VERSION",
    "TlsDetails",
    "build_client_context",
    "describe_ssl_failure",
    "is_accepted_version",
    "read_tls_details",
]

MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2

# Protocol names as `ssl.SSLObject.version()` returns them.
_ACCEPTED_VERSIONS = frozenset({"TLSv1.2", "TLSv1.3"})


@dataclass(frozen=True)
class TlsDetails:
    """Negotiated protocol, cipher suite and the server's leaf certificate."""

    version: str | None
    cipher: str | None
    cert_sha256: str | None


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
    return context


def is_accepted_version(version: str | None) -> bool:
    """Return whether a negotiated protocol name meets the TLS 1.2 minimum."""
    return version in _ACCEPTED_VERSIONS


def read_tls_details(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> TlsDetails:
    """Read the version, cipher and leaf certificate SHA-256 of a live session."""
    cipher = ssl_object.cipher()
    certificate = ssl_object.getpeercert(binary_form=True)
    return TlsDetails(
        version=ssl_object.version(),
        cipher=cipher[0] if cipher else None,
        cert_sha256=hashlib.sha256(certificate).hexdigest() if certificate else None,
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
