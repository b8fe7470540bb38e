"""The behaviour pass against a real DuckDB warehouse, SQLite ledger and
STARTTLS server, without Prefect. Each test drives the pass's clock.
"""

from __future__ import annotations

import json
import mailbox
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import duckdb
import yaml
from sqlmodel import Session, select

from carepost.flows.behaviour import BehaviourEngine
from carepost.ledger import Delivery, OutboxEvent
from carepost.ledger.inbox import IncomingEvent
from tests.conftest import REPO
from tests.triggers.conftest import NO_SHOW_CAMPAIGN, TriggerProject

T0 = datetime(2024, 3, 6, 16, 20, tzinfo=UTC)  # 10:20 in America/Chicago


def _no_show(event_id: str, profile_id: str, appointment: str,
             at: datetime = T0) -> IncomingEvent:
    return IncomingEvent(event_id, "events", "appointment_no_show", profile_id, at,
                         {"appointment_id": appointment})


def _deliveries(engine: BehaviourEngine) -> list[Delivery]:
    with Session(engine.ledger.engine) as session:
        return list(session.exec(select(Delivery).order_by(Delivery.id)))


def _mail_count(project: TriggerProject) -> int:
    return len(mailbox.Maildir(project.smtp.maildir))


async def test_no_show_sends_once(trigger_project: TriggerProject) -> None:
    engine = BehaviourEngine(trigger_project.settings)
    profile = trigger_project.profile_ids[0]
    engine.inbox.accept(_no_show("e-1", profile, "ap-1"))
    engine.inbox.accept(_no_show("e-2", profile, "ap-1", T0 + timedelta(minutes=1)))

    first = await engine.run_pass(T0 + timedelta(minutes=5))
    second = await engine.run_pass(T0 + timedelta(minutes=10))

    assert first["sent"] == 1
    assert second["sent"] == 0
    assert _mail_count(trigger_project) == 1
    [row] = _deliveries(engine)
    assert row.run_key == "appointment:ap-1"
    assert row.profile_id == profile


async def test_each_appointment_keys_one_send(trigger_project: TriggerProject) -> None:
    engine = BehaviourEngine(trigger_project.settings)
    first, second = trigger_project.profile_ids[:2]
    engine.inbox.accept(_no_show("e-1", first, "ap-1"))
    engine.inbox.accept(_no_show("e-2", second, "ap-2"))
    counts = await engine.run_pass(T0 + timedelta(minutes=1))
    assert counts["sent"] == 2
    assert _mail_count(trigger_project) == 2


async def test_delay_not_elapsed_waits(trigger_project: TriggerProject) -> None:
    spec = {**NO_SHOW_CAMPAIGN,
            "trigger": {**NO_SHOW_CAMPAIGN["trigger"], "delay": "2h"}}
    trigger_project.write_campaign("no_show_followup", spec)
    engine = BehaviourEngine(trigger_project.settings)
    engine.inbox.accept(_no_show("e-1", trigger_project.profile_ids[0], "ap-1"))

    early = await engine.run_pass(T0 + timedelta(minutes=119))
    assert early["sent"] == 0
    assert engine.inbox.next_due_at() == T0 + timedelta(hours=2)

    due = await engine.run_pass(T0 + timedelta(hours=2))
    assert due["sent"] == 1


async def test_rebooked_in_inbox_cancels(trigger_project: TriggerProject) -> None:
    spec = {**NO_SHOW_CAMPAIGN,
            "trigger": {**NO_SHOW_CAMPAIGN["trigger"], "delay": "2h"}}
    trigger_project.write_campaign("no_show_followup", spec)
    engine = BehaviourEngine(trigger_project.settings)
    profile = trigger_project.profile_ids[0]
    engine.inbox.accept(_no_show("e-1", profile, "ap-1"))
    await engine.run_pass(T0 + timedelta(minutes=1))
    engine.inbox.accept(IncomingEvent("e-2", "events", "appointment_booked", profile,
                                      T0 + timedelta(minutes=30),
                                      {"appointment_id": "ap-9"}))

    counts = await engine.run_pass(T0 + timedelta(hours=2))

    assert counts["cancelled"] == 1
    assert counts["sent"] == 0
    assert _mail_count(trigger_project) == 0
    [pending] = engine.inbox.pending_rows()
    assert pending.state == "cancelled"
    assert pending.outcome == "appointment_booked after the trigger event"


