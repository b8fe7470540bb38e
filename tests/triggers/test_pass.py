"""How a behaviour pass batches its work: audit entries, ledger claims,
transactions per send, and the warehouse connection kept by ``serve``.

Real DuckDB warehouse, SQLite ledger and STARTTLS server, as in
test_behaviour.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from sqlalchemy import event, update
from sqlmodel import Session, select

from carepost.core.states import DeliveryState, Purpose
from carepost.flows import serve
from carepost.flows.behaviour import BehaviourEngine
from carepost.ledger import AuditLog, ClaimStatus, Delivery, Settlement
from carepost.ledger.audit import parse_id_ranges
from carepost.ledger.inbox import IncomingEvent, PendingSend, PendingState
from carepost.ledger.ledger import ClaimRequest
from tests.triggers.conftest import TriggerProject

T0 = datetime(2024, 3, 6, 16, 20, tzinfo=UTC)


def _no_show(event_id: str, profile_id: str, appointment: str,
             at: datetime = T0) -> IncomingEvent:
    return IncomingEvent(event_id, "events", "appointment_no_show", profile_id, at,
                         {"appointment_id": appointment})


def _booked(event_id: str, profile_id: str, at: datetime) -> IncomingEvent:
    return IncomingEvent(event_id, "events", "appointment_booked", profile_id, at,
                         {"appointment_id": "ap-rebooked"})


def _deliveries(engine: BehaviourEngine) -> list[Delivery]:
    with Session(engine.ledger.engine) as session:
        return list(session.exec(select(Delivery).order_by(Delivery.id)))


@pytest.fixture
def engine(trigger_project: TriggerProject) -> Iterator[BehaviourEngine]:
    engine = BehaviourEngine(trigger_project.settings)
    yield engine
    engine.close()


async def test_pass_writes_one_audit_entry(trigger_project: TriggerProject,
                                           engine: BehaviourEngine) -> None:
    first, second, third = trigger_project.profile_ids[:3]
    engine.inbox.accept(_no_show("e-1", first, "ap-1"))
    engine.inbox.accept(_no_show("e-2", second, "ap-2"))
    engine.inbox.accept(_no_show("e-3", third, "ap-3"))
    engine.inbox.accept(_booked("b-3", third, T0 + timedelta(minutes=1)))

    counts = await engine.run_pass(T0 + timedelta(minutes=2))

    assert counts["sent"] == 2
    assert counts["cancelled"] == 1
    with AuditLog(trigger_project.settings.ledger_url) as audit:
        [entry] = list(audit.entries(action="delivery.batch"))
    details = entry.details_dict()
    assert entry.target == "no_show_followup"
    assert details["trigger"] == "behaviour"
    assert details["run_keys"].split(",") == [
        "appointment:ap-1", "appointment:ap-2", "appointment:ap-3"]
    assert details["profiles"] == 3
    assert details["sent"] == 2
    assert details["cancelled"] == 1
    sent_ids = [row.id for row in _deliveries(engine)]
    assert parse_id_ranges(details["delivery_ids"]) == sent_ids
    assert parse_id_ranges(details["sent_ids"]) == sent_ids


async def test_audit_entry_has_no_phi(trigger_project: TriggerProject,
                                      engine: BehaviourEngine) -> None:
    profile = trigger_project.profile_ids[0]
    with duckdb.connect(str(trigger_project.settings.warehouse_path)) as conn:
        email, first_name, last_name = conn.execute(
            "SELECT email, first_name, last_name FROM profiles WHERE profile_id = ?",
            [profile]).fetchone()
    engine.inbox.accept(_no_show("e-1", profile, "ap-1"))

    await engine.run_pass(T0 + timedelta(minutes=1))

    with AuditLog(trigger_project.settings.ledger_url) as audit:
        text = "\n".join(entry.details + entry.target for entry in audit.entries())
    assert text
    assert email not in text
    assert "@" not in text
    assert first_name not in text
    assert last_name not in text


async def test_empty_pass_writes_no_audit(trigger_project: TriggerProject,
                                          engine: BehaviourEngine) -> None:
    await engine.run_pass(T0)
    with AuditLog(trigger_project.settings.ledger_url) as audit:
        assert list(audit.entries(action="delivery.batch")) == []


async def test_resent_pass_lists_no_ids(trigger_project: TriggerProject,
                                        engine: BehaviourEngine) -> None:
    profile = trigger_project.profile_ids[0]
    engine.inbox.accept(_no_show("e-1", profile, "ap-1"))
    await engine.run_pass(T0 + timedelta(minutes=1))
    # Put the finished row back to pending, as a crash before the finish would.
    with Session(engine.ledger.engine) as session:
        session.exec(update(PendingSend).values(state=PendingState.PENDING))
        session.commit()

    again = await engine.run_pass(T0 + timedelta(minutes=2))

    assert again["already_done"] == 1
    assert len(_deliveries(engine)) == 1
    with AuditLog(trigger_project.settings.ledger_url) as audit:
        entries = list(audit.entries(action="delivery.batch"))
    assert len(entries) == 2
    assert entries[1].details_dict()["already_done"] == 1
    assert entries[1].details_dict()["delivery_ids"] == ""


async def test_pass_commits_two_per_send(trigger_project: TriggerProject,
                                         engine: BehaviourEngine) -> None:
    profiles = trigger_project.profile_ids[:10]
    for number, profile in enumerate(profiles):
        engine.inbox.accept(_no_show(f"e-{number}", profile, f"ap-{number}"))
    commits: list[int] = []
    event.listen(engine.ledger.engine, "commit", lambda _conn: commits.append(1))

    counts = await engine.run_pass(T0 + timedelta(minutes=1))

    assert counts["sent"] == len(profiles)
    # begin_send and settle per send; plan, claim, finish and the outbox
    # push once per pass, and the sender's TLS status tables on first use.
    assert len(commits) <= 2 * len(profiles) + 5


def _request(profile: str, run_key: str = "appointment:ap-1") -> ClaimRequest:
    return ClaimRequest("no_show_followup", run_key, profile, Purpose.CARE,
                        {"template": "missed_appointment"})


def test_claim_many_reports_existing_rows(engine: BehaviourEngine) -> None:
    ledger = engine.ledger
    sent = ledger.claim_many([_request("p-sent")])[0]
    ledger.begin_send(sent.delivery_id)
    ledger.settle(sent.delivery_id, Settlement(DeliveryState.SENT))
    sending = ledger.claim_many([_request("p-sending")])[0]
    ledger.begin_send(sending.delivery_id)
    queued = ledger.claim_many([_request("p-queued")])[0]

    claims = ledger.claim_many([_request("p-new"), _request("p-sent"),
                                _request("p-sending"), _request("p-queued")])

    assert [claim.status for claim in claims] == [
        ClaimStatus.CLAIMED, ClaimStatus.DONE, ClaimStatus.AMBIGUOUS,
        ClaimStatus.CLAIMED]
    assert claims[1].delivery_id == sent.delivery_id
    assert claims[2].delivery_id == sending.delivery_id
    assert claims[3].delivery_id == queued.delivery_id
    assert claims[0].delivery_id not in {sent.delivery_id, sending.delivery_id,
                                         queued.delivery_id}


def test_claim_many_keeps_row_fields(engine: BehaviourEngine) -> None:
    [claim] = engine.ledger.claim_many([_request("p-1")])
    [row] = _deliveries(engine)
    assert row.id == claim.delivery_id
    assert row.state == DeliveryState.QUEUED
    assert row.template == "missed_appointment"
    assert row.idempotency_key == "no_show_followup/appointment:ap-1/p-1"
    assert row.attempts == 0


def test_claim_many_of_nothing(engine: BehaviourEngine) -> None:
    assert engine.ledger.claim_many([]) == []


async def test_kept_warehouse_survives_passes(trigger_project: TriggerProject) -> None:
    engine = BehaviourEngine(trigger_project.settings, keep_warehouse_open=True)
    first, second = trigger_project.profile_ids[:2]
    try:
        engine.inbox.accept(_no_show("e-1", first, "ap-1"))
        await engine.run_pass(T0 + timedelta(minutes=1))
        assert engine.warehouse.is_open
        engine.inbox.accept(_no_show("e-2", second, "ap-2"))
        counts = await engine.run_pass(T0 + timedelta(minutes=2))
        assert counts["sent"] == 1
        assert engine.warehouse.is_open
        engine.release_warehouse()
        assert not engine.warehouse.is_open
        # Released, so a writer may open the file again.
        with duckdb.connect(str(trigger_project.settings.warehouse_path)) as conn:
            conn.execute("SELECT count(*) FROM profiles").fetchone()
    finally:
        engine.close()


async def test_one_off_pass_closes_warehouse(trigger_project: TriggerProject,
                                             engine: BehaviourEngine) -> None:
    engine.inbox.accept(_no_show("e-1", trigger_project.profile_ids[0], "ap-1"))
    await engine.run_pass(T0 + timedelta(minutes=1))
    assert not engine.warehouse.is_open


def _writable(path: str) -> bool:
    try:
        with duckdb.connect(path) as conn:
            conn.execute("SELECT 1").fetchone()
    except duckdb.Error:
        return False
    return True


async def test_dispatcher_releases_idle_warehouse(
        trigger_project: TriggerProject, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "WAREHOUSE_IDLE_SECONDS", 0.5)
    engine = BehaviourEngine(trigger_project.settings)
    engine.inbox.accept(_no_show("e-1", trigger_project.profile_ids[0], "ap-1",
                                 datetime.now(UTC)))
    engine.close()
    dispatcher = serve.TriggerDispatcher(trigger_project.settings, poll_seconds=5)
    dispatcher.start()
    path = str(trigger_project.settings.warehouse_path)
    try:
        dispatcher.wake("e-1")
        deadline = time.monotonic() + 30
        while trigger_project.smtp.messages_received < 1:
            assert time.monotonic() < deadline, "the triggered send never arrived"
            await asyncio.sleep(0.05)
        while not _writable(path):
            assert time.monotonic() < deadline, "the warehouse was never released"
            await asyncio.sleep(0.1)
    finally:
        await asyncio.to_thread(dispatcher.stop)
    assert trigger_project.smtp.messages_received == 1


async def test_plan_counts_new_keys_only(trigger_project: TriggerProject,
                                         engine: BehaviourEngine) -> None:
    profile = trigger_project.profile_ids[0]
    engine.inbox.accept(_no_show("e-1", profile, "ap-1"))
    engine.inbox.accept(_no_show("e-2", profile, "ap-1", T0 + timedelta(minutes=1)))
    engine.inbox.accept(_no_show("e-3", profile, "ap-2"))

    assert engine.plan() == 2
    assert engine.plan() == 0
    assert [row.run_key for row in engine.inbox.pending_rows()] == [
        "appointment:ap-1", "appointment:ap-2"]
    assert engine.inbox.unplanned() == []
