"""Event conditions: windows at their boundaries, counts and ordered pairs.

The run date is 2024-06-15, so the run counts as happening at
2024-06-16 00:00 UTC and ``within: 14d`` starts at 2024-06-02 00:00 UTC.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import SegmentWorld


def event_spec(body: str) -> str:
    lines = "\n".join("  " + line for line in body.strip().splitlines())
    return "kind: behaviour\ndescription: probe\nwhere:\n" + lines + "\n"


@pytest.mark.parametrize(
    ("window", "occurred_at", "inside"),
    [
        ("14d", "2024-06-02 00:00:00", True),
        ("14d", "2024-06-01 23:59:59.999999", False),
        ("14d", "2024-06-15 23:59:59.999999", True),
        ("14d", "2024-06-16 00:00:00", False),
        ("2w", "2024-06-02 00:00:00", True),
        ("2w", "2024-06-01 23:59:59", False),
        ("24h", "2024-06-15 00:00:00", True),
        ("24h", "2024-06-14 23:59:59", False),
        ("12mo", "2023-06-16 00:00:00", True),
        ("12mo", "2023-06-15 23:59:59", False),
        ("1y", "2023-06-16 00:00:00", True),
        ("1y", "2023-06-15 23:59:59", False),
    ],
)
def test_within_boundary(
    world: SegmentWorld, window: str, occurred_at: str, inside: bool
) -> None:
    world.profile("p1")
    world.event("p1", "portal_login", occurred_at)
    spec = event_spec(f"event: portal_login\nwithin: {window}")
    assert world.select(spec) == (["p1"] if inside else [])


def test_event_without_window(world: SegmentWorld) -> None:
    world.profile("old")
    world.profile("future")
    world.profile("none")
    world.event("old", "portal_login", "1999-01-01 00:00:00")
    world.event("future", "portal_login", "2024-06-16 00:00:00")
    assert world.select(event_spec("event: portal_login")) == ["old"]


def test_event_after_run_date_ignored(world: SegmentWorld) -> None:
    world.profile("p1")
    world.event("p1", "portal_login", "2024-06-20 09:00:00")
    spec = event_spec("event: portal_login\nnot_within: 14d")
    assert world.select(spec) == ["p1"]
    assert world.select(spec, as_of=date(2024, 6, 20)) == []


def test_not_within_includes_never(world: SegmentWorld) -> None:
    world.profile("recent")
    world.profile("lapsed")
    world.profile("never")
    world.event("recent", "encounter", "2024-01-10 09:00:00", **{"class": "wellness"})
    world.event("lapsed", "encounter", "2023-06-15 23:59:59", **{"class": "wellness"})
    world.event("never", "encounter", "2024-05-01 09:00:00", **{"class": "ambulatory"})
    spec = event_spec("event: encounter\nwhere: {class: wellness}\nnot_within: 12mo")
    assert world.select(spec) == ["lapsed", "never"]


def test_within_and_not_within(world: SegmentWorld) -> None:
    world.profile("gap")
    world.profile("recent")
    world.profile("ancient")
    world.event("gap", "portal_login", "2023-01-01 00:00:00")
    world.event("recent", "portal_login", "2023-01-01 00:00:00")
    world.event("recent", "portal_login", "2024-06-01 00:00:00")
    world.event("ancient", "portal_login", "2020-01-01 00:00:00")
    spec = event_spec("event: portal_login\nwithin: 24mo\nnot_within: 12mo")
    assert world.select(spec) == ["gap"]


def test_older_than_boundary(world: SegmentWorld) -> None:
    world.profile("at_boundary")
    world.profile("before_boundary")
    world.event("at_boundary", "encounter", "2024-03-18 00:00:00")
    world.event("before_boundary", "encounter", "2024-03-17 23:59:59")
    spec = event_spec("event: encounter\nolder_than: 90d")
    assert world.select(spec) == ["before_boundary"]


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        ("{gte: 2}", ["two", "three"]),
        ("{gt: 2}", ["three"]),
        ("{equals: 0}", ["none", "old"]),
        ("{lt: 2}", ["none", "old", "one"]),
        ("{gte: 1, lte: 2}", ["one", "two"]),
    ],
)
def test_event_count(world: SegmentWorld, count: str, expected: list[str]) -> None:
    for profile_id, logins in [("none", 0), ("one", 1), ("two", 2), ("three", 3)]:
        world.profile(profile_id)
        for day in range(logins):
            world.event(profile_id, "portal_login", f"2024-06-{10 + day} 08:00:00")
    world.profile("old")
    world.event("old", "portal_login", "2024-01-01 08:00:00")
    spec = event_spec(f"event: portal_login\nwithin: 14d\ncount: {count}")
    assert sorted(world.select(spec)) == sorted(expected)


def test_event_where_list_and_number(world: SegmentWorld) -> None:
    world.profile("wellness")
    world.profile("ambulatory")
    world.profile("emergency")
    world.event("wellness", "encounter", "2024-06-01 08:00:00", **{"class": "wellness"})
    world.event(
        "ambulatory", "encounter", "2024-06-01 08:00:00", **{"class": "ambulatory"}
    )
    world.event(
        "emergency", "encounter", "2024-06-01 08:00:00", **{"class": "emergency"}
    )
    spec = event_spec("event: encounter\nwhere: {class: [wellness, ambulatory]}")
    assert world.select(spec) == ["ambulatory", "wellness"]

    world.event("wellness", "form_submitted", "2024-06-01 08:00:00", version=2)
    assert world.select(event_spec("event: form_submitted\nwhere: {version: 2}")) == [
        "wellness"
    ]


@pytest.mark.parametrize(
    ("raw", "selected"),
    [
        ('{"class": "wellness"}', True),
        # The same value with escapes in the stored JSON text.
        ('{"class": "w\\u0065llness"}', True),
        ('{"note": "a\\"b", "class": "\\u0077ellness"}', True),
        ('{"class": "wellness-plus"}', False),
        ('{"class": "ambulatory", "note": "wellness"}', False),
        ('{"class": 5}', False),
    ],
)
def test_where_escaped_json(
    world: SegmentWorld, raw: str, selected: bool
) -> None:
    """A property test matches however the source escaped its JSON text."""
    world.profile("p1")
    world.conn.execute(
        "INSERT INTO events VALUES ('raw1', 'p1', 'encounter', "
        "TIMESTAMPTZ '2024-06-01 08:00:00+00', ?)",
        [raw],
    )
    spec = event_spec("event: encounter\nwhere: {class: wellness}")
    assert world.select(spec) == (["p1"] if selected else [])


def test_where_numbers_booleans_exact(world: SegmentWorld) -> None:
    """Numbers and booleans skip the substring shortcut and still match."""
    world.profile("num")
    world.profile("flag")
    world.conn.execute(
        "INSERT INTO events VALUES ('n1', 'num', 'form_submitted', "
        "TIMESTAMPTZ '2024-06-01 08:00:00+00', '{\"version\": 2}'), "
        "('f1', 'flag', 'form_submitted', "
        "TIMESTAMPTZ '2024-06-01 08:00:00+00', '{\"complete\": true}')"
    )
    assert world.select(event_spec("event: form_submitted\nwhere: {version: 2}")) == [
        "num"
    ]
    assert world.select(
        event_spec("event: form_submitted\nwhere: {complete: true}")
    ) == ["flag"]


MISSED = """
event: appointment_no_show
within: 14d
not_followed_by:
  event: appointment_booked
