"""Build the tracking URLs a rendered message carries.

Each URL holds one opaque signed token (``carepost.core.tokens``): the
delivery id, a tag (``o`` open, ``c<n>`` click on link n, ``u``
unsubscribe) and, for a click, the destination. Nothing in a URL names
the patient, the address or the profile. The renderer calls these while
it rewrites the links of a message; the tracking service verifies them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from carepost.core.tokens import issue_token

TRACKED_SCHEMES = ("http", "https")


def _base(base_url: str) -> str:
    return base_url.rstrip("/")


def open_pixel_url(base_url: str, keys: dict[str, bytes], delivery_id: int) -> str:
    return f"{_base(base_url)}/o/{issue_token(keys, delivery_id, 'o')}"


def click_url(base_url: str, keys: dict[str, bytes], delivery_id: int,
              link_index: int, destination: str) -> str:
    """Return the click URL that redirects to ``destination`` (http or https)."""
    scheme = urlsplit(destination).scheme.lower()
    if scheme not in TRACKED_SCHEMES:
        raise ValueError(f"link {link_index} has scheme {scheme!r}; only http "
                         "and https links are tracked (mark it untracked)")
    if link_index < 0:
        raise ValueError(f"link index {link_index} must be 0 or more")
    token = issue_token(keys, delivery_id, f"c{link_index}", destination)
    return f"{_base(base_url)}/c/{token}"


def unsubscribe_url(base_url: str, keys: dict[str, bytes], delivery_id: int) -> str:
    return f"{_base(base_url)}/u/{issue_token(keys, delivery_id, 'u')}"


__all__ = ["click_url", "open_pixel_url", "unsubscribe_url"]
