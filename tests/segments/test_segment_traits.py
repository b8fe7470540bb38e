"""Trait comparisons, age, conditions and the deceased filter on real DuckDB."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import SegmentWorld


def trait_spec(trait: str, operator: str, value: str) -> str:
    return f"""
        kind: condition
        description: probe
        where:
          trait: {trait}
          {operator}: {value}
        """


@pytest.fixture
def people(world: SegmentWorld) -> SegmentWorld:
    world.profile("p1", sex="F", state="CA", language="en", birth_date=date(1980, 1, 1))
    world.profile(
        "p2",
        sex="M",
        state="NY",
        language="es",
        birth_date=date(2000, 6, 15),
        consent_marketing=False,
    )
    world.profile(
        "p3",
        sex=None,
        state=None,
        language=None,
        birth_date=None,
        consent_marketing=None,
    )
    return world


@pytest.mark.parametrize(
    ("trait", "operator", "value", "expected"),
    [
        ("sex", "equals", "F", ["p1"]),
        ("sex", "not_equals", "F", ["p2"]),
        ("state", "in", "[CA, TX]", ["p1"]),
        ("state", "not_in", "[CA, TX]", ["p2"]),
        ("consent_marketing", "equals", "true", ["p1"]),
        ("consent_marketing", "equals", "false", ["p2"]),
        ("birth_date", "lt", "1990-01-01", ["p1"]),
        ("birth_date", "lte", "2000-06-15", ["p1", "p2"]),
        ("birth_date", "gt", "2000-06-15", []),
        ("birth_date", "gte", "2000-06-15", ["p2"]),
        ("birth_date", "between", "[1980-01-01, 1980-12-31]", ["p1"]),
        ("language", "exists", "true", ["p1", "p2"]),
        ("language", "exists", "false", ["p3"]),
        ("age", "gte", "24", ["p1", "p2"]),
        ("age", "lt", "24", []),
        ("age", "between", "[30, 50]", ["p1"]),
        ("age", "equals", "24", ["p2"]),
    ],
)
def test_trait_operator(
    people: SegmentWorld, trait: str, operator: str, value: str, expected: list[str]
) -> None:
    assert people.select(trait_spec(trait, operator, value)) == expected


def test_null_trait_negated_comparison(people: SegmentWorld) -> None:
    spec = """
        kind: condition
        description: probe
        where:
          not:
            trait: sex
            equals: F
        """
    assert people.select(spec) == ["p2", "p3"]


@pytest.mark.parametrize(
    ("as_of", "expected_age"),
    [
        (date(2018, 2, 27), 17),
        (date(2018, 2, 28), 17),
        (date(2018, 3, 1), 18),
        (date(2020, 2, 28), 19),
        (date(2020, 2, 29), 20),
    ],
)
def test_age_leap_day(world: SegmentWorld, as_of: date, expected_age: int) -> None:
    world.profile("leap", birth_date=date(2000, 2, 29))
    spec = trait_spec("age", "equals", str(expected_age))
    assert world.select(spec, as_of=as_of) == ["leap"]


def test_age_before_birthday(world: SegmentWorld) -> None:
    world.profile("june", birth_date=date(2006, 6, 16))
    assert world.select(trait_spec("age", "gte", "18")) == []
    assert world.select(trait_spec("age", "gte", "18"), as_of=date(2024, 6, 16)) == [
        "june"
    ]


SNOMED = "http://snomed.info/sct"


@pytest.fixture
def patients(world: SegmentWorld) -> SegmentWorld:
    diabetes = {
        "system": SNOMED,
        "code": "44054006",
        "display": "Diabetes mellitus type 2",
        "onset": "2020-01-01",
    }
    prediabetes = {"system": SNOMED, "code": "15777000", "display": "Prediabetes"}
    other_system = {
        "system": "http://example.org/local",
        "code": "44054006",
        "display": "Local code",
    }
    world.profile("dm", traits={"conditions": [diabetes]})
    world.profile("pre", traits={"conditions": [prediabetes]})
    world.profile("local", traits={"conditions": [other_system]})
    world.profile("empty", traits={"conditions": []})
    world.profile("no_key", traits={"loyalty": "gold"})
    world.profile("null_traits", traits=None)
    world.profile("not_a_list", traits={"conditions": "diabetes"})
    return world


@pytest.mark.parametrize(
    ("contains", "expected"),
    [
        ('{code: "44054006"}', ["dm", "local"]),
        (f'{{code: "44054006", system: "{SNOMED}"}}', ["dm"]),
        ("{display: PREDIABETES}", ["pre"]),
        (
            '{any_of: [{code: "44054006", system: "' + SNOMED + '"}, '
            "{display: prediabetes}]}",
            ["dm", "pre"],
        ),
        ('{code: "0000"}', []),
    ],
)
def test_conditions_contains(
    patients: SegmentWorld, contains: str, expected: list[str]
) -> None:
    spec = trait_spec("conditions", "contains", contains)
    assert patients.select(spec) == expected


def test_conditions_negated_includes_empty(patients: SegmentWorld) -> None:
    spec = """
        kind: condition
        description: probe
        where:
          not:
            trait: conditions
            contains: {code: "44054006"}
        """
    expected = ["empty", "no_key", "not_a_list", "null_traits", "pre"]
    assert patients.select(spec) == expected


def test_declared_json_traits(world: SegmentWorld) -> None:
    world.profile("gold", traits={"tier": "gold", "visits": 7, "vip": True})
    world.profile("silver", traits={"tier": "silver", "visits": 2, "vip": False})
    world.profile("bare", traits={})
    head = """
        kind: condition
        description: probe
        traits:
          tier: text
          visits: number
          vip: boolean
        where:
        """
    assert world.select(head + "  {trait: tier, equals: gold}") == ["gold"]
    assert world.select(head + "  {trait: visits, gte: 3}") == ["gold"]
    assert world.select(head + "  {trait: vip, equals: false}") == ["silver"]
    assert world.select(head + "  {trait: tier, exists: false}") == ["bare"]


def test_deceased_excluded(world: SegmentWorld) -> None:
    world.profile("alive")
    world.profile("died_before", deceased_at="2024-01-01 00:00:00+00")
    world.profile("died_on_run_date", deceased_at="2024-06-15 23:59:59+00")
    world.profile("died_after", deceased_at="2024-06-16 00:00:00+00")
    spec = trait_spec("consent_marketing", "equals", "true")
    assert world.select(spec) == ["alive", "died_after"]


def test_deceased_excluded_even_if_asked(world: SegmentWorld) -> None:
    world.profile("died", deceased_at="2024-01-01 00:00:00+00")
    assert world.select(trait_spec("deceased_at", "exists", "true")) == []


INJECTION = "x'); DROP TABLE profiles; --"


def test_injection_value_is_data(world: SegmentWorld) -> None:
    world.profile("p1", state="CA")
    spec = trait_spec("state", "equals", f'"{INJECTION}"')
    assert world.select(spec) == []
    compiled = world.library().compile("probe")
    assert INJECTION not in compiled.sql
    assert INJECTION in compiled.params.values()
    tables = world.conn.execute(
        "SELECT table_name FROM information_schema.tables ORDER BY 1"
    ).fetchall()
    assert tables == [("events",), ("profiles",)]
    assert world.conn.execute("SELECT count(*) FROM profiles").fetchone() == (1,)


def test_injection_through_event_property(world: SegmentWorld) -> None:
    world.profile("p1")
    world.event("p1", "encounter", "2024-06-01 10:00:00", **{"class": INJECTION})
    spec = f"""
        kind: behaviour
        description: probe
        where:
          event: encounter
          where:
            class: "{INJECTION}"
        """
    assert world.select(spec) == ["p1"]
    assert INJECTION not in world.library().compile("probe").sql
    assert world.conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
