"""Compile a validated spec to one DuckDB query over ``profiles`` and ``events``.

Rules the generated SQL keeps:

- Every value from a spec is a bound parameter (``$p0``, ``$p1``, ...).
  The SQL text contains only keywords, the aliases made here, column
  names from ``vocabulary.PROFILE_TRAITS`` and function names from
  ``vocabulary.WINDOW_UNITS``.
- The run date is the ``$as_of`` parameter. The run counts as happening at
  the end of that UTC day, so an event on the run date counts and an event
  after it never does. ``within: 14d`` covers the 14 x 24 hours before that
  instant.
- Window boundaries are computed on naive UTC timestamps from bound
  values and turned into ``TIMESTAMPTZ`` constants with
  ``timezone('UTC', ...)``, so the session's TimeZone setting cannot move
  a boundary. Stored ``TIMESTAMPTZ`` columns are compared as they are,
  never converted per row, which lets DuckDB push the comparison into the
  scan and skip row groups by their min/max statistics.
- Each leaf is two-valued: a comparison with a missing (NULL) trait is
  false, so ``not`` of it is true.
- Profiles whose ``deceased_at`` falls on or before the run date are never
  returned, whatever the spec says.
- Event conditions without an ordered pair become counts in one
  ``event_facts`` aggregate (``count(*) FILTER (WHERE ...)`` per
  condition, grouped by profile), joined once to ``profiles``. That reads
  the events once per query instead of once per condition; ordered pairs
  stay correlated ``EXISTS`` subqueries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from carepost.segments.events import event_condition
from carepost.segments.spec import (
    AllNode,
    AnyNode,
    CodeMatch,
    ConditionMatch,
    EventNode,
    InSegmentNode,
    Node,
    NotNode,
    SegmentSpec,
    TraitNode,
)
from carepost.segments.vocabulary import (
    AGE_TRAIT,
    PROFILE_TRAITS,
    TraitType,
)

AS_OF = "CAST($as_of AS DATE)"
RUN_END = f"({AS_OF} + INTERVAL 1 DAY)"
# The same instant as a TIMESTAMPTZ constant, for comparing stored columns.
RUN_END_TZ = f"timezone('UTC', {RUN_END})"
ALIVE = f"(p.deceased_at IS NULL OR p.deceased_at >= {RUN_END_TZ})"
# Age in whole years on the run date: one less while the birthday (month
# and day) is still ahead in the run year, so a 29 February birthday is
# reached on 1 March in common years.
AGE_SQL = (
    f"(year({AS_OF}) - year(p.birth_date) - CASE WHEN "
    f"month({AS_OF}) * 100 + day({AS_OF}) < "
    "month(p.birth_date) * 100 + day(p.birth_date) THEN 1 ELSE 0 END)"
)

_COMPARISONS = {
    "equals": "=",
    "not_equals": "<>",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
}
_JSON_CASTS = {
    TraitType.NUMBER: "DOUBLE",
    TraitType.BOOLEAN: "BOOLEAN",
    TraitType.DATE: "DATE",
}


@dataclass(frozen=True)
class CompiledSegment:
    """One query and its bound values, except the run date.

    ``params`` maps parameter names to the spec's values. Call ``bind`` to
    add the run date before executing ``sql``.
    """

    sql: str
    params: dict[str, Any]

    def bind(self, as_of: date) -> dict[str, Any]:
        """Return the parameters with the run date added as ``as_of``."""
        return {**self.params, "as_of": as_of}


@dataclass
class SqlBuilder:
    """Collects bound parameters and hands out unique table aliases."""

    lookup: Callable[[str], SegmentSpec]
    declared: dict[str, TraitType] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    alias_count: int = 0
    # Filters over ``e`` (one events row) whose counts ``event_facts`` holds.
    facts: list[str] = field(default_factory=list)
    fact_types: set[str] = field(default_factory=set)

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"${name}"

    def alias(self, prefix: str) -> str:
        self.alias_count += 1
        return f"{prefix}{self.alias_count}"

    def fact(self, event_filter: str, event_type: str) -> str:
        """Count the events matching ``event_filter``; return the count's SQL."""
        self.facts.append(event_filter)
        self.fact_types.add(event_type)
        return f"coalesce(f.fact{len(self.facts)}, 0)"

    def from_profiles(self) -> str:
        """Return the FROM clause: profiles, joined to their event facts if any."""
        if not self.facts:
            return "FROM profiles AS p"
        counts = ",\n    ".join(
            f"count(*) FILTER (WHERE {test}) AS fact{number}"
            for number, test in enumerate(self.facts, 1)
        )
        types = ", ".join(self.bind(name) for name in sorted(self.fact_types))
        return (
            "FROM profiles AS p\nLEFT JOIN (SELECT e.profile_id,\n    "
            + counts
            + f"\n  FROM events AS e\n  WHERE e.type IN ({types})\n"
            + f"    AND e.occurred_at < {RUN_END_TZ}\n"
            + "  GROUP BY e.profile_id) AS f ON f.profile_id = p.profile_id"
        )

    def declared_type(self, trait: str) -> TraitType:
        """Return the type of a trait declared by the spec being compiled."""
        return self.declared[trait]


