"""An independent reading of the segment language in plain Python.

This evaluator is written from the language's documentation
(``segments/README.md``), not from the compiler: it shares only the spec
model (``carepost.segments.spec``). The property tests run random specs
through both and require the same profiles.

Profiles are dicts of the canonical columns with ``traits`` already
parsed from JSON; events are ``Event`` tuples with timezone-aware times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from carepost.segments.spec import (
    AllNode,
    AnyNode,
    CodeMatch,
    EventNode,
    FollowNode,
    InSegmentNode,
    Node,
    NotNode,
    SegmentSpec,
    TraitNode,
)
from dateutil.relativedelta import relativedelta

PROFILE_COLUMN_TRAITS = {
    "birth_date",
    "sex",
    "postal_code",
    "state",
    "timezone",
    "language",
    "consent_marketing",
    "consent_contact",
}


@dataclass(frozen=True)
class Event:
    profile_id: str
    type: str
    occurred_at: datetime
    properties: dict[str, Any]


def window_delta(window: str) -> relativedelta:
    """Read ``14d``, ``12mo`` and so on as a calendar step."""
    for unit, build in (
        ("mo", lambda n: relativedelta(months=n)),
        ("h", lambda n: relativedelta(hours=n)),
        ("d", lambda n: relativedelta(days=n)),
        ("w", lambda n: relativedelta(weeks=n)),
        ("y", lambda n: relativedelta(years=n)),
    ):
        if window.endswith(unit):
            return build(int(window[: -len(unit)]))
    raise ValueError(window)


def json_text(value: Any) -> str | None:
    """The text a JSON value stands for, as the README describes matching."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Evaluator:
    """Decide segment membership for one run date."""

    def __init__(
        self,
        specs: dict[str, SegmentSpec],
        profiles: list[dict[str, Any]],
        events: list[Event],
        as_of: date,
    ) -> None:
        self.specs = specs
        self.profiles = profiles
        self.as_of = as_of
        self.run_end = datetime.combine(as_of + timedelta(days=1), time(), tzinfo=UTC)
        self.events: dict[str, list[Event]] = {}
        for item in events:
            if item.occurred_at < self.run_end:
                self.events.setdefault(item.profile_id, []).append(item)

    def select(self, name: str, stage: str | None = None) -> list[str]:
        spec = self.specs[name]
        chosen = []
        for profile in self.profiles:
            if not self._alive(profile):
                continue
            if spec.exclude is not None and self._node(spec.exclude, profile, spec):
                continue
            if spec.stages is None:
                assert spec.where is not None
                keep = self._node(spec.where, profile, spec)
            else:
                found = self._stage_of(spec, profile)
                keep = found is not None and (stage is None or found == stage)
            if keep:
                chosen.append(profile["profile_id"])
        return sorted(chosen)

    # -- profiles ---------------------------------------------------------------

    def _alive(self, profile: dict[str, Any]) -> bool:
        deceased = profile.get("deceased_at")
        return deceased is None or deceased >= self.run_end

    def _stage_of(self, spec: SegmentSpec, profile: dict[str, Any]) -> str | None:
        for stage in spec.stages or []:
            if self._node(stage.where, profile, spec):
                return stage.name
        return None

    def _member(self, node: InSegmentNode, profile: dict[str, Any]) -> bool:
        spec = self.specs[node.in_segment]
        if spec.exclude is not None and self._node(spec.exclude, profile, spec):
            return False
        if spec.stages is None:
            assert spec.where is not None
            return self._node(spec.where, profile, spec)
        found = self._stage_of(spec, profile)
        return found is not None and (node.stage is None or found == node.stage)

    def _node(self, node: Node, profile: dict[str, Any], spec: SegmentSpec) -> bool:
        if isinstance(node, AllNode):
            return all(self._node(child, profile, spec) for child in node.all)
        if isinstance(node, AnyNode):
            return any(self._node(child, profile, spec) for child in node.any)
        if isinstance(node, NotNode):
            return not self._node(node.not_, profile, spec)
        if isinstance(node, TraitNode):
            return self._trait(node, profile, spec)
        if isinstance(node, EventNode):
            return self._event(node, self.events.get(profile["profile_id"], []))
        return self._member(node, profile)

    # -- traits -------------------------------------------------------------------

    def _trait_value(
        self, name: str, profile: dict[str, Any], spec: SegmentSpec
    ) -> Any:
        if name == "age":
            born = profile.get("birth_date")
            if born is None:
                return None
            before_birthday = (self.as_of.month, self.as_of.day) < (
                born.month,
                born.day,
            )
            return self.as_of.year - born.year - int(before_birthday)
        if name == "deceased_at":
            moment = profile.get("deceased_at")
            return None if moment is None else moment.astimezone(UTC).date()
        if name in PROFILE_COLUMN_TRAITS:
            return profile.get(name)
        traits = profile.get("traits") or {}
        return _declared_value(traits.get(name), spec.traits[name].value)

    def _trait(
        self, node: TraitNode, profile: dict[str, Any], spec: SegmentSpec
    ) -> bool:
        operator = node.operator()
        if operator == "contains":
            assert node.contains is not None
            traits = profile.get("traits") or {}
            return _contains(traits.get("conditions"), node.contains)
        value = self._trait_value(node.trait, profile, spec)
        wanted = node.operator_value()
        if operator == "exists":
            return (value is not None) == wanted
        if value is None:
            return False
        tests: dict[str, Callable[[], bool]] = {
            "equals": lambda: value == wanted,
            "not_equals": lambda: value != wanted,
            "in": lambda: value in wanted,
            "not_in": lambda: value not in wanted,
            "lt": lambda: value < wanted,
            "lte": lambda: value <= wanted,
            "gt": lambda: value > wanted,
            "gte": lambda: value >= wanted,
            "between": lambda: wanted[0] <= value <= wanted[1],
        }
        return tests[operator]()

    # -- events -------------------------------------------------------------------

    def _matching(
        self, node: EventNode | FollowNode, events: list[Event]
    ) -> list[Event]:
        found = []
        for item in events:
            if item.type != node.event:
                continue
            if all(
                _property_matches(item, key, want) for key, want in node.where.items()
            ):
                found.append(item)
        return found

    def _event(self, node: EventNode, events: list[Event]) -> bool:
        candidates = self._matching(node, events)
        if node.not_within is not None:
            since = self.run_end - window_delta(node.not_within)
            if any(item.occurred_at >= since for item in candidates):
                return False
            if not (node.within or node.older_than or node.count or node.pair()):
                return True

        if node.within is not None:
            since = self.run_end - window_delta(node.within)
            candidates = [item for item in candidates if item.occurred_at >= since]
        if node.older_than is not None:
            before = self.run_end - window_delta(node.older_than)
            candidates = [item for item in candidates if item.occurred_at < before]

        if node.count is not None:
            return _count_ok(len(candidates), node.count.model_dump(exclude_unset=True))
        pair = node.pair()
        if pair is None:
            return bool(candidates)
        followers = self._matching(pair, events)
        return any(
            self._pair_holds(node, pair, first, followers) for first in candidates
        )

    def _pair_holds(
        self, node: EventNode, pair: FollowNode, first: Event, followers: list[Event]
    ) -> bool:
        limit = window_delta(pair.within_after) if pair.within_after else None
        followed = False
        for second in followers:
            if second.occurred_at <= first.occurred_at:
                continue
            if limit is not None and second.occurred_at > first.occurred_at + limit:
                continue
            if all(_same_property(first, second, key) for key in pair.same):
                followed = True
                break
        if node.followed_by is not None:
            return followed
        if followed:
            return False
        return limit is None or first.occurred_at + limit <= self.run_end


