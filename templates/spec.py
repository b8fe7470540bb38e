"""Front matter of a template file: what it declares and how it is checked.

A template ``NAME.html.j2`` starts with YAML between two ``---`` lines::

    ---
    subject: "{{ first_name }}, time for your yearly checkup"
    preheader: Book a visit in two minutes.
    purpose: care
    fields: [first_name, last_checkup_date, timezone, language]
    defaults:
      first_name: there        # used when the profile has no first name
      last_checkup_date: null  # optional; the template tests "is defined"
    ---

A field listed in ``defaults`` is optional; every other field is required.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from carepost.core.states import Purpose
from carepost.templates.errors import TemplateSpecError

# Names the engine puts in every render context; a profile field cannot
# use them.
ENGINE_NAMES = frozenset(
    {"practice", "unsubscribe_url", "message_id", "subject", "preheader"}
)
_KEYS = ("subject", "preheader", "purpose", "fields", "defaults")
_REQUIRED_KEYS = ("subject", "preheader", "purpose", "fields")
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*\Z")
# The first file line of the YAML: line 1 of the file is "---".
_FIRST_YAML_LINE = 2


@dataclass(frozen=True)
class TemplateSpec:
    """The validated front matter of one template."""

    name: str
    path: Path
    subject: str
    preheader: str
    purpose: Purpose
    fields: tuple[str, ...]
    defaults: MappingProxyType[str, str | None] = field(
        default_factory=lambda: MappingProxyType({})
    )
    key_lines: MappingProxyType[str, int] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @property
    def optional_fields(self) -> frozenset[str]:
        return frozenset(self.defaults)

    def line_of(self, key: str) -> int | None:
        return self.key_lines.get(key)


def parse_spec(name: str, path: Path, front: str | None) -> TemplateSpec:
    """Parse and validate the front matter of the template file ``path``."""
    if front is None:
        raise TemplateSpecError(
            path,
            1,
            "missing front matter",
            hint="start the file with '---', the YAML keys, then '---'",
        )
    raw, lines = _load_yaml(path, front)
    _check_keys(path, raw, lines)
    fields = _fields(path, raw["fields"], lines.get("fields"))
    return TemplateSpec(
        name=name,
        path=path,
        subject=_one_line(path, raw, "subject", lines),
        preheader=_one_line(path, raw, "preheader", lines),
        purpose=_purpose(path, raw["purpose"], lines.get("purpose")),
        fields=fields,
        defaults=MappingProxyType(_defaults(path, raw.get("defaults"), fields, lines)),
        key_lines=MappingProxyType(lines),
    )


def _load_yaml(path: Path, front: str) -> tuple[dict[str, Any], dict[str, int]]:
    try:
        raw = yaml.safe_load(front)
        node = yaml.compose(front, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + _FIRST_YAML_LINE if mark is not None else None
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise TemplateSpecError(
            path, line, f"front matter is not valid YAML: {problem}"
        ) from None
    if not isinstance(raw, dict) or not isinstance(node, yaml.MappingNode):
        raise TemplateSpecError(
            path, _FIRST_YAML_LINE, "front matter must be a mapping"
        )
    lines = {
        str(key.value): key.start_mark.line + _FIRST_YAML_LINE for key, _ in node.value
    }
    return raw, lines


def _check_keys(path: Path, raw: dict[str, Any], lines: dict[str, int]) -> None:
    for key in raw:
        if key not in _KEYS:
            raise TemplateSpecError(
                path,
                lines.get(str(key)),
                f"unknown key '{key}'",
                hint=f"expected one of: {', '.join(_KEYS)}",
            )
    for key in _REQUIRED_KEYS:
        if key not in raw:
            raise TemplateSpecError(path, _FIRST_YAML_LINE, f"missing key '{key}'")


def _one_line(path: Path, raw: dict[str, Any], key: str, lines: dict[str, int]) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise TemplateSpecError(path, lines.get(key), f"'{key}' must be non-empty text")
    if "\n" in value.strip() or "\r" in value:
        raise TemplateSpecError(path, lines.get(key), f"'{key}' must be one line")
    return value.strip()


def _purpose(path: Path, value: object, line: int | None) -> Purpose:
    try:
        return Purpose(value)
    except ValueError:
        allowed = ", ".join(purpose.value for purpose in Purpose)
        raise TemplateSpecError(
            path, line, f"invalid purpose {value!r}", hint=f"expected one of: {allowed}"
        ) from None


def _fields(path: Path, value: object, line: int | None) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TemplateSpecError(path, line, "'fields' must be a list of field names")
    for item in value:
        if not isinstance(item, str) or not _IDENTIFIER.match(item):
            raise TemplateSpecError(
                path,
                line,
                f"invalid field name {item!r}",
                hint="use lower-case letters, digits and underscores",
            )
        if item in ENGINE_NAMES:
            raise TemplateSpecError(
                path, line, f"'{item}' is provided by the engine; remove it from fields"
            )
    if len(set(value)) != len(value):
        raise TemplateSpecError(path, line, "'fields' lists a field twice")
    return tuple(value)


def _defaults(
    path: Path, value: object, fields: tuple[str, ...], lines: dict[str, int]
) -> dict[str, str | None]:
    line = lines.get("defaults")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TemplateSpecError(path, line, "'defaults' must map field names to text")
    for key, fallback in value.items():
        if key not in fields:
            raise TemplateSpecError(
                path,
                line,
                f"default for '{key}', which is not in fields",
                hint="declare the field in 'fields' or remove its default",
            )
        if fallback is not None and not isinstance(fallback, str):
            raise TemplateSpecError(
                path, line, f"default for '{key}' must be text or null"
            )
    return dict(value)
