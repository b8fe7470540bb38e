"""Read carepost's own YAML files: ``carepost.yaml``, campaigns and mappings.

PyYAML's ``SafeLoader`` keeps the last value of a repeated key, so one
stray ``purpose:`` line can turn a marketing campaign into a care one
without a word. ``UniqueKeyLoader`` rejects a repeated key instead.
``load_yaml_file`` keeps the node tree next to the data, so a validation
error can point at the ``file:line:column`` of the key path it names.

Errors:

    ConfigError
    └── YamlFileError   path, line, column, problem (encoding, syntax, duplicate key)
        └── NotUtf8Error    path, offset and value of the first byte that is
                            not UTF-8; ``read_utf8_text`` raises it for any
                            text file (segments and templates use it too)

Segment specs and template front matter have their own loaders
(``carepost.segments.yamlsource``, ``carepost.templates.spec``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from carepost.core.errors import ConfigError

__all__ = [
    "DuplicateKeyError",
    "NotUtf8Error",
    "UniqueKeyLoader",
    "YamlDocument",
    "YamlFileError",
    "describe_validation_error",
    "load_yaml_file",
    "read_utf8_text",
]

_MERGE_TAG = "tag:yaml.org,2002:merge"

# Values longer than this are cut in messages; a whole mapping is no help.
_MAX_FOUND_CHARS = 60

# Byte order marks of encodings an editor may save "Unicode" text in.
_BYTE_ORDER_MARKS = {
    b"\xff\xfe\x00\x00": "a UTF-32 byte order mark",
    b"\x00\x00\xfe\xff": "a UTF-32 byte order mark",
    b"\xff\xfe": "a UTF-16 byte order mark",
    b"\xfe\xff": "a UTF-16 byte order mark",
}


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping repeats a key; ``problem_mark`` is the second occurrence."""


