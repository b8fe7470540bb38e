"""Inline the library stylesheet into the HTML template sources, once.

Mail clients drop ``<style>`` blocks, so every styled element needs a
``style`` attribute. Inlining each rendered message costs an HTML parse
per message. Inlining the rendered source once needs care, because an
HTML parser would move Jinja tags that sit between table rows (foster
parenting). This module never parses the Jinja source as HTML. It masks
Jinja tags, finds the HTML start tags in the literal text, and gives each
one the style that css-inline computes for that element.

That is exact only when an element's style does not depend on where it
sits in the page, so the stylesheet ``layouts/styles.css`` may use type
selectors (``p``), class selectors (``.card``) and both together
(``p.note``), in comma lists. Descendant, child, sibling, attribute and
pseudo selectors and at-rules are rejected with the line, and so is a
styled tag whose ``class`` or ``style`` comes from a Jinja expression or
that contains a ``{% %}`` statement. The tests render every shipped
template both ways and compare the styles element by element.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import css_inline
from carepost.templates.errors import TemplateSpecError

STYLESHEET = "layouts/styles.css"

_SIMPLE_SELECTOR = re.compile(r"([a-z][a-z0-9]*)?((?:\.[A-Za-z_][\w-]*)*)\Z")
_RULE = re.compile(r"([^{}]*)\{([^{}]*)\}")
_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}|<!--.*?-->", re.DOTALL)
_START_TAG = re.compile(r"<([a-zA-Z][a-zA-Z0-9]*)((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>")
_ATTRIBUTE = re.compile(r"""\s([a-zA-Z_:][-\w:.]*)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+))?""")
# Masks keep every offset and line of the source unchanged.
_EXPRESSION_MASK = "\ue000"
_STATEMENT_MASK = "\ue001"
_NOT_STYLED = frozenset(
    {"html", "head", "meta", "title", "link", "style", "script", "base"}
)
# Elements that an HTML parser drops outside their table context.
_PROBE_WRAPPERS = {
    "td": ("<table><tr>", "</tr></table>"),
    "th": ("<table><tr>", "</tr></table>"),
    "tr": ("<table>", "</table>"),
    "tbody": ("<table>", "</table>"),
    "thead": ("<table>", "</table>"),
    "tfoot": ("<table>", "</table>"),
    "caption": ("<table>", "</table>"),
    "colgroup": ("<table>", "</table>"),
}
_PROBE_STYLE = re.compile(r'<[a-z0-9]+[^>]*\sdata-carepost-probe=""[^>]*>')
_STYLE_VALUE = re.compile(r'\sstyle="([^"]*)"')


class Stylesheet:
    """The validated library stylesheet and the styles it gives each tag."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.css = path.read_text(encoding="utf-8") if path.is_file() else ""
        self._types: set[str] = set()
        self._classes: set[str] = set()
        self._validate()

    def _validate(self) -> None:
        text = _CSS_COMMENT.sub(lambda m: "\n" * m[0].count("\n"), self.css)
        if "@" in text:
            line = text[: text.index("@")].count("\n") + 1
            raise TemplateSpecError(
                self.path,
                line,
                "at-rules (@media, @import, ...) cannot be inlined",
                hint="size the layout with max-width and percentages instead",
            )
        end = 0
        for rule in _RULE.finditer(text):
            if text[end : rule.start()].strip():
                break
            end = rule.end()
            start = rule.start() + len(rule[1]) - len(rule[1].lstrip())
            line = text[:start].count("\n") + 1
            for selector in rule[1].split(","):
                self._add_selector(selector.strip(), line)
        if text[end:].strip():
            line = text[:end].count("\n") + 1
            raise TemplateSpecError(self.path, line, "invalid CSS rule")

    def _add_selector(self, selector: str, line: int) -> None:
        match = _SIMPLE_SELECTOR.match(selector)
        if not selector or match is None:
            raise TemplateSpecError(
                self.path,
                line,
                f"selector '{selector}' depends on the page structure",
                hint="use a type (p), a class (.card) or both (p.card); put a "
                "class on the element instead of a descendant selector",
            )
        if match[1]:
            self._types.add(match[1])
        self._classes.update(name for name in match[2].split(".") if name)

    def applies_to(self, tag: str, classes: list[str]) -> bool:
        if not self.css or tag in _NOT_STYLED:
            return False
        return tag in self._types or any(name in self._classes for name in classes)

    def style_for(self, tag: str, class_value: str, style_value: str | None) -> str:
        """Return the inlined ``style`` value for one element (cached)."""
        return _probe(self.css, tag, class_value, style_value)


