"""The pydantic model of one segment spec file.

The model checks the shape of a spec: which keys a node may have, which
types their values take, that lists are not empty and that each comparison
names exactly one operator. Checks that need the vocabulary or the other
specs (trait names, event types, property names, value types per trait,
``in_segment`` references) run afterwards in ``checks.py``, where the key
path is known.

Every structural error raised here is a ``PydanticCustomError`` whose
context carries ``expected`` and ``found`` text, so ``validation.py`` can
turn it into a ``SegmentSpecError`` without guessing.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from carepost.core.states import SegmentKind
from carepost.segments.vocabulary import (
    NAME_PATTERN,
    WINDOW_PATTERN,
    WINDOW_UNITS,
    TraitType,
)
from carepost.segments.yamlsource import describe_value
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

Scalar = StrictStr | StrictInt | StrictFloat | StrictBool | date


def spec_error(expected: str, found: str, suggestion: str | None = None) -> Exception:
    """Build the pydantic error that ``validation.py`` reads back."""
    context = {"expected": expected, "found": found, "suggestion": suggestion}
    return PydanticCustomError("segment_spec", "expected {expected}", context)


def _check_window(value: Any) -> str:
    if isinstance(value, str) and WINDOW_PATTERN.match(value):
        return value
    units = ", ".join(WINDOW_UNITS)
    raise spec_error(
        f"a window: a whole number and a unit ({units}), such as 14d or 12mo",
        describe_value(value),
    )


Window = Annotated[
    str,
    BeforeValidator(_check_window),
    WithJsonSchema({"type": "string", "pattern": WINDOW_PATTERN.pattern}),
]


def _check_name(value: Any) -> str:
    if isinstance(value, str) and NAME_PATTERN.match(value):
        return value
    raise spec_error(
        "a name of lower-case letters, digits and underscores",
        describe_value(value),
    )


Name = Annotated[
    str,
    BeforeValidator(_check_name),
    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN.pattern}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def given(self) -> list[str]:
        """Return the keys the YAML spelled out, by their YAML names."""
        names = []
        for name in self.model_fields_set:
            alias = type(self).model_fields[name].alias
            names.append(alias or name)
        return sorted(names)


# --- trait comparisons ------------------------------------------------------


class CodeMatch(_Strict):
    """One pattern for an entry of ``traits.conditions``."""

    code: StrictStr | None = None
    system: StrictStr | None = None
    display: StrictStr | None = None

    @model_validator(mode="after")
    def _code_or_display(self) -> CodeMatch:
        if (self.code is None) == (self.display is None):
            raise spec_error("exactly one of code or display", _keys(self))
        if self.system is not None and self.code is None:
            raise spec_error("system only together with code", _keys(self))
        return self


class ConditionMatch(CodeMatch):
    """A ``contains`` pattern: one CodeMatch, or ``any_of`` several."""

    any_of: list[CodeMatch] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _code_or_display(self) -> ConditionMatch:
        if self.any_of is None:
            CodeMatch._code_or_display(self)
        elif self.model_fields_set - {"any_of"}:
            raise spec_error("any_of on its own", _keys(self))
        return self


COMPARISON_OPERATORS = (
    "equals",
    "not_equals",
    "in",
    "not_in",
    "lt",
    "lte",
    "gt",
    "gte",
    "between",
    "exists",
    "contains",
)


class TraitNode(_Strict):
    """A comparison of one trait, with exactly one operator."""

    trait: StrictStr
    equals: Scalar | None = None
    not_equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in", min_length=1)
    not_in: list[Scalar] | None = Field(default=None, min_length=1)
    lt: Scalar | None = None
    lte: Scalar | None = None
    gt: Scalar | None = None
    gte: Scalar | None = None
    between: tuple[Scalar, Scalar] | None = None
    exists: StrictBool | None = None
    contains: ConditionMatch | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> TraitNode:
        operators = [key for key in self.given() if key != "trait"]
        if len(operators) != 1:
            raise spec_error(
                "exactly one operator: " + ", ".join(COMPARISON_OPERATORS),
                ", ".join(operators) or "no operator",
            )
        if self.operator_value() is None:
            raise spec_error("a value after " + operators[0], "nothing (null)")
        return self

    def operator(self) -> str:
        """Return the YAML name of the single operator."""
        return next(key for key in self.given() if key != "trait")

    def operator_value(self) -> Any:
        """Return the value given to the operator."""
        name = self.operator()
        return getattr(self, "in_" if name == "in" else name)


# --- event conditions -------------------------------------------------------

PropertyValue = Scalar | list[Scalar]


class CountFilter(_Strict):
    """Bounds on how many matching events a profile has."""

    equals: StrictInt | None = Field(default=None, ge=0)
    gte: StrictInt | None = Field(default=None, ge=0)
    gt: StrictInt | None = Field(default=None, ge=0)
    lte: StrictInt | None = Field(default=None, ge=0)
    lt: StrictInt | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _some_bound(self) -> CountFilter:
        if not self.model_fields_set:
            raise spec_error("at least one of equals, gte, gt, lte, lt", "none")
        return self


class FollowNode(_Strict):
    """The second event of an ordered pair."""

    event: StrictStr
    where: dict[str, PropertyValue] = Field(default_factory=dict)
    within_after: Window | None = None
    same: list[StrictStr] = Field(default_factory=list)


class EventNode(_Strict):
    """A condition on a profile's events before the run date."""

    event: StrictStr
    where: dict[str, PropertyValue] = Field(default_factory=dict)
    within: Window | None = None
    older_than: Window | None = None
    not_within: Window | None = None
    count: CountFilter | None = None
    followed_by: FollowNode | None = None
    not_followed_by: FollowNode | None = None

    @model_validator(mode="after")
    def _compatible_keys(self) -> EventNode:
        if self.followed_by is not None and self.not_followed_by is not None:
            raise spec_error("followed_by or not_followed_by, not both", "both")
        if self.count is not None and self.pair() is not None:
            raise spec_error(
                "count without followed_by or not_followed_by",
                "count together with an ordered pair",
            )
        return self

    def pair(self) -> FollowNode | None:
        """Return the second event of an ordered pair, if any."""
        return self.followed_by or self.not_followed_by


