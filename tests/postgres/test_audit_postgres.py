"""The audit log and the retention purge on a real PostgreSQL server.

The portable tests of ``tests/audit`` run here again through this
folder's fixtures; the rest cover the PostgreSQL triggers and concurrent
writers.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from carepost.core.retention import LegalHold, RetentionSettings
from carepost.core.states import DeliveryState, Purpose
from carepost.ledger import AuditLog, Ledger, Settlement, outbox_event
from carepost.ledger.retention import purge_expired
from tests.audit.test_audit_log import (  # noqa: F401  run again on PostgreSQL
    test_append_chains_entries,
    test_bad_detail_key_rejected,
    test_concurrent_appends_keep_chain,
    test_email_like_detail_rejected,
    test_nested_detail_rejected,
    test_phi_detail_rejected,
    test_record_change_only_on_new_hash,
)

pytestmark = pytest.mark.postgres

NOW = datetime(2031, 6, 1, tzinfo=UTC)
POLICY = RetentionSettings(engagement_events=365, deliveries=400, outbox_pushed=30,
                           inbox_events=30, audit_entries=2555)
STATEMENTS = {
    "UPDATE": "UPDATE audit_log SET actor = 'someone-else'",
    "DELETE": "DELETE FROM audit_log",
    "TRUNCATE": "TRUNCATE audit_log",
}


def execute(url: str, statement: str, **values: object) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement), values)
    finally:
        engine.dispose()


@pytest.mark.parametrize("operation", list(STATEMENTS))
def test_trigger_rejects_change(audit: AuditLog, ledger_url: str,
                                operation: str) -> None:
    audit.append(action="config.changed", target="carepost.yaml")
    with pytest.raises(DBAPIError, match=f"append-only: {operation} rejected"):
        execute(ledger_url, STATEMENTS[operation])
    assert audit.verify().entries == 1
    assert audit.verify().ok


def test_missing_triggers_restored(audit: AuditLog, ledger_url: str) -> None:
    """An audit_log made before the triggers existed gets them on open."""
    audit.append(action="config.changed", target="carepost.yaml")
    for name in ("audit_log_no_update", "audit_log_no_delete",
                 "audit_log_no_truncate"):
        execute(ledger_url, f"DROP TRIGGER {name} ON audit_log")
    AuditLog(ledger_url).close()
    with pytest.raises(DBAPIError, match="append-only"):
        execute(ledger_url, STATEMENTS["DELETE"])


def test_prefix_purge_keeps_chain_and_trigger(audit: AuditLog,
                                              ledger_url: str) -> None:
    for number in range(6):
        audit.append(action="segment.selected", target="flu",
                     details={"count": number})
    audit.append(action="segment.selected", target="held", details={"count": 1})
    # Ageing an entry means editing it, which the trigger rejects; so the
    # purge's "now" moves forward instead, past the first four entries.
    fourth = [entry.created_at for entry in audit.entries()][3]
    now = datetime.fromisoformat(fourth) + timedelta(days=POLICY.audit_entries)
    policy = POLICY.model_copy(update={"legal_holds": (
        LegalHold(campaign="held", reason="matter 17"),)})

    report = purge_expired(ledger_url, policy, now=now)

    assert report.removed["audit_entries"] == 3
    assert [entry.id for entry in audit.entries()][0] == 4
    verified = audit.verify()
    assert verified.ok, [problem.describe() for problem in verified.problems]
    with pytest.raises(DBAPIError, match="append-only: DELETE rejected"):
        execute(ledger_url, STATEMENTS["DELETE"])


def test_purge_during_appends_keeps_chain(audit: AuditLog, ledger_url: str) -> None:
    """Appends from other engines while the purge removes and re-anchors."""
    for number in range(20):
        audit.append(action="batch.sent", target="flu", details={"batch": number})
    writers = [AuditLog(ledger_url) for _ in range(3)]
    start = threading.Barrier(len(writers) + 1)

    def append_many(log: AuditLog) -> None:
        start.wait()
        for number in range(15):
            log.append(action="batch.sent", target="flu", details={"batch": number})

    threads = [threading.Thread(target=append_many, args=(log,)) for log in writers]
    for thread in threads:
        thread.start()
    start.wait()
    report = purge_expired(ledger_url, POLICY,
                           now=datetime.now(UTC) + timedelta(days=POLICY.audit_entries))
    for thread in threads:
        thread.join()
    for log in writers:
        log.close()

    verified = audit.verify()
    assert verified.ok, [problem.describe() for problem in verified.problems]
    assert report.removed["audit_entries"] >= 20
    assert verified.entries == 20 + 45 + 1 - report.removed["audit_entries"]


def _aged_ledger(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    for campaign in ("flu", "recent"):
        for number, state in enumerate([DeliveryState.SENT, DeliveryState.SENDING]):
            profile_id = f"{campaign}-p{number}"
            claim = ledger.claim(campaign=campaign, run_key="2024-01-01",
                                 profile_id=profile_id, purpose=Purpose.CARE)
            ledger.begin_send(claim.delivery_id)
            if state is DeliveryState.SENT:
                event = outbox_event("email_sent", delivery_id=claim.delivery_id,
                                     campaign=campaign, profile_id=profile_id,
                                     properties={})
                ledger.settle(claim.delivery_id, Settlement(state), [event])
    ledger.mark_pushed(event.event_id for event in ledger.pending_events())
    ledger.close()
    for table, column in (("deliveries", "updated_at"), ("outbox", "pushed_at")):
        execute(ledger_url, f"UPDATE {table} SET {column} = :old "
                "WHERE campaign = 'flu'", old=NOW - timedelta(days=500))
        execute(ledger_url, f"UPDATE {table} SET {column} = :recent "
                "WHERE campaign = 'recent'", recent=NOW - timedelta(days=2))


def _count(url: str, statement: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(statement)).scalar_one())
    finally:
        engine.dispose()


def test_purge_removes_expired_rows(ledger_url: str) -> None:
    _aged_ledger(ledger_url)

    dry = purge_expired(ledger_url, POLICY, now=NOW, dry_run=True)
    report = purge_expired(ledger_url, POLICY, now=NOW, actor="cron")

    assert dry.removed["deliveries"] == 1
    assert report.removed["deliveries"] == 1  # flu sent; sending is kept
    assert report.removed["outbox_pushed"] == 1
    assert _count(ledger_url, "SELECT count(*) FROM deliveries") == 3
    assert _count(ledger_url, "SELECT count(*) FROM outbox") == 1
    with AuditLog(ledger_url) as audit:
        [entry] = audit.entries(action="retention.purged")
        assert audit.verify().ok
    assert entry.actor == "cron"
    assert entry.details_dict()["removed_deliveries"] == 1
