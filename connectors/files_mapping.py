"""Column mappings for exports whose columns are not the canonical ones.

A mapping file is YAML with a ``profiles`` and an ``events`` section. Each
names a canonical column and where its value comes from:

    profiles:
      profile_id: Id                     # a source column
      sex: {column: GENDER, values: {M: male, F: female}}
      traits:                            # a JSON object built from columns
        race: RACE
    events:
      event_id: Id
      type: {value: encounter}           # the same value on every row
      occurred_at: START
      properties: {class: ENCOUNTERCLASS, code: CODE, display: DESCRIPTION}

A canonical column that the section does not name is read from the source
column of the same name, when there is one. Source column names match
without regard to letter case. Values are text; ``values`` replaces
listed values and keeps the others.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from carepost.core.errors import CarepostError
from carepost.core.schema import EVENT_COLUMNS, PROFILE_COLUMNS
from carepost.core.yamlio import YamlFileError, load_yaml_file

__all__ = [
    "ColumnExpr", "ColumnRule", "ExportMapping", "MappingError", "Rule", "load_mapping",
    "rule_sql",
]

JSON_OBJECT_COLUMNS = frozenset({"traits", "properties"})


class MappingError(CarepostError):
    """A mapping file is invalid or names a column the export does not have."""


class ColumnRule(BaseModel):
    """Where one canonical value comes from: a column or a constant value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str | None = None
    value: str | None = None
    values: dict[str, str] = {}

    @model_validator(mode="after")
    def _one_origin(self) -> ColumnRule:
        if (self.column is None) == (self.value is None):
            raise ValueError("give exactly one of column or value")
        if self.values and self.column is None:
            raise ValueError("values applies only with column")
        return self


Rule = ColumnRule | dict[str, ColumnRule]


def _parse_rule(where: str, raw: object) -> ColumnRule:
    if isinstance(raw, str):
        return ColumnRule(column=raw)
    if isinstance(raw, dict):
        return ColumnRule.model_validate(raw)
    raise ValueError(f"{where}: expected a column name or a mapping, found {type(raw).__name__}")


def _parse_table(table: str, raw: object, known: dict[str, str]) -> dict[str, Rule]:
    if not isinstance(raw, dict):
        raise ValueError(f"{table}: expected a mapping of canonical columns")
    rules: dict[str, Rule] = {}
    for name, rule in raw.items():
        where = f"{table}.{name}"
        if name not in known:
            raise ValueError(f"{where} is not a canonical column")
        if name in JSON_OBJECT_COLUMNS and isinstance(rule, dict):
            rules[name] = {key: _parse_rule(f"{where}.{key}", part) for key, part in rule.items()}
        else:
            rules[name] = _parse_rule(where, rule)
    return rules


class ExportMapping(BaseModel):
    """Per table: canonical column -> rule, or for traits/properties, key -> rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: dict[str, Rule] = {}
    events: dict[str, Rule] = {}

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, raw: object) -> object:
        if not isinstance(raw, dict):
            raise ValueError("expected a mapping with profiles and events")
        parsed = dict(raw)
        for table, known in (("profiles", PROFILE_COLUMNS), ("events", EVENT_COLUMNS)):
            if table in parsed:
                parsed[table] = _parse_table(table, parsed[table], known)
        return parsed

    def table(self, name: str) -> dict[str, Rule]:
        return getattr(self, name)


def load_mapping(path: Path) -> ExportMapping:
    """Read and validate a mapping file; the error names the file and key."""
    try:
        raw = load_yaml_file(path).data or {}
    except FileNotFoundError:
        raise MappingError(f"mapping file {path} not found", hint="check mapping:") from None
    except YamlFileError as error:
        raise MappingError(error.message, hint=error.hint) from None
    try:
        return ExportMapping.model_validate(raw)
    except ValidationError as error:
        where = "; ".join(
            ".".join(str(part) for part in item["loc"]) + ": " + item["msg"]
            for item in error.errors()
        )
        raise MappingError(f"{path}: invalid mapping: {where}") from None


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# Returns SQL for a source column as text, or None when the export lacks it.
ColumnExpr = Callable[[str], "str | None"]


def _column_sql(rule: ColumnRule, column_expr: ColumnExpr, where: str) -> str:
    """Return SQL for one rule as text."""
    if rule.value is not None:
        return _literal(rule.value)
    column = column_expr(rule.column)
    if column is None:
        raise MappingError(
            f"{where}: the export has no column {rule.column!r}",
            hint="fix the mapping or the export's header",
        )
    if not rule.values:
        return column
    cases = " ".join(
        f"WHEN {_literal(old)} THEN {_literal(new)}" for old, new in rule.values.items()
    )
    return f"CASE trim({column}) {cases} ELSE {column} END"


def rule_sql(name: str, rule: Rule, column_expr: ColumnExpr, where: str) -> str:
    """Return SQL text for canonical column ``name`` under ``rule``."""
    if isinstance(rule, dict):
        pairs = ", ".join(
            f"{_literal(key)}, NULLIF(trim({_column_sql(part, column_expr, where)}), '')"
            for key, part in rule.items()
        )
        # json_object keeps NULL members; a missing value stays JSON null.
        return f"CAST(json_object({pairs}) AS VARCHAR)"
    return _column_sql(rule, column_expr, where)