def compile_segment(
    spec: SegmentSpec, lookup: Callable[[str], SegmentSpec], stage: str | None = None
) -> CompiledSegment:
    """Compile one spec; ``lookup`` returns the specs that in_segment names."""
    builder = SqlBuilder(lookup, dict(spec.traits))
    filters = [ALIVE]
    if spec.exclude is not None:
        filters.append(f"NOT {node_sql(spec.exclude, builder)}")

    if spec.stages is None:
        assert spec.where is not None
        filters.append(node_sql(spec.where, builder))
        sql = (
            f"SELECT p.profile_id\n{builder.from_profiles()}\nWHERE "
            + "\n  AND ".join(filters)
            + "\nORDER BY p.profile_id"
        )
        return CompiledSegment(sql, builder.params)
    return CompiledSegment(
        _lifecycle_sql(spec, builder, filters, stage), builder.params
    )


def _lifecycle_sql(
    spec: SegmentSpec, builder: SqlBuilder, filters: list[str], stage: str | None
) -> str:
    assert spec.stages is not None
    branches = [
        f"    WHEN {node_sql(item.where, builder)} THEN {builder.bind(item.name)}"
        for item in spec.stages
    ]
    staged = (
        "SELECT p.profile_id,\n  CASE\n"
        + "\n".join(branches)
        + f"\n  END AS stage\n{builder.from_profiles()}\nWHERE "
        + "\n  AND ".join(filters)
    )
    if stage is None:
        return (
            f"SELECT profile_id, stage\nFROM ({staged}) AS staged\n"
            "WHERE stage IS NOT NULL\nORDER BY profile_id"
        )
    return (
        f"SELECT profile_id\nFROM ({staged}) AS staged\n"
        f"WHERE stage = {builder.bind(stage)}\nORDER BY profile_id"
    )


def node_sql(node: Node, builder: SqlBuilder) -> str:
    """Compile one condition to a boolean SQL expression over ``p``."""
    if isinstance(node, AllNode):
        return _join(" AND ", [node_sql(child, builder) for child in node.all])
    if isinstance(node, AnyNode):
        return _join(" OR ", [node_sql(child, builder) for child in node.any])
    if isinstance(node, NotNode):
        return f"(NOT {node_sql(node.not_, builder)})"
    if isinstance(node, TraitNode):
        return _trait_sql(node, builder)
    if isinstance(node, EventNode):
        return event_condition(node, builder, RUN_END)
    return _in_segment_sql(node, builder)


def _join(operator: str, parts: list[str]) -> str:
    return "(" + f"\n  {operator.strip()} ".join(parts) + ")"


def _in_segment_sql(node: InSegmentNode, builder: SqlBuilder) -> str:
    """Inline another segment's membership test; the library rejected cycles."""
    spec = builder.lookup(node.in_segment)
    outer_declared = builder.declared
    builder.declared = dict(spec.traits)
    try:
        return _membership_sql(spec, node.stage, builder)
    finally:
        builder.declared = outer_declared


