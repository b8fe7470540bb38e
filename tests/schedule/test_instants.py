"""Times from Prefect and from the inbox, normalised to aware UTC.

``prefect_time`` builds the scheduled time the way the engine hands it
to a flow run: a ``FlowRun`` validated by Prefect, whose
``expected_start_time`` is Prefect's ``DateTime`` (a pendulum subclass on
Python 3.11 and 3.12). A naive value stands for UTC, as SQLite returns
the inbox's times and as Prefect parses a naive time.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone
from uuid import uuid4

from prefect.client.schemas.objects import FlowRun

from carepost.core.campaign import SendWindow
from carepost.flows.schedule import (
    SendHold,
    deadline_passed,
    next_opening,
    run_date_for,
    utc_instant,
)

from .test_send_window import DAY, NEW_YORK

SEND_BY = timedelta(hours=12)


def prefect_time(text: str) -> datetime:
    """Return ``text`` as Prefect returns a flow run's expected start time."""
    run = FlowRun(flow_id=uuid4(), expected_start_time=text)
    assert run.expected_start_time is not None
    return run.expected_start_time


def test_prefect_time_is_plain_utc() -> None:
    moment = utc_instant(prefect_time("2025-06-02T14:00:00Z"))
    assert type(moment) is datetime
    assert moment.tzinfo is UTC
    assert moment == datetime(2025, 6, 2, 14, tzinfo=UTC)


def test_prefect_time_keeps_zone_after_adding() -> None:
    deadline = utc_instant(prefect_time("2025-06-02T14:00:00Z")) + SEND_BY
    assert deadline.tzinfo is UTC
    assert deadline == datetime(2025, 6, 3, 2, tzinfo=UTC)


def test_naive_time_is_utc() -> None:
    moment = utc_instant(datetime(2025, 6, 2, 14))
    assert moment.tzinfo is UTC
    assert moment == datetime(2025, 6, 2, 14, tzinfo=UTC)


def test_offset_time_is_converted() -> None:
    plus_two = timezone(timedelta(hours=2))
    moment = utc_instant(datetime(2025, 6, 2, 16, tzinfo=plus_two))
    assert moment.tzinfo is UTC
    assert moment == datetime(2025, 6, 2, 14, tzinfo=UTC)


def test_deadline_with_prefect_time() -> None:
    due = prefect_time("2025-06-02T14:00:00Z")
    assert not deadline_passed(due, SEND_BY, datetime(2025, 6, 3, 2, tzinfo=UTC))
    assert deadline_passed(due, SEND_BY, datetime(2025, 6, 3, 2, 0, 1, tzinfo=UTC))


def test_deadline_with_naive_inbox_times() -> None:
    due = datetime(2025, 6, 2, 14)
    assert not deadline_passed(due, SEND_BY, datetime(2025, 6, 3, 2, tzinfo=UTC))
    assert deadline_passed(due, SEND_BY, datetime(2025, 6, 3, 2, 0, 1))


def test_run_date_with_prefect_time() -> None:
    # 03:00Z on 3 June is still 2 June in Chicago (22:00 CDT).
    due = prefect_time("2025-06-03T03:00:00Z")
    assert run_date_for(due, "America/Chicago").isoformat() == "2025-06-02"


def test_run_date_of_naive_time() -> None:
    assert run_date_for(datetime(2025, 6, 3, 3), "America/Chicago").isoformat() \
        == "2025-06-02"


def test_next_opening_of_naive_time() -> None:
    # 23:00Z is 19:00 in New York, so the window opens at 08:00 the next day.
    opening = next_opening(DAY, NEW_YORK, datetime(2025, 6, 1, 23))
    assert opening == datetime(2025, 6, 2, 12, tzinfo=UTC)


def test_hold_with_prefect_and_inbox_times() -> None:
    now = prefect_time("2025-06-02T03:00:00Z")  # 23:00 in New York
    hold = SendHold(inbox=None, window=DAY,  # type: ignore[arg-type]
                    fallback_zone="America/Chicago",
                    deadline=datetime(2025, 6, 2, 15), clock=lambda: now)
    decision = hold.decide("America/New_York")
    assert decision is not None
    assert decision.result == "window_deferred"
    assert decision.opens_at == datetime(2025, 6, 2, 12, tzinfo=UTC)


def test_hold_expires_with_naive_deadline() -> None:
    late = SendWindow(start=time(18), end=time(20))
    now = prefect_time("2025-06-02T03:00:00Z")
    hold = SendHold(inbox=None, window=late,  # type: ignore[arg-type]
                    fallback_zone="America/Chicago",
                    deadline=datetime(2025, 6, 2, 15), clock=lambda: now)
    decision = hold.decide("America/New_York")
    assert decision is not None
    assert decision.result == "expired"