def _declared_value(raw: Any, kind: str) -> Any:
    """Read a declared trait from JSON; a value of the wrong type is missing."""
    text = json_text(raw)
    if text is None:
        return None
    if kind == "text":
        return text
    if kind == "boolean":
        return {"true": True, "false": False}.get(text.lower())
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _contains(conditions: Any, match: Any) -> bool:
    if not isinstance(conditions, list):
        return False
    patterns = match.any_of or [match]
    return any(
        isinstance(entry, dict) and _code_matches(entry, pattern)
        for entry in conditions
        for pattern in patterns
    )


def _code_matches(entry: dict[str, Any], pattern: CodeMatch) -> bool:
    if pattern.display is not None:
        display = json_text(entry.get("display"))
        return display is not None and display.lower() == pattern.display.lower()
    if json_text(entry.get("code")) != pattern.code:
        return False
    return pattern.system is None or json_text(entry.get("system")) == pattern.system


def _property_matches(item: Event, key: str, want: Any) -> bool:
    found = json_text(item.properties.get(key))
    wanted = want if isinstance(want, list) else [want]
    return found is not None and found in [json_text(value) for value in wanted]


def _same_property(first: Event, second: Event, key: str) -> bool:
    left = json_text(first.properties.get(key))
    return left is not None and left == json_text(second.properties.get(key))


def _count_ok(total: int, bounds: dict[str, int]) -> bool:
    tests = {
        "equals": total.__eq__,
        "gte": total.__ge__,
        "gt": total.__gt__,
        "lte": total.__le__,
        "lt": total.__lt__,
    }
    return all(tests[key](value) for key, value in bounds.items())