async def test_rebooked_in_warehouse_cancels(trigger_project: TriggerProject) -> None:
    profile = trigger_project.profile_ids[0]
    with duckdb.connect(str(trigger_project.settings.warehouse_path)) as conn:
        conn.execute("INSERT INTO events VALUES (?, ?, 'appointment_booked', ?, ?)",
                     ["wh-1", profile, T0 + timedelta(minutes=10),
                      json.dumps({"appointment_id": "ap-9"})])
    engine = BehaviourEngine(trigger_project.settings)
    engine.inbox.accept(_no_show("e-1", profile, "ap-1"))
    counts = await engine.run_pass(T0 + timedelta(hours=1))
    assert counts["cancelled"] == 1
    assert _mail_count(trigger_project) == 0


async def test_booking_before_no_show_does_not_cancel(
        trigger_project: TriggerProject) -> None:
    engine = BehaviourEngine(trigger_project.settings)
    profile = trigger_project.profile_ids[0]
    engine.inbox.accept(IncomingEvent("e-0", "events", "appointment_booked", profile,
                                      T0 - timedelta(days=3),
                                      {"appointment_id": "ap-1"}))
    engine.inbox.accept(_no_show("e-1", profile, "ap-1"))
    counts = await engine.run_pass(T0 + timedelta(minutes=1))
    assert counts["sent"] == 1


async def test_late_event_expires(trigger_project: TriggerProject) -> None:
    engine = BehaviourEngine(trigger_project.settings)
    engine.inbox.accept(_no_show("e-1", trigger_project.profile_ids[0], "ap-1"))
    counts = await engine.run_pass(T0 + timedelta(hours=13))
    assert counts["expired"] == 1
    assert _mail_count(trigger_project) == 0
    assert engine.inbox.pending_rows()[0].state == "expired"


def _local_zone(project: TriggerProject, profile: str) -> ZoneInfo:
    with duckdb.connect(str(project.settings.warehouse_path)) as conn:
        [zone] = conn.execute("SELECT timezone FROM profiles WHERE profile_id = ?",
                              [profile]).fetchone()
    return ZoneInfo(zone or project.settings.practice.timezone)


async def test_quiet_hours_defer_trigger(trigger_project: TriggerProject) -> None:
    spec = {**NO_SHOW_CAMPAIGN, "send_window": {"start": "08:00", "end": "20:00"}}
    trigger_project.write_campaign("no_show_followup", spec)
    engine = BehaviourEngine(trigger_project.settings)
    profile = trigger_project.profile_ids[0]
    zone = _local_zone(trigger_project, profile)
    night = datetime(2024, 3, 6, 22, 30, tzinfo=zone).astimezone(UTC)
    morning = datetime(2024, 3, 7, 8, 0, tzinfo=zone).astimezone(UTC)
    engine.inbox.accept(_no_show("e-1", profile, "ap-1", night))

    held = await engine.run_pass(night + timedelta(minutes=1))
    assert held["window_deferred"] == 1
    assert _mail_count(trigger_project) == 0
    [row] = _deliveries(engine)
    assert row.state == "deferred"
    assert "outside the send window 08:00-20:00" in row.reason
    assert engine.inbox.next_due_at() == morning

    still_night = await engine.run_pass(morning - timedelta(minutes=1))
    assert still_night["sent"] == 0
    sent = await engine.run_pass(morning)
    assert sent["sent"] == 1
    assert _mail_count(trigger_project) == 1


async def test_quiet_hours_skip(trigger_project: TriggerProject) -> None:
    spec = {**NO_SHOW_CAMPAIGN,
            "send_window": {"start": "08:00", "end": "20:00", "outside": "skip"}}
    trigger_project.write_campaign("no_show_followup", spec)
    engine = BehaviourEngine(trigger_project.settings)
    profile = trigger_project.profile_ids[0]
    night = datetime(2024, 3, 6, 23, 0, tzinfo=_local_zone(trigger_project, profile))
    engine.inbox.accept(_no_show("e-1", profile, "ap-1", night.astimezone(UTC)))
    counts = await engine.run_pass(night.astimezone(UTC) + timedelta(minutes=1))
    assert counts["window_skipped"] == 1
    [row] = _deliveries(engine)
    assert row.state == "suppressed"
    assert engine.inbox.next_due_at() is None


