"""Rewrite the links of a rendered message to the tracking service.

Every ``http``/``https`` link becomes ``{base_url}/c/{token}``, and the
HTML part gets an open pixel ``{base_url}/o/{token}``. Two kinds of link
keep their address: the unsubscribe link (it already points at the
tracking service, and RFC 8058 one-click needs it verbatim) and links the
template marks with the ``data-untracked`` attribute, which is removed from
the output. The renderer never holds the tracking secret, because
``Tracking`` gets a ``sign(tag, url)`` callable that returns a token.

Links are numbered per distinct URL in the order they first appear, HTML
part first, so the same URL in the HTML and the text part has one number
(tag ``c0``, ``c1``, ...). A URL in the text part is left untracked when
the HTML part marks the same URL untracked.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

UNTRACKED_ATTRIBUTE = "data-untracked"

# An <a> start tag; quoted attribute values may contain ">". Values printed
# by Jinja are autoescaped, so they cannot open or close a tag or a quote.
_A_TAG = re.compile(r"<[aA]\s(?:[^>\"']+|\"[^\"]*\"|'[^']*')*>")
_HREF = re.compile(
    r"(\shref\s*=\s*)(?:\"([^\"]*)\"|'([^']*)'|([^\s>\"']+))", re.IGNORECASE
)
_UNTRACKED = re.compile(
    r"\s" + UNTRACKED_ATTRIBUTE + r"(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s>\"']+))?"
    r"(?=[\s/>])",
    re.IGNORECASE,
)
_TEXT_URL = re.compile(r"https?://[^\s<>\"']+")
# Punctuation that ends a sentence rather than the URL in plain text.
_TRAILING = ".,;:!?)]}"
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class Tracking:
    """The click and open URLs of one delivery, built by a token-signing callable."""

    base_url: str
    sign: Callable[[str, str | None], str] = field(repr=False)

    def click_url(self, index: int, url: str) -> str:
        return f"{self.base_url.rstrip('/')}/c/{self.sign(f'c{index}', url)}"

    def open_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/o/{self.sign('o', None)}"


class LinkRewriter:
    """Link rewriter for one message (create one per message)."""

    def __init__(self, tracking: Tracking | None, unsubscribe_url: str) -> None:
        self._tracking = tracking
        self._unsubscribe_url = unsubscribe_url
        self._tracked_urls: dict[str, str] = {}
        self._untracked: set[str] = {unsubscribe_url}

    def rewrite_html(self, page: str) -> str:
        """Rewrite ``<a href>`` links, drop the marker, add the open pixel."""
        page = _A_TAG.sub(self._rewrite_tag, page)
        if self._tracking is None:
            return page
        pixel = (
            f'<img src="{html.escape(self._tracking.open_url())}" width="1" '
            'height="1" alt="" style="display: block; width: 1px; height: 1px; '
            'border: 0;">'
        )
        cut = _last_body_end(page)
        if cut is None:
            return page + pixel
        return page[:cut] + pixel + "\n" + page[cut:]

    def rewrite_text(self, text: str) -> str:
        """Rewrite the http(s) URLs written out in a plain-text part."""
        if self._tracking is None:
            return text
        return _TEXT_URL.sub(self._rewrite_text_url, text)

    def _rewrite_tag(self, match: re.Match[str]) -> str:
        parsed = _parse_tag(match[0])
        url = parsed.url
        if url is None:
            return parsed.tag
        if parsed.untracked:
            self._untracked.add(url)
            return parsed.tag
        tracked = self._tracked(url)
        if tracked is None:
            return parsed.tag
        return f'{parsed.before}"{html.escape(tracked)}"{parsed.after}'

    def _rewrite_text_url(self, match: re.Match[str]) -> str:
        url = match[0]
        stripped = url.rstrip(_TRAILING)
        tracked = self._tracked(stripped)
        if tracked is None:
            return url
        return tracked + url[len(stripped) :]

    def _tracked(self, url: str) -> str | None:
        if self._tracking is None or url in self._untracked:
            return None
        if not url.lower().startswith(("https://", "http://")):
            return None
        tracked = self._tracked_urls.get(url)
        if tracked is None:
            # The index is the number of distinct URLs seen before this one.
            tracked = self._tracking.click_url(len(self._tracked_urls), url)
            self._tracked_urls[url] = tracked
        return tracked


@dataclass(frozen=True, slots=True)
class _ParsedTag:
    """An ``<a>`` start tag split around its ``href`` value."""

    tag: str  # the tag without the untracked marker
    url: str | None  # the unescaped href value; None without an href
    before: str  # the tag up to and including "href="
    after: str  # the tag after the href value and its quotes
    untracked: bool


# Autoescaping keeps profile values from creating tags, so the <a> tags of
# a message come from the template source and repeat in every message of a
# template version: each distinct tag is parsed once. Tags that differ per
# message (the unsubscribe link, an href built from a field) pass through
# the bounded in-memory cache, which keeps the most recently used tags.
@lru_cache(maxsize=512)
def _parse_tag(tag: str) -> _ParsedTag:
    untracked = _UNTRACKED.search(tag) is not None
    if untracked:
        tag = _UNTRACKED.sub("", tag)
    href = _HREF.search(tag)
    if href is None:
        return _ParsedTag(tag, None, "", "", untracked)
    raw = next(value for value in href.groups()[1:] if value is not None)
    return _ParsedTag(
        tag=tag,
        url=html.unescape(raw),
        before=tag[: href.start()] + href[1],
        after=tag[href.end() :],
        untracked=untracked,
    )


def _last_body_end(page: str) -> int | None:
    """Return where the last ``</body>`` starts, searching from the end."""
    end = len(page)
    while True:
        start = page.rfind("</", 0, end)
        if start < 0:
            return None
        if _BODY_END.match(page, start):
            return start
        end = start