class UniqueKeyLoader(yaml.SafeLoader):
    """A ``SafeLoader`` that raises ``DuplicateKeyError`` on a repeated key.

    Keys brought in by a ``<<`` merge may be overridden, as YAML 1.1
    specifies; only keys written in the mapping itself must be unique.
    """

    def construct_mapping(
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict[Hashable, Any]:
        self._reject_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _reject_duplicate_keys(self, node: yaml.MappingNode) -> None:
        first_lines: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_lines
            except TypeError:
                continue  # SafeConstructor raises its own error for these
            if seen:
                raise DuplicateKeyError(
                    None, None,
                    f"duplicate key {key!r} (first at line {first_lines[key]})",
                    key_node.start_mark,
                )
            first_lines[key] = key_node.start_mark.line + 1


class YamlFileError(ConfigError):
    """A YAML file cannot be parsed, or repeats a key, at ``line``:``column``."""

    def __init__(self, path: Path, line: int, column: int, problem: str,
                 *, hint: str | None = None) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.problem = problem
        self.message = f"{path}:{line}:{column}: {problem}"
        super().__init__(self.message, hint=hint)


class NotUtf8Error(YamlFileError):
    """A file that carepost reads as text is not UTF-8.

    ``offset`` is the 0-based offset of the first byte that does not
    decode, and ``byte`` its value; ``line`` and ``column`` locate it too.
    """

    def __init__(self, path: Path, raw: bytes, offset: int) -> None:
        self.path = path
        self.offset = offset
        self.byte = raw[offset]
        self.line = raw.count(b"\n", 0, offset) + 1
        self.column = offset - raw.rfind(b"\n", 0, offset)
        found = f"byte 0x{self.byte:02x} at offset {offset}"
        mark = _byte_order_mark(raw) if offset == 0 else None
        self.problem = f"not UTF-8 text ({found}{', ' + mark if mark else ''})"
        self.message = f"{path}: {self.problem}; save it as UTF-8"
        # YamlFileError's message starts with line:column; this one names
        # the byte offset instead, which hex editors and `cmp` show.
        ConfigError.__init__(self, self.message)


def _byte_order_mark(raw: bytes) -> str | None:
    for mark, name in _BYTE_ORDER_MARKS.items():
        if raw.startswith(mark):
            return name
    return None


def read_utf8_text(path: Path) -> str:
    """Read a whole file as UTF-8, or raise ``NotUtf8Error`` naming the bad byte.

    ``OSError`` (a missing file) propagates.
    """
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotUtf8Error(path, raw, exc.start) from None


@dataclass(frozen=True)
class YamlDocument:
    """The data of one YAML file and the node tree it was built from."""

    path: Path
    data: Any
    root: yaml.Node | None

    def position(self, loc: Sequence[str | int]) -> tuple[int, int]:
        """Return the 1-based line and column of a key path's value.

        Parts that are not keys of the file (a union's tag in a pydantic
        location) are skipped; a missing key gives its parent's position.
        """
        if self.root is None:
            return 1, 1
        node = self.root
        for part in loc:
            node = _child(node, part) or node
        return node.start_mark.line + 1, node.start_mark.column + 1


def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                return value_node
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
        if 0 <= part < len(node.value):
            return node.value[part]
    return None


def load_yaml_file(path: Path) -> YamlDocument:
    """Parse one UTF-8 YAML file with ``UniqueKeyLoader``.

    Raises ``YamlFileError`` for a syntax error or a repeated key, and its
    subclass ``NotUtf8Error`` for text that is not UTF-8. ``OSError`` (a
    missing file) propagates, so each caller can name the setting that
    points here.
    """
    text = read_utf8_text(path)
    loader = UniqueKeyLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        raise _file_error(path, exc) from None
    except yaml.YAMLError as exc:
        raise YamlFileError(path, 1, 1, str(exc)) from None
    finally:
        loader.dispose()
    return YamlDocument(path, data, root)


def _file_error(path: Path, exc: yaml.MarkedYAMLError) -> YamlFileError:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    if isinstance(exc, DuplicateKeyError):
        return YamlFileError(
            path, line, column, str(exc.problem),
            hint="delete one of the two lines: YAML would keep only the last value",
        )
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        problem = f"{exc.problem} ({exc.context})"
    return YamlFileError(path, line, column, problem, hint=_syntax_hint(problem))


def _syntax_hint(problem: str) -> str:
    if "'\\t'" in problem:
        return "indent with spaces; YAML does not allow tabs there"
    if "mapping values are not allowed" in problem:
        return ("quote a value that contains ': ', or fix the indentation "
                "of this key")
    if "could not find expected ':'" in problem:
        return "write each setting as 'key: value' on its own line"
    return ("check the indentation and quoting at that line and the line "
            "before it; quote values that contain ': ', ' #', '{' or '['")


def describe_validation_error(error: ValidationError, document: YamlDocument,
                              what: str) -> str:
    """Describe each pydantic error as ``file:line:column: key.path: message``."""
    lines = [f"{document.path}: invalid {what}"]
    for item in error.errors():
        loc = item["loc"]
        where = ".".join(str(part) for part in loc) or "(top level)"
        line, column = document.position(loc)
        lines.append(f"  {document.path}:{line}:{column}: {where}: "
                     f"{_problem(item)}")
    return "\n".join(lines)


def _problem(item: Any) -> str:
    """Return a message naming the value found, what is expected and the fix."""
    kind = item["type"]
    if kind == "value_error":
        # Carepost's own validators already name the value and the fix.
        return str(item["ctx"]["error"])
    if kind == "missing":
        return "missing; add this setting"
    if kind == "extra_forbidden":
        return "unknown key; check its spelling or remove it"
    return f"{item['msg']}{_found(item['input'])}"


def _found(value: object) -> str:
    if isinstance(value, (dict, list)):
        return ""
    text = repr(value)
    if len(text) > _MAX_FOUND_CHARS:
        text = text[: _MAX_FOUND_CHARS - 3] + "..."
    return f" (found {text})"
