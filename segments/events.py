"""SQL for event conditions: windows, counts and ordered pairs of events.

An event condition reads, for one profile ``p``, the events of one type
that match its ``where`` properties and happened before the end of the run
date (``run_end``). On top of that set:

- ``within`` keeps the events at or after ``run_end`` minus the window;
- ``older_than`` keeps the events before ``run_end`` minus the window;
- ``count`` compares how many remain; without it, one is enough;
- ``not_within`` requires that no such event falls in that window, which
  also holds for a profile that never had one;
- ``followed_by`` / ``not_followed_by`` require that a second event of
  the pair did or did not happen strictly after the first, before
  ``run_end`` and, with ``within_after``, at most that long after it.
  ``same`` ties the two events by equal property values (such as rx_id).
  With ``not_followed_by`` and ``within_after``, the whole follow-up
  window must have passed by ``run_end``: a prescription written
  yesterday is not yet "unfilled for 7 days".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from carepost.segments.spec import EventNode, FollowNode, PropertyValue
from carepost.segments.vocabulary import WINDOW_PATTERN, WINDOW_UNITS

if TYPE_CHECKING:
    from carepost.segments.compiler import SqlBuilder

_COUNT_COMPARISONS = {"equals": "=", "gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}


def event_condition(node: EventNode, builder: SqlBuilder, run_end: str) -> str:
    """Compile one event condition to a boolean SQL expression over ``p``."""
    if node.pair() is None:
        return _facts_condition(node, builder, run_end)
    parts = []
    only_absence = node.not_within is not None and not (
        node.within or node.older_than or node.count or node.pair()
    )
    if not only_absence:
        parts.append(_presence_sql(node, builder, run_end))

    if node.not_within is not None:
        alias = builder.alias("event")
        source = _events_from(alias, node, builder, run_end)
        recent = _since(alias, node.not_within, builder, run_end)
        parts.append(f"NOT EXISTS (SELECT 1 {source}\n    AND {recent})")
    return "(" + "\n  AND ".join(parts) + ")"


def _facts_condition(node: EventNode, builder: SqlBuilder, run_end: str) -> str:
    """Compare counts from the ``event_facts`` aggregate (no ordered pair)."""
    parts = []
    only_absence = node.not_within is not None and not (
        node.within or node.older_than or node.count
    )
    if not only_absence:
        tests = _event_tests("e", node, builder)
        if node.within is not None:
            tests.append(_since("e", node.within, builder, run_end))
        if node.older_than is not None:
            limit = _interval(node.older_than, builder)
            tests.append(f"e.occurred_at < {_utc(f'{run_end} - {limit}')}")
        total = builder.fact(" AND ".join(tests), node.event)
        if node.count is None:
            parts.append(f"{total} > 0")
        else:
            for key in sorted(node.count.model_fields_set):
                bound = builder.bind(getattr(node.count, key))
                parts.append(f"{total} {_COUNT_COMPARISONS[key]} {bound}")

    if node.not_within is not None:
        tests = _event_tests("e", node, builder)
        tests.append(_since("e", node.not_within, builder, run_end))
        parts.append(f"{builder.fact(' AND '.join(tests), node.event)} = 0")
    return "(" + " AND ".join(parts) + ")"


def _event_tests(
    alias: str, node: EventNode | FollowNode, builder: SqlBuilder
) -> list[str]:
    """Type and property tests on one events row (the time bound is separate)."""
    tests = [f"{alias}.type = {builder.bind(node.event)}"]
    for name, value in node.where.items():
        tests.append(_property_sql(alias, name, value, builder))
    return tests


def _presence_sql(node: EventNode, builder: SqlBuilder, run_end: str) -> str:
    alias = builder.alias("event")
    source = _events_from(alias, node, builder, run_end)
    if node.within is not None:
        source += f"\n    AND {_since(alias, node.within, builder, run_end)}"
    if node.older_than is not None:
        limit = _interval(node.older_than, builder)
        source += f"\n    AND {alias}.occurred_at < {_utc(f'{run_end} - {limit}')}"

    if node.count is not None:
        bounds = [
            f"(SELECT count(*) {source}) {_COUNT_COMPARISONS[key]} "
            f"{builder.bind(getattr(node.count, key))}"
            for key in sorted(node.count.model_fields_set)
        ]
        return "(" + " AND ".join(bounds) + ")"

    pair = node.pair()
    if pair is not None:
        source += "\n    AND " + _pair_sql(alias, node, pair, builder, run_end)
    return f"EXISTS (SELECT 1 {source})"


def _pair_sql(
    first: str, node: EventNode, pair: FollowNode, builder: SqlBuilder, run_end: str
) -> str:
    second = builder.alias("event")
    source = (
        _events_from(second, pair, builder, run_end)
        + f"\n      AND {second}.occurred_at > {first}.occurred_at"
    )
    limit = _interval(pair.within_after, builder) if pair.within_after else None
    if limit is not None:
        source += f"\n      AND {_time(second)} <= {_time(first)} + {limit}"
    for name in pair.same:
        path = builder.bind("$." + name)
        source += (
            f"\n      AND json_extract_string({second}.properties, {path})"
            f" = json_extract_string({first}.properties, {path})"
        )

    if node.followed_by is not None:
        return f"EXISTS (SELECT 1 {source})"
    test = f"NOT EXISTS (SELECT 1 {source})"
    if limit is not None:
        test += f"\n    AND {_time(first)} + {limit} <= {run_end}"
    return test


def _events_from(
    alias: str, node: EventNode | FollowNode, builder: SqlBuilder, run_end: str
) -> str:
    tests = [
        f"{alias}.profile_id = p.profile_id",
        f"{alias}.type = {builder.bind(node.event)}",
        f"{alias}.occurred_at < {_utc(run_end)}",
    ]
    for name, value in node.where.items():
        tests.append(_property_sql(alias, name, value, builder))
    return f"FROM events AS {alias}\n    WHERE " + "\n    AND ".join(tests)


def _property_sql(
    alias: str, name: str, value: PropertyValue, builder: SqlBuilder
) -> str:
    """Compare one event property as text, the way JSON stores it."""
    extracted = f"json_extract_string({alias}.properties, {builder.bind('$.' + name)})"
    if isinstance(value, list):
        items = ", ".join(builder.bind(_as_json_text(item)) for item in value)
        return f"coalesce({extracted} IN ({items}), false)"
    text = _as_json_text(value)
    bound = builder.bind(text)
    test = f"{extracted} = {bound}"
    if _plain_text(text):
        # A substring search is much cheaper than parsing JSON. A matching
        # value is in the raw text unless the JSON has an escape (a backslash).
        backslash = builder.bind("\\")
        raw = f"{alias}.properties"
        test = f"(contains({raw}, {bound}) OR contains({raw}, {backslash})) AND {test}"
    return f"coalesce({test}, false)"


def _plain_text(text: str) -> bool:
    """Return whether ``text`` can equal only a JSON string value.

    json_extract_string re-serialises numbers, booleans, null, objects and
    arrays, so their text may differ from the raw JSON. A string value
    written without escapes appears in the raw JSON as it is.
    """
    if not text or text in ("true", "false", "null") or text[0] in "{[":
        return False
    try:
        float(text)
    except ValueError:
        return True
    return False


def _as_json_text(value: Any) -> str:
    """Render a YAML scalar the way json_extract_string returns it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _time(alias: str) -> str:
    """Return one row's time as a naive UTC timestamp, for calendar arithmetic."""
    return f"timezone('UTC', {alias}.occurred_at)"


def _utc(naive: str) -> str:
    """Turn a naive UTC timestamp expression of bound values into a TIMESTAMPTZ.

    The result is a constant once the parameters are bound. A comparison
    with ``occurred_at`` then reaches the scan as a filter on the column.
    """
    return f"timezone('UTC', {naive})"


def _since(alias: str, window: str, builder: SqlBuilder, run_end: str) -> str:
    return f"{alias}.occurred_at >= {_utc(f'{run_end} - {_interval(window, builder)}')}"


def _interval(window: str, builder: SqlBuilder) -> str:
    match = WINDOW_PATTERN.match(window)
    assert match is not None, "spec.Window validated the pattern"
    amount, unit = match.groups()
    return f"{WINDOW_UNITS[unit]}({builder.bind(int(amount))})"
