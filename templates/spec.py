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

Optional keys: ``language`` (the language of this file, default ``en``),
``fallback_language`` (the version used when the profile's language has
none, default ``language``) and ``sender_name`` (the From display name,
default the configured sender's). A language version ``NAME.es.html.j2``
has its own front matter with only ``subject``, ``preheader``,
``sender_name`` and ``defaults``; the fields and purpose are the base
template's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from carepost.core.states import Purpose
from carepost.templates.errors import TemplateSpecError

# Names the engine puts in every render context; a profile field cannot
# use them.
ENGINE_NAMES = frozenset(
    {
        "practice",
        "unsubscribe_url",
        "message_id",
        "subject",
        "preheader",
        "message_language",
    }
)
_KEYS = (
    "subject",
    "preheader",
    "purpose",
    "fields",
    "defaults",
    "language",
    "fallback_language",
    "sender_name",
)
_REQUIRED_KEYS = ("subject", "preheader", "purpose", "fields")
_VERSION_KEYS = ("subject", "preheader", "defaults", "sender_name")
_LANGUAGE = re.compile(r"[a-z]{2,3}\Z")
DEFAULT_LANGUAGE = "en"
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
    language: str = DEFAULT_LANGUAGE
    fallback_language: str = DEFAULT_LANGUAGE
    sender_name: str | None = None

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
    language = _language(path, raw, "language", lines) or DEFAULT_LANGUAGE
    return TemplateSpec(
        name=name,
        path=path,
        subject=_one_line(path, raw, "subject", lines),
        preheader=_one_line(path, raw, "preheader", lines),
        purpose=_purpose(path, raw["purpose"], lines.get("purpose")),
        fields=fields,
        defaults=MappingProxyType(_defaults(path, raw.get("defaults"), fields, lines)),
        key_lines=MappingProxyType(lines),
        language=language,
        fallback_language=_language(path, raw, "fallback_language", lines) or language,
        sender_name=_sender_name(path, raw, lines),
    )


def parse_version_spec(
    base: TemplateSpec, language: str, path: Path, front: str | None
) -> TemplateSpec:
    """Parse the front matter of the language version ``path`` of ``base``."""
    if front is None:
        raise TemplateSpecError(
            path, 1, "missing front matter", hint="give at least subject and preheader"
        )
    raw, lines = _load_yaml(path, front)
    for key in raw:
        if key not in _VERSION_KEYS:
            raise TemplateSpecError(
                path,
                lines.get(str(key)),
                f"'{key}' cannot be set in a language version",
                hint=f"set it in {base.path.name}; a version may set: "
                f"{', '.join(_VERSION_KEYS)}",
            )
    for key in ("subject", "preheader"):
        if key not in raw:
            raise TemplateSpecError(path, _FIRST_YAML_LINE, f"missing key '{key}'")
    defaults = _defaults(path, raw.get("defaults"), base.fields, lines)
    for key in defaults:
        if key not in base.defaults:
            raise TemplateSpecError(
                path,
                lines.get("defaults"),
                f"'{key}' is required in {base.path.name}",
                hint="a language version may only translate existing defaults",
            )
    return replace(
        base,
        path=path,
        subject=_one_line(path, raw, "subject", lines),
        preheader=_one_line(path, raw, "preheader", lines),
        defaults=MappingProxyType({**base.defaults, **defaults}),
        key_lines=MappingProxyType(lines),
        language=language,
        sender_name=_sender_name(path, raw, lines) or base.sender_name,
    )


def _language(
    path: Path, raw: dict[str, Any], key: str, lines: dict[str, int]
) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not _LANGUAGE.match(value):
        raise TemplateSpecError(
            path,
            lines.get(key),
            f"'{key}' must be a lower-case language code",
            hint="use an ISO 639 code such as en or es",
        )
    return value


def _sender_name(path: Path, raw: dict[str, Any], lines: dict[str, int]) -> str | None:
    if "sender_name" not in raw:
        return None
    value = _one_line(path, raw, "sender_name", lines)
    if "{" in value:
        raise TemplateSpecError(
            path, lines.get("sender_name"), "'sender_name' must be plain text"
        )
    return value


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
