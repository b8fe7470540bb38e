"""Optional DKIM signing (RFC 6376) of outgoing messages with dkimpy.

The private key is read once from ``smtp.dkim.key_file`` (PEM, RSA or
Ed25519). Each message gets a ``DKIM-Signature`` header, relaxed/relaxed
canonicalisation, over `SIGNED_HEADERS` where present. ``From`` is always
signed (RFC 6376 section 5.4). Listing ``List-Unsubscribe`` and
``List-Unsubscribe-Post`` is what RFC 8058 section 4 requires of one-click
unsubscribe, so a forwarder cannot add an unsubscribe link of its own.
The public key must be published as TXT at ``<selector>._domainkey.<domain>``.
"""

from __future__ import annotations

from pathlib import Path

import dkim

from carepost.core.errors import ConfigError
from carepost.core.settings import DkimSettings

__all__ = ["SIGNED_HEADERS", "DkimSigner"]

SIGNED_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"reply-to",
)


class DkimSigner:
    """Sign messages for one domain and selector with a key read from a file."""

    def __init__(self, settings: DkimSettings) -> None:
        path = Path(settings.key_file)
        if not path.is_file():
            raise ConfigError(
                f"smtp.dkim.key_file {path} not found",
                hint="point it at the PEM private key whose public half is "
                f"published at {settings.selector}._domainkey.{settings.domain}",
            )
        self._key = path.read_bytes()
        self._selector = settings.selector.encode("ascii")
        self._domain = settings.domain.encode("ascii")
        # Fail at start-up, not on the first message, if the key is unusable.
        try:
            self.sign(b"From: check@example.invalid\r\n\r\nkey check\r\n")
        except dkim.DKIMException as exc:
            raise ConfigError(
                f"smtp.dkim.key_file {path} is not a usable DKIM private key: {exc}"
            ) from None

    def sign(self, message: bytes) -> bytes:
        """Return ``message`` with a DKIM-Signature header in front."""
        header = dkim.sign(
            message,
            self._selector,
            self._domain,
            self._key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=list(SIGNED_HEADERS),
        )
        return header + message

    def __repr__(self) -> str:
        # The key never prints.
        return f"DkimSigner(domain={self._domain.decode()!r}, " \
               f"selector={self._selector.decode()!r})"
