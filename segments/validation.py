"""Turn a pydantic ValidationError into a SegmentSpecError with file and line.

Pydantic reports where an error sits as a ``loc`` tuple. That tuple also
contains the union tags of the boolean tree (``where.all.all[0].trait...``)
and of scalar unions (``...equals.str``). ``resolve_loc`` walks the model's
type annotations along the ``loc`` to drop those tags. It also returns the
model or type at that spot, which the message names as the expected value.
"""

from __future__ import annotations

import types
from datetime import date
from enum import Enum
from typing import Annotated, Any, Union, get_args, get_origin

from carepost.segments.errors import SegmentSpecError
from carepost.segments.spec import NODE_TYPES, PropertyValue, Scalar, SegmentSpec
from carepost.segments.vocabulary import suggest
from carepost.segments.yamlsource import KeyPath, SourceMap, describe_value
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

NODE_KEYS_TEXT = "all, any, not, trait, event or in_segment"


def validate_spec(data: dict[str, Any], source: SourceMap) -> SegmentSpec:
    """Validate parsed YAML against the spec model, or raise SegmentSpecError."""
    spec, problems = spec_problems(data, source)
    if problems:
        raise problems[0]
    assert spec is not None
    return spec


def spec_problems(
    data: dict[str, Any], source: SourceMap
) -> tuple[SegmentSpec | None, list[SegmentSpecError]]:
    """Validate parsed YAML; return the spec, or None and every problem found."""
    try:
        return SegmentSpec.model_validate(data), []
    except ValidationError as exc:
        errors = exc.errors()

    # An unknown key often explains a "missing key" error next to it (a
    # misspelt ``descripton``), so unknown keys come first and a missing key
    # beside an unknown one is not reported twice.
    unknown = [error for error in errors if error["type"] == "extra_forbidden"]
    parents = {resolve_loc(error["loc"])[0][:-1] for error in unknown}
    rest = [
        error
        for error in errors
        if error["type"] != "extra_forbidden"
        and not (
            error["type"] == "missing"
            and resolve_loc(error["loc"])[0][:-1] in parents
        )
    ]
    problems: list[SegmentSpecError] = []
    for error in [*unknown, *rest]:
        problem = to_spec_error(error, data, source)
        if str(problem) not in {str(seen) for seen in problems}:
            problems.append(problem)
    return None, problems


def to_spec_error(
    error: ErrorDetails, data: dict[str, Any], source: SourceMap
) -> SegmentSpecError:
    """Describe one pydantic error in the words of the YAML file."""
    path, annotation = resolve_loc(error["loc"])
    kind = error["type"]
    context = error.get("ctx") or {}

    if kind == "extra_forbidden":
        allowed = _keys_of(resolve_loc(error["loc"][:-1])[1])
        key = str(path[-1])
        return source.error(
            path,
            "one of " + ", ".join(allowed),
            f"unknown key '{key}'",
            suggest(key, allowed),
            of_key=True,
        )
    if kind == "missing":
        return source.error(path[:-1], f"the key '{path[-1]}'", "no such key")

    found_value = _value_at(data, path)
    if kind == "segment_spec":
        return source.error(
            path, context["expected"], context["found"], context.get("suggestion")
        )
    if kind == "segment_node":
        return _node_error(path, found_value, source)
    if kind == "too_short":
        return source.error(path, "a list with at least one entry", "an empty list")
    return source.error(
        path,
        _expected_text(annotation, context),
        describe_value(found_value),
        _enum_suggestion(annotation, found_value),
    )


def resolve_loc(loc: tuple[int | str, ...]) -> tuple[KeyPath, Any]:
    """Return the YAML key path of a pydantic ``loc`` and the type found there."""
    annotation: Any = SegmentSpec
    path: list[str | int] = []
    for part in loc:
        annotation = _unwrap(annotation)
        if _is_node_union(annotation) and part in NODE_TYPES:
            annotation = NODE_TYPES[str(part)]
            continue
        next_annotation = _step(annotation, part)
        if next_annotation is _STOP:
            break
        path.append(part)
        annotation = next_annotation
    return tuple(path), _unwrap(annotation)


_STOP = object()


def _step(annotation: Any, part: int | str) -> Any:
    """Return the type one ``loc`` step below ``annotation``, or _STOP."""
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = {
            (info.alias or name): info for name, info in annotation.model_fields.items()
        }
        return fields[part].annotation if part in fields else None
    if origin is list and isinstance(part, int):
        return get_args(annotation)[0]
    if origin is tuple and isinstance(part, int):
        return get_args(annotation)[part]
    if origin is dict and isinstance(part, str):
        return get_args(annotation)[1]
    return _STOP


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``None`` from a type, keeping real unions."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return Union[tuple(members)]
            annotation = members[0]
        else:
            return annotation


def _is_node_union(annotation: Any) -> bool:
    if get_origin(annotation) not in (Union, types.UnionType):
        return False
    members = {_unwrap(arg) for arg in get_args(annotation)}
    return members == set(NODE_TYPES.values())


def _keys_of(annotation: Any) -> list[str]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [info.alias or name for name, info in annotation.model_fields.items()]
    return []


def _value_at(data: Any, path: KeyPath) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _node_error(path: KeyPath, value: Any, source: SourceMap) -> SegmentSpecError:
    expected = f"a condition starting with {NODE_KEYS_TEXT}"
    if not isinstance(value, dict) or not value:
        return source.error(path, expected, describe_value(value))
    first_key = str(next(iter(value)))
    return source.error(
        (*path, first_key),
        expected,
        f"unknown key '{first_key}'",
        suggest(first_key, NODE_TYPES),
        of_key=True,
    )


def _expected_text(annotation: Any, context: dict[str, Any]) -> str:
    """Describe the type expected at one spot, for a non-programmer."""
    if "ge" in context:
        return f"a whole number of at least {context['ge']}"
    if annotation == _unwrap(Scalar):
        return "one value: text, a number, true or false, or a date"
    if annotation == _unwrap(PropertyValue):
        return "one value or a list of values"
    if _is_node_union(annotation):
        return f"a condition starting with {NODE_KEYS_TEXT}"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of " + ", ".join(str(member.value) for member in annotation)
    simple = {
        str: "text",
        int: "a whole number",
        float: "a number",
        bool: "true or false",
        date: "a date such as 2024-01-31",
    }
    if annotation in simple:
        return simple[annotation]
    if _keys_of(annotation):
        return "a mapping with keys " + ", ".join(_keys_of(annotation))
    return {list: "a list", tuple: "a list of two values", dict: "a mapping"}.get(
        get_origin(annotation), "a valid value"
    )


def _enum_suggestion(annotation: Any, found: Any) -> str | None:
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        if isinstance(found, str):
            return suggest(found, [str(member.value) for member in annotation])
    return None
