"""The inbox, pending sends and schedule leases on a real PostgreSQL server.

These are the calls the webhook service (``service/webhooks.py``) and the
behaviour flow (``flows/behaviour.py``) make on the ledger's engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from carepost.core.settings import load_settings
from carepost.ledger import Inbox, Ledger, PendingSend
from carepost.ledger.inbox import IncomingEvent, PendingKind, PendingState
from carepost.ledger.models import OutboxEvent
from carepost.service.app import create_app
from carepost.service.webhooks import webhook_routes
from tests.flows.project import make_project
from tests.support.uvicorn_thread import UvicornThread
from tests.triggers.test_webhooks import (  # noqa: F401  run again on PostgreSQL
    EVENTS_SECRET,
    SEGMENT_SECRET,
    Service,
    test_event_accepted_and_stored,
    test_replayed_event_triggers_nothing,
    test_segment_retry_is_duplicate,
)

pytestmark = pytest.mark.postgres

# With seconds and microseconds, so a truncated or zone-shifted time shows.
T0 = datetime(2024, 3, 6, 16, 20, 30, 123456, tzinfo=UTC)


def incoming(event_id: str, *, at: datetime = T0, event_type: str =
             "appointment_no_show", appointment: str = "ap-1") -> IncomingEvent:
    return IncomingEvent(event_id=event_id, source="events", type=event_type,
                         profile_id="pt-1", occurred_at=at,
                         properties={"appointment_id": appointment,
                                     "first_name": "Zqx"})


def pending(run_key: str, *, due: datetime = T0, kind: PendingKind =
            PendingKind.TRIGGER) -> PendingSend:
    return PendingSend(campaign="missed_appointment", run_key=run_key,
                       profile_id="pt-1", kind=kind.value, due_at=due,
                       deadline=due + timedelta(days=2),
                       state=PendingState.PENDING.value)


@pytest.fixture
def inbox(ledger: Ledger) -> Inbox:
    return Inbox(ledger.engine)


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            ledger: Ledger) -> Iterator[Service]:
    """The webhook routes on real uvicorn, writing to the PostgreSQL ledger."""
    monkeypatch.setenv("CAREPOST_SEGMENT_WEBHOOK_SECRET", SEGMENT_SECRET.decode())
    monkeypatch.setenv("CAREPOST_EVENTS_WEBHOOK_SECRET", EVENTS_SECRET.decode())
    settings = load_settings(make_project(tmp_path / "project").config)
    woken: list[str] = []
    app = create_app(settings, route_factories=(webhook_routes(woken.append),),
                     ledger=ledger)
    with UvicornThread(app) as server:
        yield Service(server.url, ledger, woken)


def test_accept_once_keeps_ids_only(inbox: Inbox) -> None:
    assert inbox.accept(incoming("evt-1"))
    assert not inbox.accept(incoming("evt-1"))

    [stored] = inbox.unplanned()

    assert stored.occurred_at == T0
    assert stored.property_map() == {"appointment_id": "ap-1"}


def test_events_after_times_exact(inbox: Inbox) -> None:
    inbox.accept(incoming("evt-1"))
    inbox.accept(incoming("evt-2", event_type="appointment_booked",
                          at=T0 + timedelta(hours=1)))

    found = inbox.events_after(profile_ids=["pt-1"],
                               event_types=["appointment_booked"], after=T0)
    later = inbox.events_after(profile_ids=["pt-1"],
                               event_types=["appointment_booked"],
                               after=T0 + timedelta(hours=1))

    assert found == [("pt-1", "appointment_booked", T0 + timedelta(hours=1),
                      {"appointment_id": "ap-1"})]
    assert later == []
    assert inbox.has_event_after(profile_id="pt-1", event_type="appointment_booked",
                                 after=T0, key=("appointment_id", "ap-1"))
    assert not inbox.has_event_after(profile_id="pt-1",
                                     event_type="appointment_booked", after=T0,
                                     key=("appointment_id", "ap-2"))


def test_plan_counts_new_keys_only(inbox: Inbox) -> None:
    """``plan`` returned -1 on PostgreSQL: psycopg's executemany has no count."""
    for event_id in ("evt-1", "evt-2"):
        inbox.accept(incoming(event_id))

    first = inbox.plan({"evt-1": [pending("appointment:ap-1")]})
    again = inbox.plan({"evt-2": [pending("appointment:ap-1"),
                                  pending("appointment:ap-2")]})

    assert (first, again) == (1, 1)
    assert inbox.unplanned() == []
    assert [row.run_key for row in inbox.pending_rows()] == [
        "appointment:ap-1", "appointment:ap-2"]


def test_due_finish_and_reschedule(inbox: Inbox) -> None:
    for number in range(3):
        inbox.add_pending(pending(f"run-{number}", due=T0 + timedelta(minutes=number)))
    ids = [row.id for row in inbox.pending_rows()]

    assert [row.id for row in inbox.due(T0 + timedelta(minutes=1))] == ids[:2]
    assert inbox.next_due_at() == T0
    assert inbox.finish(ids[0], PendingState.DONE, "sent")
    assert not inbox.finish(ids[0], PendingState.CANCELLED, "rebooked")
    inbox.finish_many([(ids[0], PendingState.EXPIRED, "late"),
                       (ids[1], PendingState.CANCELLED, "rebooked")])
    assert inbox.reschedule(ids[2], T0 + timedelta(days=1), "window")

    states = {row.id: (row.state, row.outcome) for row in inbox.pending_rows()}
    assert states[ids[0]] == ("done", "sent")
    assert states[ids[1]] == ("cancelled", "rebooked")
    assert inbox.next_due_at() == T0 + timedelta(days=1)


def test_hold_for_window_moves_hold(inbox: Inbox) -> None:
    inbox.hold_for_window(pending("run-1", kind=PendingKind.WINDOW))
    inbox.hold_for_window(pending("run-1", due=T0 + timedelta(hours=9),
                                  kind=PendingKind.WINDOW))

    [row] = inbox.pending_rows()

    assert row.due_at == T0 + timedelta(hours=9)
    assert row.state == PendingState.PENDING.value


def test_lease_scheduled_run_once(inbox: Inbox) -> None:
    assert inbox.lease_scheduled_run("checkup_reminder", "2024-02-15", T0)
    assert not inbox.lease_scheduled_run("checkup_reminder", "2024-02-15", T0)
    assert [run.scheduled_for for run in inbox.scheduled_runs("checkup_reminder")
            ] == [T0]


def test_queue_event_once(inbox: Inbox, ledger: Ledger) -> None:
    event = OutboxEvent(event_id="e-1", type="email_escalated", profile_id="pt-1",
                        campaign="refill", payload="{}")
    assert inbox.queue_event(event)
    assert not inbox.queue_event(event)
    assert [queued.event_id for queued in ledger.pending_events()] == ["e-1"]