"""


def test_no_show_without_rebooking(world: SegmentWorld) -> None:
    world.profile("missed")
    world.profile("rebooked")
    world.profile("booked_before")
    world.profile("booked_after_run")
    world.profile("same_instant")
    world.profile("old_no_show")
    for profile_id in (
        "missed",
        "rebooked",
        "booked_before",
        "booked_after_run",
        "same_instant",
    ):
        world.event(
            profile_id,
            "appointment_no_show",
            "2024-06-10 09:00:00",
            appointment_id="a1",
        )
    world.event("rebooked", "appointment_booked", "2024-06-11 12:00:00")
    world.event("booked_before", "appointment_booked", "2024-06-01 12:00:00")
    world.event("booked_after_run", "appointment_booked", "2024-06-17 12:00:00")
    world.event("same_instant", "appointment_booked", "2024-06-10 09:00:00")
    world.event("old_no_show", "appointment_no_show", "2024-05-01 09:00:00")
    expected = ["booked_after_run", "booked_before", "missed", "same_instant"]
    assert world.select(event_spec(MISSED)) == expected


def test_later_no_show_after_rebooking(world: SegmentWorld) -> None:
    world.profile("twice")
    world.event("twice", "appointment_no_show", "2024-06-05 09:00:00")
    world.event("twice", "appointment_booked", "2024-06-06 09:00:00")
    world.event("twice", "appointment_no_show", "2024-06-12 09:00:00")
    assert world.select(event_spec(MISSED)) == ["twice"]


UNFILLED = """
event: prescription_written
within: 30d
not_followed_by:
  event: prescription_filled
  within_after: 7d
  same: [rx_id]
"""


def test_prescription_not_filled_in_7_days(world: SegmentWorld) -> None:
    for profile_id in (
        "unfilled",
        "filled",
        "filled_late",
        "other_rx",
        "too_new",
        "filled_at_limit",
    ):
        world.profile(profile_id)
    for profile_id in (
        "unfilled",
        "filled",
        "filled_late",
        "other_rx",
        "filled_at_limit",
    ):
        world.event(
            profile_id, "prescription_written", "2024-06-01 10:00:00", rx_id="rx1"
        )
    world.event("filled", "prescription_filled", "2024-06-03 10:00:00", rx_id="rx1")
    world.event(
        "filled_late", "prescription_filled", "2024-06-08 10:00:01", rx_id="rx1"
    )
    world.event(
        "filled_at_limit", "prescription_filled", "2024-06-08 10:00:00", rx_id="rx1"
    )
    world.event("other_rx", "prescription_filled", "2024-06-03 10:00:00", rx_id="rx9")
    world.event("too_new", "prescription_written", "2024-06-12 10:00:00", rx_id="rx2")
    assert world.select(event_spec(UNFILLED)) == ["filled_late", "other_rx", "unfilled"]


def test_followed_by_within_after(world: SegmentWorld) -> None:
    world.profile("quick")
    world.profile("slow")
    for profile_id in ("quick", "slow"):
        world.event(profile_id, "appointment_booked", "2024-06-01 10:00:00")
    world.event("quick", "appointment_attended", "2024-06-02 10:00:00")
    world.event("slow", "appointment_attended", "2024-06-12 10:00:00")
    spec = event_spec(
        "event: appointment_booked\nfollowed_by:\n"
        "  event: appointment_attended\n  within_after: 7d"
    )
    assert world.select(spec) == ["quick"]


def test_session_time_zone_ignored(world: SegmentWorld) -> None:
    world.profile("inside")
    world.profile("outside")
    world.event("inside", "portal_login", "2024-06-02 00:00:00")
    world.event("outside", "portal_login", "2024-06-01 23:59:59")
    world.conn.execute("SET TimeZone = 'America/New_York'")
    assert world.select(event_spec("event: portal_login\nwithin: 14d")) == ["inside"]
    world.conn.execute("SET TimeZone = 'Pacific/Auckland'")
    assert world.select(event_spec("event: portal_login\nwithin: 14d")) == ["inside"]
