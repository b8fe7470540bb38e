"""Send windows, next openings and send_by deadlines as plain functions."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from carepost.core.campaign import DEFAULT_SEND_BY, SendWindow, load_campaign
from carepost.core.errors import ConfigError
from carepost.flows.schedule import (
    SendHold,
    deadline_passed,
    in_window,
    next_opening,
    run_date_for,
)

NEW_YORK = ZoneInfo("America/New_York")
DAY = SendWindow(start=time(8), end=time(20))


@pytest.mark.parametrize(("clock", "inside"), [
    (time(7, 59), False), (time(8, 0), True), (time(19, 59), True),
    (time(20, 0), False), (time(23, 0), False),
])
def test_day_window_bounds(clock: time, inside: bool) -> None:
    local = datetime.combine(date(2025, 6, 1), clock, tzinfo=NEW_YORK)
    assert in_window(DAY, local) is inside


def test_window_wrapping_midnight() -> None:
    night = SendWindow(start=time(22), end=time(6))
    assert in_window(night, datetime(2025, 6, 1, 23, tzinfo=NEW_YORK))
    assert in_window(night, datetime(2025, 6, 1, 5, tzinfo=NEW_YORK))
    assert not in_window(night, datetime(2025, 6, 1, 12, tzinfo=NEW_YORK))


def test_equal_bounds_open_all_day() -> None:
    always = SendWindow(start=time(0), end=time(0))
    assert in_window(always, datetime(2025, 6, 1, 3, tzinfo=NEW_YORK))


def test_next_opening_same_day() -> None:
    now = datetime(2025, 6, 1, 6, 0, tzinfo=NEW_YORK)
    assert next_opening(DAY, NEW_YORK, now) == datetime(2025, 6, 1, 12, tzinfo=UTC)


def test_next_opening_after_spring_forward() -> None:
    # 21:00 EST on 2025-03-08; the next 08:00 is in EDT (UTC-4).
    now = datetime(2025, 3, 9, 2, 0, tzinfo=UTC)
    assert next_opening(DAY, NEW_YORK, now) == datetime(2025, 3, 9, 12, tzinfo=UTC)


def test_next_opening_after_fall_back() -> None:
    # 21:00 EDT on 2025-11-01; the next 08:00 is in EST (UTC-5).
    now = datetime(2025, 11, 2, 1, 0, tzinfo=UTC)
    assert next_opening(DAY, NEW_YORK, now) == datetime(2025, 11, 2, 13, tzinfo=UTC)


def test_opening_in_skipped_hour() -> None:
    early = SendWindow(start=time(2, 30), end=time(20))
    now = datetime(2025, 3, 9, 5, 0, tzinfo=UTC)  # 00:00 EST
    # 02:30 does not exist that day; the window opens at 03:30 EDT.
    assert next_opening(early, NEW_YORK, now) == datetime(2025, 3, 9, 7, 30, tzinfo=UTC)


def test_run_date_in_campaign_zone() -> None:
    # 09:00 on 4 December in Sydney is 22:00 UTC on 3 December.
    scheduled = datetime(2024, 12, 3, 22, 0, tzinfo=UTC)
    assert run_date_for(scheduled, "Australia/Sydney") == date(2024, 12, 4)
    local = datetime(2024, 12, 4, 9, 0, tzinfo=ZoneInfo("Australia/Sydney"))
    assert local.astimezone(UTC) == scheduled


def test_deadline() -> None:
    due = datetime(2025, 6, 1, 13, tzinfo=UTC)
    assert not deadline_passed(due, timedelta(hours=3), due + timedelta(hours=3))
    assert deadline_passed(due, timedelta(hours=3),
                           due + timedelta(hours=3, seconds=1))


def _hold(window: SendWindow, now: datetime, deadline_hours: int = 12) -> SendHold:
    return SendHold(inbox=None, window=window,  # type: ignore[arg-type]
                    fallback_zone="America/Chicago",
                    deadline=now + timedelta(hours=deadline_hours),
                    clock=lambda: now)


def test_hold_defers_until_opening() -> None:
    now = datetime(2025, 6, 1, 23, 0, tzinfo=NEW_YORK).astimezone(UTC)
    decision = _hold(DAY, now).decide("America/New_York")
    assert decision is not None
    assert decision.result == "window_deferred"
    assert decision.opens_at == datetime(2025, 6, 2, 12, tzinfo=UTC)


def test_hold_uses_practice_zone_fallback() -> None:
    # 07:30 in New York is 06:30 in Chicago: both outside, reason names Chicago.
    now = datetime(2025, 6, 1, 11, 30, tzinfo=UTC)
    decision = _hold(DAY, now).decide(None)
    assert decision is not None
    assert "practice zone America/Chicago" in decision.reason
    assert decision.opens_at == datetime(2025, 6, 1, 13, tzinfo=UTC)


def test_hold_sends_inside_window() -> None:
    now = datetime(2025, 6, 1, 15, 0, tzinfo=UTC)
    assert _hold(DAY, now).decide("America/New_York") is None


def test_hold_skip_policy() -> None:
    skip = SendWindow(start=time(8), end=time(20), outside="skip")
    now = datetime(2025, 6, 2, 3, 0, tzinfo=UTC)
    decision = _hold(skip, now).decide("America/New_York")
    assert decision is not None
    assert decision.result == "window_skipped"


def test_hold_expires_past_deadline() -> None:
    now = datetime(2025, 6, 2, 3, 0, tzinfo=UTC)  # 23:00 in New York
    decision = _hold(DAY, now, deadline_hours=2).decide("America/New_York")
    assert decision is not None
    assert decision.result == "expired"


def test_campaign_send_by_and_trigger(tmp_path: Path) -> None:
    path = tmp_path / "refill.yaml"
    path.write_text("template: t\npurpose: care\nsend_by: 90m\n"
                    "trigger: {event: prescription_written, key: rx_id, delay: 7d}\n")
    campaign = load_campaign(path)
    assert campaign.send_deadline == timedelta(minutes=90)
    assert campaign.trigger is not None
    assert campaign.trigger.delay == timedelta(days=7)
    assert load_campaign(_write(tmp_path, "s.yaml", "segment: s\ntemplate: t\n"
                                "purpose: care\n")).send_deadline == DEFAULT_SEND_BY


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("segment: s\ntemplate: t\npurpose: care\nsend_by: soon\n", "invalid duration"),
    ("template: t\npurpose: care\n", "segment is required"),
    ("segment: s\ntemplate: t\npurpose: care\n"
     "trigger: {event: appointment_no_show, key: appointment_id}\n", "takes no segment"),
    ("template: t\npurpose: care\ntrigger: {event: e, key: k, max_reminders: 3}\n",
     "needs repeat_every"),
])
def test_invalid_campaign_rejected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_campaign(_write(tmp_path, "bad.yaml", text))
