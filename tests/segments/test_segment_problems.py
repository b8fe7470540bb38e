"""Folder validation: every problem of every file, not only the first."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from carepost.segments import SegmentSpecError, load_folder

if TYPE_CHECKING:
    from .conftest import SegmentWorld

HEAD = "kind: condition\ndescription: probe\n"


def problems(world: SegmentWorld) -> list[SegmentSpecError]:
    return load_folder(world.folder).problems


def test_valid_folder_has_none(world: SegmentWorld) -> None:
    world.write("adults", HEAD + "where: {trait: age, gte: 18}\n")
    loaded = load_folder(world.folder)
    assert loaded.problems == []
    assert sorted(loaded.specs) == ["adults"]


def test_all_problems_in_one_file(world: SegmentWorld) -> None:
    world.write(
        "probe",
        HEAD
        + "where:\n  all:\n"
        + "    - {trait: agee, gte: 18}\n"
        + "    - {event: appointment_noshow}\n"
        + "    - {trait: state, gt: CA}\n",
    )
    found = problems(world)
    assert [problem.key_path for problem in found] == [
        "where.all[0].trait",
        "where.all[1].event",
        "where.all[2].gt",
    ]
    assert [problem.suggestion for problem in found[:2]] == [
        "age",
        "appointment_no_show",
    ]
    assert [problem.line for problem in found] == [5, 6, 7]


def test_all_model_problems(world: SegmentWorld) -> None:
    world.write(
        "probe",
        HEAD
        + "where:\n  all:\n"
        + "    - {trait: age, eqals: 18}\n"
        + "    - {event: encounter, within: 14}\n"
        + "    - any: []\n",
    )
    found = problems(world)
    assert [problem.key_path for problem in found] == [
        "where.all[0].eqals",
        "where.all[1].within",
        "where.all[2].any",
    ]
    assert found[0].suggestion == "equals"


def test_every_duplicate_key(world: SegmentWorld) -> None:
    world.write(
        "probe",
        HEAD + "where:\n  trait: age\n  gte: 18\n  gte: 21\n  trait: sex\n",
    )
    found = problems(world)
    assert [problem.found for problem in found] == [
        "duplicate key 'gte'",
        "duplicate key 'trait'",
    ]
    assert [(problem.line, problem.column) for problem in found] == [(6, 3), (7, 3)]


def test_problems_across_files(world: SegmentWorld) -> None:
    world.write("first", HEAD + "where: {trait: sexx, equals: F}\n")
    world.write("second", HEAD + "where: {in_segment: thrid}\n")
    world.write("third", HEAD + "where: {trait: age, gte: 1}\n")
    found = problems(world)
    assert [Path(problem.file).stem for problem in found] == ["first", "second"]
    assert found[1].suggestion == "third"


def test_reference_to_invalid_file_not_missing(world: SegmentWorld) -> None:
    world.write("broken", HEAD + "where: {trait: nope, equals: x}\n")
    world.write("user", HEAD + "where: {in_segment: broken}\n")
    found = problems(world)
    assert [Path(problem.file).stem for problem in found] == ["broken"]


def test_cycle_reported_once(world: SegmentWorld) -> None:
    world.write("first", HEAD + "where: {in_segment: second}\n")
    world.write("second", HEAD + "where: {in_segment: first}\n")
    found = problems(world)
    assert len(found) == 1
    assert found[0].found == "cycle first -> second -> first"


def test_message_format(world: SegmentWorld) -> None:
    path = world.write(
        "probe", HEAD + "where:\n  trait: conditions\n  contians: {code: '1'}\n"
    )
    (problem,) = problems(world)
    assert str(problem) == (
        f"{path}:5:3: where.contians: expected one of trait, equals, not_equals, "
        "in, not_in, lt, lte, gt, gte, between, exists, contains, found unknown "
        "key 'contians' (did you mean contains?)"
    )


def test_library_raises_first(world: SegmentWorld) -> None:
    world.write(
        "probe",
        HEAD
        + "where:\n  all:\n"
        + "    - {trait: agee, gte: 1}\n"
        + "    - {trait: sexx, equals: F}\n",
    )
    with pytest.raises(SegmentSpecError) as caught:
        world.library()
    assert caught.value.key_path == "where.all[0].trait"


def test_syntax_error_stops_file_only(world: SegmentWorld) -> None:
    world.write("bad", HEAD + "where: [x\n")
    world.write("good", HEAD + "where: {trait: agee, gte: 1}\n")
    found = problems(world)
    assert found[0].expected == "valid YAML"
    assert Path(found[1].file).stem == "good"