REFILL_CAMPAIGN = {
    "description": "test refill reminder",
    "template": "checkup_reminder",
    "purpose": "care",
    "trigger": {"event": "prescription_written", "key": "rx_id", "delay": "3d",
                "repeat_every": "3d", "max_reminders": 2,
                "escalation": {"after_reminders": 2},
                "cancel_if": [{"event": "prescription_filled", "match": "key"}]},
    "send_window": {"start": "00:00", "end": "00:00"},
}


def _written(event_id: str, profile: str, rx: str) -> IncomingEvent:
    return IncomingEvent(event_id, "events", "prescription_written", profile, T0,
                         {"rx_id": rx})


def _outbox(engine: BehaviourEngine, event_type: str) -> list[OutboxEvent]:
    with Session(engine.ledger.engine) as session:
        return list(session.exec(select(OutboxEvent)
                                 .where(OutboxEvent.type == event_type)))


async def test_unfilled_prescription_escalates(
        trigger_project: TriggerProject) -> None:
    trigger_project.write_campaign("refill_test", REFILL_CAMPAIGN)
    engine = BehaviourEngine(trigger_project.settings)
    profile = trigger_project.profile_ids[0]
    engine.inbox.accept(_written("rx-e1", profile, "rx-1"))

    counts = [await engine.run_pass(T0 + timedelta(days=days)) for days in (3, 6, 9)]

    assert [c["sent"] for c in counts] == [1, 1, 0]
    assert counts[2]["escalated"] == 1
    assert [d.run_key for d in _deliveries(engine)] == ["rx:rx-1", "rx:rx-1#2"]
    [escalated] = _outbox(engine, "prescription_unfilled_escalated")
    payload = json.loads(escalated.payload)
    assert payload["profile_id"] == profile
    assert payload["properties"]["trigger"] == "rx:rx-1"
    assert payload["properties"]["reminders"] == 2
    again = await engine.run_pass(T0 + timedelta(days=12))
    assert again["escalated"] == 0


async def test_filled_prescription_stops_reminders(
        trigger_project: TriggerProject) -> None:
    trigger_project.write_campaign("refill_test", REFILL_CAMPAIGN)
    engine = BehaviourEngine(trigger_project.settings)
    profile = trigger_project.profile_ids[0]
    engine.inbox.accept(_written("rx-e1", profile, "rx-1"))
    await engine.run_pass(T0 + timedelta(days=3))
    engine.inbox.accept(IncomingEvent("fill-1", "events", "prescription_filled",
                                      profile, T0 + timedelta(days=4),
                                      {"rx_id": "rx-1"}))

    later = [await engine.run_pass(T0 + timedelta(days=d)) for d in (6, 9)]

    assert later[0]["cancelled"] == 1
    assert later[0]["sent"] == 0
    assert later[1]["escalated"] == 0
    assert len(_deliveries(engine)) == 1
    assert _outbox(engine, "prescription_unfilled_escalated") == []


async def test_fill_of_other_prescription_ignored(
        trigger_project: TriggerProject) -> None:
    trigger_project.write_campaign("refill_test", REFILL_CAMPAIGN)
    engine = BehaviourEngine(trigger_project.settings)
    profile = trigger_project.profile_ids[0]
    engine.inbox.accept(_written("rx-e1", profile, "rx-1"))
    engine.inbox.accept(IncomingEvent("fill-9", "events", "prescription_filled",
                                      profile, T0 + timedelta(days=1),
                                      {"rx_id": "rx-9"}))
    counts = await engine.run_pass(T0 + timedelta(days=3))
    assert counts["sent"] == 1


async def test_shipped_refill_campaign(trigger_project: TriggerProject) -> None:
    shipped = REPO / "campaigns" / "refill_reminder.yaml"
    trigger_project.write_campaign("refill_reminder", yaml.safe_load(shipped.read_text()))
    engine = BehaviourEngine(trigger_project.settings)
    profile = trigger_project.profile_ids[0]
    engine.inbox.accept(_written("rx-e1", profile, "rx-1"))

    counts = [await engine.run_pass(T0 + timedelta(days=days))
              for days in (6, 7, 10, 13, 16)]

    assert [c["sent"] for c in counts] == [0, 1, 1, 1, 0]
    assert counts[4]["escalated"] == 1
    assert len(_outbox(engine, "prescription_unfilled_escalated")) == 1
