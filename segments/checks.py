"""Checks of one validated spec against the vocabulary.

The pydantic model has already checked the shape. This pass walks the
tree with its key path and checks the names (traits, event types, event
properties), that each comparison value suits its trait, and collects the
``in_segment`` references, which the library resolves across files.
Each problem is recorded and the walk goes on, so one pass reports every
problem of a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from carepost.core.schema import EVENT_TYPES, PROFILE_COLUMNS
from carepost.core.states import SegmentKind
from carepost.segments.errors import SegmentSpecError
from carepost.segments.spec import (
    AllNode,
    AnyNode,
    EventNode,
    FollowNode,
    InSegmentNode,
    Node,
    NotNode,
    SegmentSpec,
    TraitNode,
)
from carepost.segments.vocabulary import (
    AGE_TRAIT,
    BUILT_IN_TRAITS,
    CONDITIONS_TRAIT,
    NAME_PATTERN,
    PROFILE_TRAITS,
    TraitType,
    properties_for,
    suggest,
)
from carepost.segments.yamlsource import KeyPath, SourceMap, describe_value

ORDERING_OPERATORS = frozenset({"lt", "lte", "gt", "gte", "between"})
_TYPE_WORDS = {
    TraitType.TEXT: "text",
    TraitType.NUMBER: "a number",
    TraitType.BOOLEAN: "true or false",
    TraitType.DATE: "a date such as 2024-01-31",
}


@dataclass(frozen=True)
class Reference:
    """One ``in_segment`` node and where it sits in its file."""

    segment: str
    stage: str | None
    path: KeyPath


def check_spec(spec: SegmentSpec, source: SourceMap) -> list[Reference]:
    """Check names and values in one spec; return its in_segment references.

    Raises the first problem; ``spec_check_problems`` returns all of them.
    """
    references, problems = spec_check_problems(spec, source)
    if problems:
        raise problems[0]
    return references


def spec_check_problems(
    spec: SegmentSpec, source: SourceMap
) -> tuple[list[Reference], list[SegmentSpecError]]:
    """Check names and values in one spec; return its references and problems."""
    checker = _Checker(spec, source)
    checker.check_declared_traits()
    for path, node in roots(spec):
        checker.walk(node, path)
    if spec.kind is SegmentKind.BEHAVIOUR and not checker.saw_event:
        checker.problems.append(
            source.error(
                ("where",),
                "at least one event condition in a behaviour segment",
                "only trait conditions",
            )
        )
    return checker.references, checker.problems


def roots(spec: SegmentSpec) -> list[tuple[KeyPath, Node]]:
    """Return every top-level condition tree of a spec with its key path."""
    found: list[tuple[KeyPath, Node]] = []
    if spec.where is not None:
        found.append((("where",), spec.where))
    for index, stage in enumerate(spec.stages or []):
        found.append((("stages", index, "where"), stage.where))
    if spec.exclude is not None:
        found.append((("exclude",), spec.exclude))
    return found


class _Checker:
    def __init__(self, spec: SegmentSpec, source: SourceMap) -> None:
        self.spec = spec
        self.source = source
        self.references: list[Reference] = []
        self.problems: list[SegmentSpecError] = []
        self.saw_event = False

    def report(
        self,
        path: KeyPath,
        expected: str,
        found: str,
        suggestion: str | None = None,
        *,
        of_key: bool = False,
    ) -> None:
        self.problems.append(
            self.source.error(path, expected, found, suggestion, of_key=of_key)
        )

    def check_declared_traits(self) -> None:
        for name in self.spec.traits:
            if name in BUILT_IN_TRAITS or name in PROFILE_COLUMNS:
                self.report(
                    ("traits", name),
                    "a name that is not a built-in trait",
                    f"'{name}'",
                    of_key=True,
                )

    def walk(self, node: Node, path: KeyPath) -> None:
        if isinstance(node, AllNode | AnyNode):
            key = "all" if isinstance(node, AllNode) else "any"
            for index, child in enumerate(getattr(node, key)):
                self.walk(child, (*path, key, index))
        elif isinstance(node, NotNode):
            self.walk(node.not_, (*path, "not"))
        elif isinstance(node, TraitNode):
            self.check_trait(node, path)
        elif isinstance(node, EventNode):
            self.saw_event = True
            self.check_event(node, path)
        elif isinstance(node, InSegmentNode):
            self.references.append(Reference(node.in_segment, node.stage, path))

    def trait_type(self, name: str) -> TraitType | None:
        if name == AGE_TRAIT:
            return TraitType.NUMBER
        return PROFILE_TRAITS.get(name) or self.spec.traits.get(name)

    def check_trait(self, node: TraitNode, path: KeyPath) -> None:
        known = sorted(BUILT_IN_TRAITS | set(self.spec.traits))
        if node.trait not in known:
            self.report(
                (*path, "trait"),
                "a known trait or one declared under traits",
                f"'{node.trait}'",
                suggest(node.trait, known),
            )
            return

        operator = node.operator()
        if (node.trait == CONDITIONS_TRAIT) != (operator == "contains"):
            self.report(
                (*path, operator),
                "contains with trait conditions, and conditions only with contains",
                f"{operator} on '{node.trait}'",
            )
            return
        if operator in ("contains", "exists"):
            return

        trait_type = self.trait_type(node.trait)
        assert trait_type is not None
        if operator in ORDERING_OPERATORS and trait_type in (
            TraitType.TEXT,
            TraitType.BOOLEAN,
        ):
            self.report(
                (*path, operator),
                f"equals, not_equals, in or not_in for the "
                f"{trait_type} trait '{node.trait}'",
                operator,
            )
            return
        self.check_values(node, operator, trait_type, path)

    def check_values(
        self, node: TraitNode, operator: str, trait_type: TraitType, path: KeyPath
    ) -> None:
        value = node.operator_value()
        values = list(value) if isinstance(value, list | tuple) else [value]
        all_fit = True
        for index, item in enumerate(values):
            if not _fits(item, trait_type):
                all_fit = False
                listed = isinstance(value, list | tuple)
                at = (*path, operator, index) if listed else (*path, operator)
                self.report(
                    at,
                    f"{_TYPE_WORDS[trait_type]} for trait '{node.trait}'",
                    describe_value(item),
                )
        if all_fit and operator == "between" and values[0] > values[1]:
            self.report(
                (*path, "between"), "the smaller bound first", "a larger bound first"
            )

    def check_event(self, node: EventNode | FollowNode, path: KeyPath) -> None:
        if node.event not in EVENT_TYPES:
            self.report(
                (*path, "event"),
                "a known event type",
                f"'{node.event}'",
                suggest(node.event, EVENT_TYPES),
            )
        for name, value in node.where.items():
            self.check_property(node.event, name, (*path, "where", name))
            self.check_property_value(value, (*path, "where", name))

        if isinstance(node, EventNode) and node.pair() is not None:
            key = "followed_by" if node.followed_by else "not_followed_by"
            pair = node.pair()
            assert pair is not None
            self.check_event(pair, (*path, key))
            for index, name in enumerate(pair.same):
                self.check_property(node.event, name, (*path, key, "same", index))
                self.check_property(pair.event, name, (*path, key, "same", index))

    def check_property(self, event_type: str, name: str, path: KeyPath) -> None:
        known = properties_for(event_type)
        if known is None and NAME_PATTERN.match(name):
            return
        if known is None or name not in known:
            self.report(
                path,
                f"a property of {event_type} events",
                f"'{name}'",
                suggest(name, known or []),
                of_key=isinstance(path[-1], str),
            )

    def check_property_value(self, value: Any, path: KeyPath) -> None:
        values = value if isinstance(value, list) else [value]
        if not values:
            self.report(path, "a value or a non-empty list", "an empty list")
        for item in values:
            if isinstance(item, float | date):
                self.report(
                    path, "text, a whole number or true/false", describe_value(item)
                )


def _fits(value: Any, trait_type: TraitType) -> bool:
    if trait_type is TraitType.TEXT:
        return isinstance(value, str)
    if trait_type is TraitType.BOOLEAN:
        return isinstance(value, bool)
    if trait_type is TraitType.NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, date) and not isinstance(value, datetime)