# --- boolean tree -----------------------------------------------------------


class AllNode(_Strict):
    all: list[Node] = Field(min_length=1)


class AnyNode(_Strict):
    any: list[Node] = Field(min_length=1)


class NotNode(_Strict):
    not_: Node = Field(alias="not")


class InSegmentNode(_Strict):
    """Membership of another segment, or of one stage of a lifecycle."""

    in_segment: Name
    stage: Name | None = None


NODE_TYPES: dict[str, type[_Strict]] = {
    "all": AllNode,
    "any": AnyNode,
    "not": NotNode,
    "trait": TraitNode,
    "event": EventNode,
    "in_segment": InSegmentNode,
}


def node_tag(value: Any) -> str | None:
    """Pick the node type from the first key that names one."""
    if isinstance(value, dict):
        return next((key for key in NODE_TYPES if key in value), None)
    for key, model in NODE_TYPES.items():
        if isinstance(value, model):
            return key
    return None


Node = Annotated[
    Annotated[AllNode, Tag("all")]
    | Annotated[AnyNode, Tag("any")]
    | Annotated[NotNode, Tag("not")]
    | Annotated[TraitNode, Tag("trait")]
    | Annotated[EventNode, Tag("event")]
    | Annotated[InSegmentNode, Tag("in_segment")],
    Discriminator(
        node_tag,
        custom_error_type="segment_node",
        custom_error_message="expected a condition",
    ),
]


# --- the file ---------------------------------------------------------------


class Stage(_Strict):
    """One lifecycle stage; a profile sits in the first stage it matches."""

    name: Name
    description: StrictStr = ""
    where: Node


class SegmentSpec(_Strict):
    """One segment file. The file name, not a key, is the segment's name."""

    kind: SegmentKind
    description: StrictStr = Field(min_length=1)
    traits: dict[Name, TraitType] = Field(default_factory=dict)
    where: Node | None = None
    stages: list[Stage] | None = Field(default=None, min_length=1)
    exclude: Node | None = None

    @model_validator(mode="after")
    def _shape_for_kind(self) -> SegmentSpec:
        if self.kind is SegmentKind.LIFECYCLE:
            if self.stages is None or self.where is not None:
                raise spec_error(
                    "a lifecycle with stages and no top-level where", _keys(self)
                )
            names = [stage.name for stage in self.stages]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise spec_error(
                    "unique stage names", "repeated " + ", ".join(duplicates)
                )
        elif self.where is None or self.stages is not None:
            raise spec_error(f"a {self.kind} with where and no stages", _keys(self))
        return self


def _keys(model: _Strict) -> str:
    return "keys " + ", ".join(model.given()) if model.given() else "no keys"


for _model in (AllNode, AnyNode, NotNode, Stage, SegmentSpec):
    _model.model_rebuild()
