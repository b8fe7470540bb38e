"""Prefect 3.9's CronSchedule around DST, the schedule carepost serve uses.

Each case runs under two process time zones, so a result that depends on
the machine's local zone would fail one of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from prefect.server.schemas.schedules import CronSchedule


@pytest.fixture(params=["UTC", "Asia/Kolkata"], autouse=True)
def process_zone(request: pytest.FixtureRequest,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


async def _next_runs(cron: str, zone: str, start: str, count: int = 3) -> list[str]:
    schedule = CronSchedule(cron=cron, timezone=zone)
    dates = await schedule.get_dates(n=count, start=datetime.fromisoformat(start))
    return [moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ") for moment in dates]


async def test_spring_forward_nine_am() -> None:
    runs = await _next_runs("0 9 * * *", "America/New_York", "2025-03-09T05:30:00Z")
    assert runs == ["2025-03-09T13:00Z", "2025-03-10T13:00Z", "2025-03-11T13:00Z"]


async def test_fall_back_nine_am() -> None:
    runs = await _next_runs("0 9 * * *", "America/New_York", "2025-11-02T05:30:00Z")
    assert runs == ["2025-11-02T14:00Z", "2025-11-03T14:00Z", "2025-11-04T14:00Z"]


async def test_day_before_each_change() -> None:
    spring = await _next_runs("0 9 * * *", "America/New_York", "2025-03-08T05:30:00Z")
    autumn = await _next_runs("0 9 * * *", "America/New_York", "2025-11-01T05:30:00Z")
    assert spring[:2] == ["2025-03-08T14:00Z", "2025-03-09T13:00Z"]
    assert autumn[:2] == ["2025-11-01T13:00Z", "2025-11-02T14:00Z"]


async def test_skipped_hour_fires_once() -> None:
    runs = await _next_runs("30 2 * * *", "America/New_York", "2025-03-08T12:00:00Z")
    # 02:30 does not exist on 2025-03-09; the run moves to 03:30 EDT.
    assert runs == ["2025-03-09T07:30Z", "2025-03-10T06:30Z", "2025-03-11T06:30Z"]


async def test_repeated_hour_fires_once() -> None:
    runs = await _next_runs("30 1 * * *", "America/New_York", "2025-11-01T12:00:00Z")
    # 01:30 happens twice on 2025-11-02; only the first (EDT) one fires.
    assert runs == ["2025-11-02T05:30Z", "2025-11-03T06:30Z", "2025-11-04T06:30Z"]


async def test_one_run_per_local_day() -> None:
    schedule = CronSchedule(cron="0 9 * * *", timezone="America/Chicago")
    start = datetime(2025, 3, 1, tzinfo=UTC)
    dates = await schedule.get_dates(n=400, start=start,
                                     end=start + timedelta(days=365))
    local = [moment.astimezone(ZoneInfo("America/Chicago")) for moment in dates]
    assert len({moment.date() for moment in local}) == len(local) == 365
    assert {moment.hour for moment in local} == {9}
