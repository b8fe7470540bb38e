"""Derive a readable plain-text part from a rendered HTML part.

Used when a template has no ``NAME.txt.j2``. Paragraphs, headings, list
items and table rows become lines. A link whose text is not its own URL
becomes ``text [n]``, and the URL is listed as footnote ``[n]`` at the
end, so every link stays usable in a text-only mail client. The head, styles,
scripts and elements hidden with ``display: none`` (the preheader) are
left out.
"""

from __future__ import annotations

import re
import textwrap
from html.parser import HTMLParser

_SKIPPED = frozenset({"head", "style", "script", "title", "template"})
_PARAGRAPHS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "blockquote"}
)
_LINES = frozenset(
    {"div", "tr", "li", "section", "header", "footer", "article", "address"}
)
_VOID = frozenset({"br", "img", "hr", "meta", "link", "input", "wbr", "col"})
_HIDDEN = re.compile(r"display\s*:\s*none", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\r\n\f\u00a0]+")
_WIDTH = 76
# Line and paragraph breaks inside the collected text.
_BREAK = "\x00"
_PARAGRAPH = "\x01"
# Joins a link label to its footnote number so wrapping never splits them.
_GLUE = "\x02"


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.footnotes: list[str] = []
        self._skip_stack: list[str] = []
        self._links: list[tuple[str | None, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_stack:
            if tag not in _VOID:
                self._skip_stack.append(tag)
            return
        values = dict(attrs)
        if tag in _SKIPPED or _HIDDEN.search(values.get("style") or ""):
            if tag not in _VOID:
                self._skip_stack.append(tag)
            return
        self._open_block(tag, values)

    def handle_endtag(self, tag: str) -> None:
        if self._skip_stack:
            if tag in self._skip_stack:
                while self._skip_stack.pop() != tag:
                    pass
            return
        if tag == "a" and self._links:
            self._close_link()
        elif tag in _PARAGRAPHS:
            self.pieces.append(_PARAGRAPH)
        elif tag in _LINES:
            self.pieces.append(_BREAK)
        elif tag in ("td", "th"):
            self.pieces.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip_stack:
            self.pieces.append(_SPACES.sub(" ", data))

    def _open_block(self, tag: str, values: dict[str, str | None]) -> None:
        if tag in _PARAGRAPHS:
            self.pieces.append(_PARAGRAPH)
        elif tag in _LINES or tag == "br":
            self.pieces.append(_BREAK)
        if tag == "li":
            self.pieces.append("- ")
        elif tag == "hr":
            self.pieces.append(_PARAGRAPH + "-" * 20 + _PARAGRAPH)
        elif tag == "img" and values.get("alt"):
            self.pieces.append(str(values["alt"]))
        elif tag == "a":
            self._links.append((values.get("href"), len(self.pieces)))

    def _close_link(self) -> None:
        href, start = self._links.pop()
        label = "".join(self.pieces[start:]).strip()
        if not href or href.startswith("#") or label == href:
            return
        if not label:
            label = href
        if href not in self.footnotes:
            self.footnotes.append(href)
        number = self.footnotes.index(href) + 1
        self.pieces.append(f"{_GLUE}[{number}]")


def html_to_text(page: str) -> str:
    """Return the text of ``page``; empty when the page has no visible text."""
    collector = _TextCollector()
    collector.feed(page)
    collector.close()
    body = _layout("".join(collector.pieces))
    if not body:
        return ""
    notes = "\n".join(
        f"[{number}] {url}" for number, url in enumerate(collector.footnotes, 1)
    )
    return body + ("\n\n" + notes if notes else "") + "\n"


def _layout(text: str) -> str:
    paragraphs = []
    for block in text.split(_PARAGRAPH):
        lines = [_SPACES.sub(" ", line).strip() for line in block.split(_BREAK)]
        wrapped = [_wrap(line) for line in lines if line]
        if wrapped:
            paragraphs.append("\n".join(wrapped))
    return "\n\n".join(paragraphs)


def _wrap(line: str) -> str:
    # Long words (URLs) are never broken, so they stay clickable.
    wrapped = textwrap.fill(
        line, _WIDTH, break_long_words=False, break_on_hyphens=False
    )
    return wrapped.replace(_GLUE, " ")
