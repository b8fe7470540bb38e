"""The shape of the compiled SQL that the speed of a segment depends on.

Event times are compared as stored ``TIMESTAMPTZ`` values against constant
boundaries, so DuckDB filters the scan by row-group statistics; a
``timezone('UTC', occurred_at)`` per row would defeat that. The
boundaries are still computed in UTC calendar terms, whatever the
session's time zone.
"""

from __future__ import annotations

import re
from datetime import date
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import SegmentWorld

LIFECYCLE = """
kind: lifecycle
description: probe
stages:
  - name: recent
    description: probe
    where:
      event: encounter
      within: 90d
  - name: lapsed
    description: probe
    where:
      event: encounter
      older_than: 18mo
      not_within: 18mo
"""

BEHAVIOUR = """
kind: behaviour
description: probe
where:
  event: appointment_no_show
  within: 14d
  not_followed_by:
    event: appointment_booked
"""


@pytest.mark.parametrize("text", [LIFECYCLE, BEHAVIOUR])
def test_event_times_are_not_converted_per_row(world: SegmentWorld, text: str) -> None:
    world.write("probe", text)
    sql = world.library().compile("probe").sql
    assert "occurred_at <" in sql or "occurred_at >=" in sql
    assert not re.search(r"timezone\('UTC', \w+\.occurred_at\)", sql)
    assert not re.search(r"timezone\('UTC', p\.deceased_at\)", sql)


def test_lifecycle_counts_come_from_one_pass(world: SegmentWorld) -> None:
    world.write("probe", LIFECYCLE)
    sql = world.library().compile("probe").sql
    assert sql.count("FROM events") == 1
    assert sql.count("count(*) FILTER") == 3


def test_event_time_filter_reaches_the_scan(world: SegmentWorld) -> None:
    world.profile("p1")
    # Events on both sides of the run's end, so the row-group statistics
    # alone cannot drop the time filter.
    world.event("p1", "encounter", "2024-06-01 00:00:00")
    world.event("p1", "encounter", "2024-07-01 00:00:00")
    world.write("probe", LIFECYCLE)
    compiled = world.library().compile("probe")
    plan = world.conn.execute(
        "EXPLAIN " + compiled.sql, compiled.bind(date(2024, 6, 15))
    ).fetchall()
    text = "\n".join(row[1] for row in plan)
    scan = text[text.index("events") :] if "events" in text else text
    assert re.search(r"Filters:[\s\S]*occurred_at\s*<", scan), text


@pytest.mark.parametrize("zone", ["America/Chicago", "Pacific/Kiritimati"])
@pytest.mark.parametrize(
    ("occurred_at", "inside"),
    [("2024-02-29 00:00:00", True), ("2024-02-28 23:59:59.999999", False)],
)
def test_month_window_is_counted_in_utc(
    world: SegmentWorld, zone: str, occurred_at: str, inside: bool
) -> None:
    # Run date 2024-03-30: the run ends at 2024-03-31 00:00 UTC and one
    # month before that is clamped to 2024-02-29 00:00 UTC.
    world.profile("p1")
    world.event("p1", "portal_login", occurred_at)
    world.conn.execute(f"SET TimeZone = '{zone}'")
    spec = "kind: behaviour\ndescription: probe\nwhere:\n  event: portal_login\n  within: 1mo\n"
    selected = world.select(spec, as_of=date(2024, 3, 30))
    assert selected == (["p1"] if inside else [])
