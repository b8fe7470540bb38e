"""Conversion attribution: last human touch inside the goal window."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import duckdb
from sqlmodel import Session, select

from carepost.core.campaign import Campaign, Goal
from carepost.core.schema import create_tables
from carepost.core.states import Purpose
from carepost.flows.feedback import import_conversions
from carepost.ledger import Ledger, OutboxEvent
from carepost.ledger.engagement import (
    Engagement,
    Hit,
    Verdict,
    record_conversion,
    sync_goals,
)

from ..service.conftest import add_sent_delivery

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
GOALS = {"checkup_reminder": Goal(event="appointment_booked", within_days=7),
         "diabetes_education": Goal(event="appointment_booked", within_days=14)}


def _touch(ledger: Ledger, delivery_id: int, kind: str, at: datetime,
           verdict: Verdict = Verdict.HUMAN) -> None:
    engagement = Engagement(ledger)
    delivery = engagement.delivery(delivery_id)
    engagement.record(delivery, Hit(kind=kind, verdict=verdict, rule=None,
                                    occurred_at=at, link_index=0))


def test_conversion_goes_to_last_human_touch(ledger: Ledger) -> None:
    older = add_sent_delivery(ledger, "p-1", campaign="checkup_reminder",
                              purpose=Purpose.CARE)
    newer = add_sent_delivery(ledger, "p-1", campaign="diabetes_education",
                              purpose=Purpose.MARKETING)
    _touch(ledger, older, "open", T0)
    _touch(ledger, newer, "click", T0 + timedelta(days=2))
    _touch(ledger, older, "open", T0 + timedelta(days=3), Verdict.MACHINE)

    row = record_conversion(ledger, "p-1", "appointment_booked",
                            T0 + timedelta(days=4), "cdp-evt-1", goals=GOALS)

    assert row is not None
    assert row.delivery_id == newer
    assert row.campaign == "diabetes_education"
    with Session(ledger.engine) as session:
        pushed = session.exec(select(OutboxEvent)
                              .where(OutboxEvent.type == "conversion")).one()
    payload = json.loads(pushed.payload)
    assert payload["delivery_id"] == newer
    assert payload["properties"]["goal_event"] == "appointment_booked"
    assert payload["properties"]["machine"] is False


def test_conversion_outside_window_is_unattributed(ledger: Ledger) -> None:
    delivery = add_sent_delivery(ledger, "p-2", campaign="checkup_reminder",
                                 purpose=Purpose.CARE)
    _touch(ledger, delivery, "open", T0)

    row = record_conversion(ledger, "p-2", "appointment_booked",
                            T0 + timedelta(days=8), "cdp-evt-2", goals=GOALS)

    assert row is not None
    assert row.delivery_id is None


def test_machine_touch_does_not_attribute(ledger: Ledger) -> None:
    delivery = add_sent_delivery(ledger, "p-3", campaign="checkup_reminder",
                                 purpose=Purpose.CARE)
    _touch(ledger, delivery, "open", T0, Verdict.MACHINE)

    row = record_conversion(ledger, "p-3", "appointment_booked",
                            T0 + timedelta(hours=1), "cdp-evt-3", goals=GOALS)

    assert row.delivery_id is None


def test_repeated_event_id_counts_once(ledger: Ledger) -> None:
    delivery = add_sent_delivery(ledger, "p-4", campaign="checkup_reminder",
                                 purpose=Purpose.CARE)
    _touch(ledger, delivery, "click", T0)
    sync_goals(ledger, GOALS)

    first = record_conversion(ledger, "p-4", "appointment_booked",
                              T0 + timedelta(days=1), "cdp-evt-4")
    second = record_conversion(ledger, "p-4", "appointment_booked",
                               T0 + timedelta(days=1), "cdp-evt-4")

    assert first is not None
    assert first.delivery_id == delivery
    assert second is None


def test_other_event_types_are_not_goals(ledger: Ledger) -> None:
    delivery = add_sent_delivery(ledger, "p-5", campaign="checkup_reminder",
                                 purpose=Purpose.CARE)
    _touch(ledger, delivery, "click", T0)

    row = record_conversion(ledger, "p-5", "portal_login", T0 + timedelta(hours=1),
                            "cdp-evt-5", goals=GOALS)

    assert row.delivery_id is None


def test_import_reads_goal_events_from_warehouse(ledger: Ledger, tmp_path) -> None:
    delivery = add_sent_delivery(ledger, "p-6", campaign="checkup_reminder",
                                 purpose=Purpose.CARE)
    now = datetime.now(UTC)
    _touch(ledger, delivery, "open", now - timedelta(minutes=30))
    warehouse = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    create_tables(warehouse)
    rows = [("w-1", "p-6", "appointment_booked", now - timedelta(minutes=5)),
            ("w-2", "p-6", "encounter", now - timedelta(minutes=4)),
            ("w-3", "p-7", "appointment_booked", now - timedelta(minutes=3))]
    for event_id, profile_id, event_type, at in rows:
        warehouse.execute("INSERT INTO events (event_id, profile_id, type, "
                          "occurred_at, properties) VALUES (?, ?, ?, ?, '{}')",
                          [event_id, profile_id, event_type, at])
    campaign = Campaign(name="checkup_reminder", segment="s", template="t",
                        purpose=Purpose.CARE, goal=GOALS["checkup_reminder"])

    added = import_conversions(ledger, warehouse, [campaign])
    again = import_conversions(ledger, warehouse, [campaign])
    warehouse.close()

    assert added == 2
    assert again == 0
