"""Read a spec file with PyYAML and remember where every key and value sits.

PyYAML's composer keeps a start mark on each node, but the plain loaders
drop them when they build Python objects. ``load_spec_file`` walks the node
graph itself, so the validator can point at ``file:line:column`` for any
key path. It also reports duplicate keys, which PyYAML would silently
resolve to the last value: each one is recorded in ``SourceMap.problems``
and the first value is kept, so one pass finds every duplicate in a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from carepost.core.yamlio import NotUtf8Error, read_utf8_text
from carepost.segments.errors import SegmentSpecError

KeyPath = tuple[str | int, ...]

# Deeper trees than this are a mistake or a recursive alias.
MAX_DEPTH = 64


def format_key_path(path: KeyPath) -> str:
    """Render ``("where", "all", 1, "trait")`` as ``where.all[1].trait``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


@dataclass
class SourceMap:
    """Positions (0-based line, column) of the keys and values in one file."""

    file: Path
    values: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    problems: list[SegmentSpecError] = field(default_factory=list)

    def position(self, path: KeyPath, *, of_key: bool = False) -> tuple[int, int]:
        """Return the 1-based position of a path, or of its nearest parent."""
        if of_key and path in self.keys:
            line, column = self.keys[path]
            return line + 1, column + 1
        for end in range(len(path), -1, -1):
            if path[:end] in self.values:
                line, column = self.values[path[:end]]
                return line + 1, column + 1
        return 1, 1

    def error(
        self,
        path: KeyPath,
        expected: str,
        found: str,
        suggestion: str | None = None,
        *,
        of_key: bool = False,
    ) -> SegmentSpecError:
        """Build a SegmentSpecError that points at ``path`` in this file."""
        line, column = self.position(path, of_key=of_key)
        return SegmentSpecError(
            self.file,
            line,
            column,
            format_key_path(path),
            expected,
            found,
            suggestion,
        )


class SpecEncodingError(SegmentSpecError):
    """A spec file that is not UTF-8, with a message naming the first bad byte.

    It keeps the fields of ``SegmentSpecError`` (``carepost segments
    validate --json`` prints them) but reads as the one line that
    ``NotUtf8Error`` prints for every other carepost file.
    """

    def __init__(self, error: NotUtf8Error) -> None:
        found = f"byte 0x{error.byte:02x} at offset {error.offset}"
        super().__init__(error.path, error.line, error.column, "", "UTF-8 text", found)
        self.args = (error.message,)


def load_spec_file(path: Path) -> tuple[dict[str, Any], SourceMap]:
    """Parse one YAML spec into plain data and the positions of its parts."""
    source = SourceMap(path)
    try:
        text = read_utf8_text(path)
    except NotUtf8Error as exc:
        raise SpecEncodingError(exc) from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = _convert(loader, root, (), source) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(path, exc) from None
    finally:
        loader.dispose()

    if not isinstance(data, dict):
        raise source.error(
            (), "a mapping with kind, description and where", describe_value(data)
        )
    return data, source


def _convert(
    loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, source: SourceMap
) -> Any:
    if len(path) > MAX_DEPTH:
        raise source.error(
            path,
            f"at most {MAX_DEPTH} levels of nesting",
            "a deeper tree or a recursive alias",
        )
    source.values[path] = (node.start_mark.line, node.start_mark.column)

    if isinstance(node, yaml.MappingNode):
        return _convert_mapping(loader, node, path, source)
    if isinstance(node, yaml.SequenceNode):
        return [
            _convert(loader, item, (*path, index), source)
            for index, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


def _convert_mapping(
    loader: yaml.SafeLoader,
    node: yaml.MappingNode,
    path: KeyPath,
    source: SourceMap,
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            source.values[(*path, "?")] = _mark(key_node)
            problem = source.error((*path, "?"), "a text key", describe_value(key))
            source.problems.append(problem)
            continue

        key_path = (*path, key)
        if key in result:
            duplicate = SourceMap(source.file, keys={key_path: _mark(key_node)})
            source.problems.append(
                duplicate.error(
                    key_path,
                    "each key once in a mapping",
                    f"duplicate key '{key}'",
                    of_key=True,
                )
            )
            continue
        source.keys[key_path] = _mark(key_node)
        result[key] = _convert(loader, value_node, key_path, source)
    return result


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line, node.start_mark.column


def _syntax_error(path: Path, exc: yaml.MarkedYAMLError) -> SegmentSpecError:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = f"a syntax error: {exc.problem}" if exc.problem else "a syntax error"
    return SegmentSpecError(path, line, column, "", "valid YAML", problem)


def describe_value(value: Any) -> str:
    """Name the YAML type of a value, for messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"text '{value}'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {value}"