@lru_cache(maxsize=4096)
def _probe(css: str, tag: str, class_value: str, style_value: str | None) -> str:
    attributes = f' class="{class_value}" data-carepost-probe=""'
    if style_value is not None:
        attributes += f' style="{style_value}"'
    if tag == "body":
        body = f"<body{attributes}></body>"
    else:
        before, after = _PROBE_WRAPPERS.get(tag, ("", ""))
        body = f"<body>{before}<{tag}{attributes}></{tag}>{after}</body>"
    page = f"<html><head><style>{css}</style></head>{body}</html>"
    inlined = css_inline.inline(page)
    element = _PROBE_STYLE.search(inlined)
    style = _STYLE_VALUE.search(element[0]) if element else None
    return style[1] if style else (style_value or "")


def inline_source(stylesheet: Stylesheet, source: str, path: Path) -> str:
    """Return ``source`` with every styled start tag given its ``style``."""
    masked = _JINJA.sub(_mask, source)
    pieces = []
    end = 0
    for tag in _START_TAG.finditer(masked):
        replacement = _styled_tag(stylesheet, source, masked, tag, path)
        if replacement is not None:
            pieces.append(source[end : tag.start()])
            pieces.append(replacement)
            end = tag.end()
    pieces.append(source[end:])
    return "".join(pieces)


def _mask(match: re.Match[str]) -> str:
    text = match[0]
    mark = _EXPRESSION_MASK if text.startswith("{{") else _STATEMENT_MASK
    return "".join("\n" if char == "\n" else mark for char in text)


def _styled_tag(
    stylesheet: Stylesheet,
    source: str,
    masked: str,
    tag: re.Match[str],
    path: Path,
) -> str | None:
    name = tag[1].lower()
    if name == "style":
        raise _tag_error(path, source, tag, f"put styles in {STYLESHEET}")
    attributes = {
        found[1].lower(): found for found in _ATTRIBUTE.finditer(tag[2])
    }
    class_attr = attributes.get("class")
    class_value = _unquote(class_attr[2]) if class_attr and class_attr[2] else ""
    if not stylesheet.applies_to(name, class_value.split()):
        if _EXPRESSION_MASK in class_value and stylesheet.css:
            raise _tag_error(path, source, tag, "a class attribute must be literal")
        return None
    if _STATEMENT_MASK in tag[0] or _EXPRESSION_MASK in class_value:
        raise _tag_error(
            path, source, tag, "a styled tag must not contain Jinja statements "
            "or a computed class",
        )
    return _with_style(stylesheet, source, path, tag, name, class_value, attributes)


def _with_style(
    stylesheet: Stylesheet,
    source: str,
    path: Path,
    tag: re.Match[str],
    name: str,
    class_value: str,
    attributes: dict[str, re.Match[str]],
) -> str:
    offset = tag.start(2)
    original = source[tag.start() : tag.end()]
    style_attr = attributes.get("style")
    if style_attr is None:
        style = stylesheet.style_for(name, class_value, None)
        closing = "/>" if original.endswith("/>") else ">"
        return original[: -len(closing)].rstrip() + f' style="{style}"' + closing
    current = _unquote(source[offset + style_attr.start(2) : offset + style_attr.end(2)])
    if _EXPRESSION_MASK in _unquote(style_attr[2]):
        raise _tag_error(path, source, tag, "a styled tag's style must be literal")
    style = stylesheet.style_for(name, class_value, current)
    start = offset + style_attr.start(2) - tag.start()
    stop = offset + style_attr.end(2) - tag.start()
    return original[:start] + f'"{style}"' + original[stop:]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _tag_error(
    path: Path, source: str, tag: re.Match[str], problem: str
) -> TemplateSpecError:
    line = source[: tag.start()].count("\n") + 1
    return TemplateSpecError(path, line, f"cannot inline CSS: {problem}")


SourceTransform = Callable[[str, Path], str]


def source_transform(stylesheet: Stylesheet) -> SourceTransform:
    """Return the loader hook that inlines ``stylesheet`` into a source."""

    def transform(source: str, path: Path) -> str:
        return inline_source(stylesheet, source, path)

    return transform