def _membership_sql(spec: SegmentSpec, stage: str | None, builder: SqlBuilder) -> str:
    parts = []
    if spec.exclude is not None:
        parts.append(f"NOT {node_sql(spec.exclude, builder)}")
    if spec.stages is None:
        assert spec.where is not None
        parts.append(node_sql(spec.where, builder))
        return _join(" AND ", parts)

    if stage is None:
        tests = [node_sql(item.where, builder) for item in spec.stages]
        parts.append(_join(" OR ", tests))
        return _join(" AND ", parts)

    # Compile only the stages up to the requested one: DuckDB rejects a
    # bound parameter that the query does not use.
    names = [item.name for item in spec.stages]
    tests = [
        node_sql(item.where, builder) for item in spec.stages[: names.index(stage) + 1]
    ]
    parts.extend([*(f"NOT {test}" for test in tests[:-1]), tests[-1]])
    return _join(" AND ", parts)


def _trait_sql(node: TraitNode, builder: SqlBuilder) -> str:
    operator = node.operator()
    if operator == "contains":
        assert node.contains is not None
        return _contains_sql(node.contains, builder)

    column = _trait_expression(node.trait, builder)
    value = node.operator_value()
    if operator == "exists":
        return f"({column} IS {'NOT ' if value else ''}NULL)"
    if operator in ("in", "not_in"):
        items = ", ".join(builder.bind(item) for item in value)
        test = f"{column} {'NOT ' if operator == 'not_in' else ''}IN ({items})"
    elif operator == "between":
        test = f"{column} BETWEEN {builder.bind(value[0])} AND {builder.bind(value[1])}"
    else:
        test = f"{column} {_COMPARISONS[operator]} {builder.bind(value)}"
    return f"coalesce({test}, false)"


def _trait_expression(trait: str, builder: SqlBuilder) -> str:
    """Return the SQL for a trait's value; names come from the vocabulary."""
    if trait == AGE_TRAIT:
        return AGE_SQL
    if trait == "deceased_at":
        return "CAST(timezone('UTC', p.deceased_at) AS DATE)"
    if trait in PROFILE_TRAITS:
        return f"p.{trait}"

    declared = builder.declared_type(trait)
    text = f"json_extract_string(p.traits, {builder.bind('$.' + trait)})"
    if declared is TraitType.TEXT:
        return text
    return f"TRY_CAST({text} AS {_JSON_CASTS[declared]})"


def _contains_sql(match: ConditionMatch, builder: SqlBuilder) -> str:
    # NOTE: the JSON list is parsed for each profile that passes the cheaper
    # filters. A typed copy derived at load (a profile_conditions table or a
    # list column) took 1.4 to 2.7 times less CPU for this test alone at 1
    # million profiles. It is not built: every writer of traits would have
    # to keep it in step (connectors.sync upserts and deletes,
    # connectors.fhir_store patches). A stale copy would silently change
    # who is selected.
    item = builder.alias("condition")
    patterns = match.any_of or [match]
    tests = _join(
        " OR ", [_code_match_sql(pattern, item, builder) for pattern in patterns]
    )
    return (
        f"EXISTS (SELECT 1 FROM unnest(TRY_CAST(json_extract(p.traits, "
        f"'$.conditions') AS JSON[])) AS {item}_list({item})\n"
        f"  WHERE {tests})"
    )


def _code_match_sql(pattern: CodeMatch, item: str, builder: SqlBuilder) -> str:
    if pattern.display is not None:
        return (
            f"lower(json_extract_string({item}, '$.display')) = "
            f"lower({builder.bind(pattern.display)})"
        )
    test = f"json_extract_string({item}, '$.code') = {builder.bind(pattern.code)}"
    if pattern.system is not None:
        test += (
            f" AND json_extract_string({item}, '$.system') = "
            f"{builder.bind(pattern.system)}"
        )
    return f"({test})"
