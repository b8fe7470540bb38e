"""SegmentLibrary: lifecycles, in_segment, the shipped specs and the API."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import carepost.segments
import pytest
from carepost.segments import SegmentLibrary, UnknownSegmentError
from carepost.segments.schema_file import SCHEMA_PATH, render_schema

if TYPE_CHECKING:
    from conftest import SegmentWorld

SHIPPED = Path(carepost.segments.__file__).with_name("library")

LIFECYCLE = """
kind: lifecycle
description: probe
stages:
  - name: vip
    where: {trait: state, equals: CA}
  - name: speaks_spanish
    description: Second, so a Spanish speaker in CA is a vip.
    where: {trait: language, equals: es}
  - name: anyone_consenting
    where: {trait: consent_marketing, equals: true}
"""


@pytest.fixture
def staged(world: SegmentWorld) -> SegmentWorld:
    world.profile("ca_es", state="CA", language="es")
    world.profile("ny_es", state="NY", language="es")
    world.profile("ny_en", state="NY", language="en")
    world.profile("no_stage", state="NY", language="en", consent_marketing=False)
    world.write("life", LIFECYCLE)
    return world


def test_lifecycle_first_match(staged: SegmentWorld) -> None:
    library = staged.library()
    rows = staged.conn.execute(
        library.compile("life").sql, library.compile("life").bind(date(2024, 6, 15))
    )
    assert dict(rows.fetchall()) == {
        "ca_es": "vip",
        "ny_es": "speaks_spanish",
        "ny_en": "anyone_consenting",
    }


def test_lifecycle_select_stage(staged: SegmentWorld) -> None:
    library = staged.library()
    as_of = date(2024, 6, 15)
    assert library.select(staged.conn, "life", as_of=as_of, stage="vip") == ["ca_es"]
    assert library.select(staged.conn, "life", as_of=as_of, stage="speaks_spanish") == [
        "ny_es"
    ]
    assert library.select(staged.conn, "life", as_of=as_of) == [
        "ca_es",
        "ny_en",
        "ny_es",
    ]


def test_lifecycle_stage_counts(staged: SegmentWorld) -> None:
    staged.write("extra", LIFECYCLE.replace("equals: CA", "equals: TX"))
    counts = staged.library().stage_counts(
        staged.conn, "extra", as_of=date(2024, 6, 15)
    )
    assert counts == {"vip": 0, "speaks_spanish": 2, "anyone_consenting": 1}


def test_unknown_stage_rejected(staged: SegmentWorld) -> None:
    with pytest.raises(UnknownSegmentError, match="no stage 'vipp'"):
        staged.library().compile("life", stage="vipp")


def test_stage_counts_needs_lifecycle(staged: SegmentWorld) -> None:
    staged.write(
        "flat", "kind: condition\ndescription: x\nwhere: {trait: state, equals: CA}\n"
    )
    with pytest.raises(UnknownSegmentError, match="not a lifecycle"):
        staged.library().stage_counts(staged.conn, "flat", as_of=date(2024, 6, 15))


def test_in_segment_plain_and_stage(staged: SegmentWorld) -> None:
    staged.write(
        "californians",
        "kind: condition\ndescription: x\nwhere: {trait: state, equals: CA}\n",
    )
    outside = """
        kind: condition
        description: probe
        where:
          all:
            - not: {in_segment: californians}
            - in_segment: life
              stage: speaks_spanish
        """
    assert staged.select(outside) == ["ny_es"]
    either = "kind: condition\ndescription: x\nwhere: {in_segment: life}\n"
    assert staged.select(either, name="staged_any") == ["ca_es", "ny_en", "ny_es"]


def test_in_segment_keeps_exclude(staged: SegmentWorld) -> None:
    staged.write(
        "consenting",
        """
        kind: condition
        description: x
        where: {trait: consent_marketing, equals: true}
        exclude: {trait: language, equals: en}
        """,
    )
    assert staged.select(
        "kind: condition\ndescription: x\nwhere: {in_segment: consenting}\n"
    ) == ["ca_es", "ny_es"]


def test_in_segment_declared_traits(world: SegmentWorld) -> None:
    world.profile("gold", traits={"tier": "gold"})
    world.profile("plain", traits={})
    world.write(
        "gold_tier",
        """
        kind: condition
        description: x
        traits: {tier: text}
        where: {trait: tier, equals: gold}
        """,
    )
    assert world.select(
        "kind: condition\ndescription: x\nwhere: {in_segment: gold_tier}\n"
    ) == ["gold"]


def test_select_rejects_datetime(staged: SegmentWorld) -> None:
    from datetime import datetime

    with pytest.raises(TypeError, match="datetime.date"):
        staged.library().select(staged.conn, "life", as_of=datetime(2024, 6, 15))


def test_unknown_segment_suggests(staged: SegmentWorld) -> None:
    with pytest.raises(UnknownSegmentError, match="did you mean life"):
        staged.library().get("lief")


def test_compiled_sql_has_only_placeholders(staged: SegmentWorld) -> None:
    compiled = staged.library().compile("life")
    assert "'CA'" not in compiled.sql
    assert "vip" not in compiled.sql
    placeholders = set(re.findall(r"\$(\w+)", compiled.sql))
    assert placeholders == set(compiled.params) | {"as_of"}


def test_shipped_specs_validate_and_compile() -> None:
    library = SegmentLibrary(SHIPPED)
    assert library.names() == [
        "diabetes_prediabetes_adults",
        "missed_appointment",
        "patient_lifecycle",
    ]
    assert "checkup_due" in library.stages("patient_lifecycle")
    for name in library.names():
        assert library.compile(name).sql.startswith("SELECT")
    assert library.compile("patient_lifecycle", "checkup_due").sql


def test_shipped_specs_start_with_schema() -> None:
    for path in sorted(SHIPPED.glob("*.yaml")):
        first_line = path.read_text(encoding="utf-8").splitlines()[0]
        assert first_line == "# yaml-language-server: $schema=../schema.json", path


def test_shipped_diabetes_segment(world: SegmentWorld) -> None:
    snomed = "http://snomed.info/sct"
    diabetes = [{"system": snomed, "code": "44054006", "display": "Diabetes"}]
    prediabetes = [{"system": snomed, "code": "15777000", "display": "Prediabetes"}]
    world.profile(
        "adult_dm", birth_date=date(1970, 1, 1), traits={"conditions": diabetes}
    )
    world.profile(
        "adult_pre", birth_date=date(1970, 1, 1), traits={"conditions": prediabetes}
    )
    world.profile(
        "child_dm", birth_date=date(2010, 1, 1), traits={"conditions": diabetes}
    )
    world.profile(
        "no_consent",
        birth_date=date(1970, 1, 1),
        consent_marketing=False,
        traits={"conditions": diabetes},
    )
    world.profile("healthy", birth_date=date(1970, 1, 1), traits={"conditions": []})
    ids = SegmentLibrary(SHIPPED).select(
        world.conn, "diabetes_prediabetes_adults", as_of=date(2024, 6, 15)
    )
    assert ids == ["adult_dm", "adult_pre"]


def test_shipped_lifecycle(world: SegmentWorld) -> None:
    encounters = {
        "new": [("2024-05-01", "ambulatory")],
        "lapsed": [("2022-01-01", "wellness")],
        "due": [("2023-01-01", "wellness"), ("2024-02-01", "ambulatory")],
        "active": [("2023-01-01", "ambulatory"), ("2024-01-01", "wellness")],
    }
    for profile_id, visits in encounters.items():
        world.profile(profile_id)
        for day, visit_class in visits:
            world.event(
                profile_id, "encounter", f"{day} 09:00:00", **{"class": visit_class}
            )
    world.profile("no_encounters")
    library = SegmentLibrary(SHIPPED)
    as_of = date(2024, 6, 15)
    assert library.select(
        world.conn, "patient_lifecycle", as_of=as_of, stage="checkup_due"
    ) == ["due"]
    assert library.stage_counts(world.conn, "patient_lifecycle", as_of=as_of) == {
        "new_patient": 1,
        "re_engagement": 1,
        "checkup_due": 1,
        "active_care": 1,
    }


def test_schema_file_is_current() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_schema()
    assert json.loads(render_schema())["additionalProperties"] is False


def test_public_api() -> None:
    assert sorted(carepost.segments.__all__) == [
        "CompiledSegment",
        "LoadedFolder",
        "RecipientRules",
        "RecipientSelection",
        "SegmentLibrary",
        "SegmentSpec",
        "SegmentSpecError",
        "UnknownSegmentError",
        "load_folder",
    ]
    for name in carepost.segments.__all__:
        assert hasattr(carepost.segments, name)


def test_exclude_removes_matches(staged: SegmentWorld) -> None:
    spec = """
        kind: condition
        description: probe
        where: {trait: consent_marketing, equals: true}
        exclude:
          any:
            - {trait: state, equals: CA}
            - {trait: language, equals: en}
        """
    assert staged.select(spec) == ["ny_es"]


def test_lifecycle_exclude_applies_to_stages(staged: SegmentWorld) -> None:
    staged.write("life_no_ca", LIFECYCLE + "exclude: {trait: state, equals: CA}\n")
    counts = staged.library().stage_counts(
        staged.conn, "life_no_ca", as_of=date(2024, 6, 15)
    )
    assert counts == {"vip": 0, "speaks_spanish": 1, "anyone_consenting": 1}
