"""Validation errors: each names file:line:column, the key path and a fix."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from carepost.core.errors import CarepostError
from carepost.segments import SegmentSpecError

if TYPE_CHECKING:
    from conftest import SegmentWorld

HEAD = "kind: condition\ndescription: probe\n"


def load_error(world: SegmentWorld, text: str, name: str = "probe") -> SegmentSpecError:
    world.write(name, text)
    with pytest.raises(SegmentSpecError) as caught:
        world.library()
    return caught.value


def test_unknown_key_suggestion(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where:\n  trait: age\n  eqals: 18\n")
    assert (error.line, error.column) == (5, 3)
    assert error.key_path == "where.eqals"
    assert error.found == "unknown key 'eqals'"
    assert error.suggestion == "equals"
    assert str(error).endswith(
        "probe.yaml:5:3: where.eqals: expected one of trait, equals, not_equals, "
        "in, not_in, lt, lte, gt, gte, between, exists, contains, found unknown "
        "key 'eqals' (did you mean equals?)"
    )


def test_error_is_carepost_error(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where:\n  trait: age\n  eqals: 18\n")
    assert isinstance(error, CarepostError)
    assert Path(error.file).name == "probe.yaml"


def test_nested_unknown_key(world: SegmentWorld) -> None:
    text = HEAD + (
        "where:\n  all:\n    - any:\n        - trait: conditions\n"
        "          contains: {code: '1', sytem: x}\n"
    )
    error = load_error(world, text)
    assert error.key_path == "where.all[0].any[0].contains.sytem"
    assert (error.line, error.column) == (7, 33)
    assert error.suggestion == "system"


def test_unknown_node_key(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where:\n  trai: age\n")
    assert (error.line, error.key_path, error.suggestion) == (4, "where.trai", "trait")


def test_unknown_top_key_first(world: SegmentWorld) -> None:
    error = load_error(
        world, "kind: condition\ndescripton: x\nwhere: {trait: age, gte: 1}\n"
    )
    assert (error.line, error.key_path) == (2, "descripton")
    assert error.suggestion == "description"


def test_wrong_value_type(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where:\n  trait: age\n  gte: [18]\n")
    assert (error.line, error.column, error.key_path) == (5, 8, "where.gte")
    assert error.found == "a list"
    assert error.expected.startswith("one value: text, a number")


def test_value_type_for_trait(world: SegmentWorld) -> None:
    error = load_error(
        world, HEAD + "where:\n  trait: consent_marketing\n  equals: 'yes'\n"
    )
    assert (error.line, error.key_path) == (5, "where.equals")
    assert error.expected == "true or false for trait 'consent_marketing'"


def test_unquoted_number_for_text(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where: {trait: postal_code, equals: 12345}\n")
    assert error.found == "number 12345"


def test_empty_any(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where:\n  any: []\n")
    assert (error.line, error.key_path) == (4, "where.any")
    assert error.found == "an empty list"


def test_unknown_event_type(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where:\n  event: appointment_noshow\n")
    assert (error.line, error.column, error.key_path) == (4, 10, "where.event")
    assert error.suggestion == "appointment_no_show"


def test_unknown_event_property(world: SegmentWorld) -> None:
    error = load_error(
        world, HEAD + "where:\n  event: encounter\n  where: {clas: wellness}\n"
    )
    assert (error.line, error.key_path, error.suggestion) == (
        5,
        "where.where.clas",
        "class",
    )


@pytest.mark.parametrize("window", ["14", "14 days", "0d", "1.5d", "14D"])
def test_window_needs_unit(world: SegmentWorld, window: str) -> None:
    error = load_error(
        world, HEAD + f"where:\n  event: encounter\n  within: {window}\n"
    )
    assert (error.line, error.key_path) == (5, "where.within")
    assert "a whole number and a unit" in error.expected


def test_missing_referenced_segment(world: SegmentWorld) -> None:
    world.write("diabetes", HEAD + "where: {trait: age, gte: 18}\n")
    error = load_error(world, HEAD + "where:\n  all:\n    - in_segment: diabetis\n")
    assert (error.line, error.key_path) == (5, "where.all[0].in_segment")
    assert error.suggestion == "diabetes"


def test_missing_referenced_stage(world: SegmentWorld) -> None:
    world.write(
        "life",
        "kind: lifecycle\ndescription: x\nstages:\n"
        "  - {name: new, where: {trait: age, gte: 1}}\n",
    )
    error = load_error(world, HEAD + "where: {in_segment: life, stage: neww}\n")
    assert (error.line, error.key_path, error.suggestion) == (3, "where.stage", "new")


def test_in_segment_cycle(world: SegmentWorld) -> None:
    world.write("first", HEAD + "where: {in_segment: second}\n")
    error = load_error(
        world, HEAD + "where:\n  not:\n    in_segment: first\n", name="second"
    )
    assert "cycle" in error.found
    assert "first -> second -> first" in error.found
    assert error.key_path.endswith("in_segment")


def test_in_segment_self_cycle(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where: {in_segment: probe}\n")
    assert error.found == "cycle probe -> probe"


def test_duplicate_key(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where:\n  trait: age\n  gte: 18\n  gte: 21\n")
    assert (error.line, error.column, error.key_path) == (6, 3, "where.gte")
    assert error.found == "duplicate key 'gte'"


def test_two_operators(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where: {trait: age, gte: 1, lte: 3}\n")
    assert error.key_path == "where"
    assert error.found == "gte, lte"


def test_misspelt_kind(world: SegmentWorld) -> None:
    error = load_error(
        world, "kind: lifecylce\ndescription: x\nwhere: {trait: age, gte: 1}\n"
    )
    assert (error.line, error.key_path, error.suggestion) == (1, "kind", "lifecycle")


def test_lifecycle_needs_stages(world: SegmentWorld) -> None:
    error = load_error(
        world, "kind: lifecycle\ndescription: x\nwhere: {trait: age, gte: 1}\n"
    )
    assert "stages" in error.expected


def test_duplicate_stage_names(world: SegmentWorld) -> None:
    text = (
        "kind: lifecycle\ndescription: x\nstages:\n"
        "  - {name: a, where: {trait: age, gte: 1}}\n"
        "  - {name: a, where: {trait: age, gte: 2}}\n"
    )
    assert load_error(world, text).found == "repeated a"


def test_behaviour_needs_event(world: SegmentWorld) -> None:
    error = load_error(
        world, "kind: behaviour\ndescription: x\nwhere: {trait: age, gte: 1}\n"
    )
    assert "event" in error.expected


def test_ordering_on_text_trait(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where: {trait: state, gt: CA}\n")
    assert error.key_path == "where.gt"


def test_conditions_need_contains(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where: {trait: conditions, equals: x}\n")
    assert error.key_path == "where.equals"


def test_yaml_syntax_error(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where: [x\n")
    assert error.expected == "valid YAML"
    assert error.line >= 3


def test_invalid_file_name(world: SegmentWorld) -> None:
    error = load_error(world, HEAD + "where: {trait: age, gte: 1}\n", name="Bad-Name")
    assert "file name" in error.expected
