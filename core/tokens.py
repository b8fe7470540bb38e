"""Opaque signed tokens for tracking and unsubscribe links.

A token carries a delivery id, a purpose tag (``u`` unsubscribe, ``o``
open, ``c<n>`` click on link n) and, for clicks, the destination URL that
the rendered message contained; it carries no PHI, address or profile id.
Because the URL is inside the signature, the click endpoint can redirect
only to URLs that carepost itself put into a message (no open redirect)
without storing every link. Tokens are signed with HMAC-SHA256 under a
key id, so the secret can be rotated: new tokens use the first key, and
any listed key still verifies old ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

_SIGNATURE_BYTES = 16


class TokenError(ValueError):
    """The token is malformed, unsigned by any known key, or tampered with."""


@dataclass(frozen=True)
class TokenClaims:
    delivery_id: int
    tag: str
    url: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:_SIGNATURE_BYTES]


def issue_token(keys: dict[str, bytes], delivery_id: int, tag: str,
                url: str | None = None) -> str:
    """Sign ``delivery_id``, ``tag`` and ``url`` with the first key of ``keys``."""
    key_id, key = next(iter(keys.items()))
    if "." in key_id or "." in tag:
        raise ValueError("key ids and tags must not contain '.'")
    body = f"{key_id}.{delivery_id}.{tag}".encode()
    if url is not None:
        body += b"." + url.encode()
    return _b64(body + _sign(key, body))


def verify_token(keys: dict[str, bytes], token: str) -> TokenClaims:
    """Return the claims of a token signed by any key in ``keys``."""
    try:
        raw = _unb64(token)
    except (ValueError, TypeError):
        raise TokenError("token is not valid base64") from None
    body, signature = raw[:-_SIGNATURE_BYTES], raw[-_SIGNATURE_BYTES:]
    parts = body.decode("utf-8", "replace").split(".", 3)
    if len(parts) < 3 or parts[0] not in keys or not parts[1].isdigit():
        raise TokenError("token has an unknown key id or layout")
    if not hmac.compare_digest(_sign(keys[parts[0]], body), signature):
        raise TokenError("token signature does not match")
    url = parts[3] if len(parts) == 4 else None
    return TokenClaims(delivery_id=int(parts[1]), tag=parts[2], url=url)
