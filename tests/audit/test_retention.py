"""Retention purge on a real SQLite ledger with rows aged by their timestamps."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from carepost.core.errors import ConfigError
from carepost.core.retention import LegalHold, RetentionSettings
from carepost.core.states import DeliveryState, Purpose
from carepost.ledger import AuditLog, Ledger, Settlement, outbox_event
from carepost.flows.campaign_check import reject_purged_run
from carepost.ledger.retention import check_legal_holds, purge_expired

NOW = datetime(2031, 6, 1, tzinfo=UTC)
POLICY = RetentionSettings(engagement_events=365, deliveries=400, outbox_pushed=30,
                           inbox_events=30, audit_entries=2555)


def _age(path: Path, statement: str, when: datetime) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute(statement, (when.replace(tzinfo=None).isoformat(" "),))


def _count(path: Path, table: str, where: str = "1=1") -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute(f"SELECT count(*) FROM {table} WHERE {where}"
                                  ).fetchone()[0]


def _deliveries(ledger: Ledger, campaign: str, states: list[DeliveryState]) -> None:
    for number, state in enumerate(states):
        claim = ledger.claim(campaign=campaign, run_key="2024-01-01",
                             profile_id=f"{campaign}-p{number}",
                             purpose=Purpose.CARE)
        if state is DeliveryState.SENDING:
            ledger.begin_send(claim.delivery_id)
        elif state is not DeliveryState.QUEUED:
            event = outbox_event("email_sent", delivery_id=claim.delivery_id,
                                 campaign=campaign, profile_id=f"{campaign}-p{number}",
                                 properties={})
            ledger.settle(claim.delivery_id, Settlement(state), [event])


@pytest.fixture
def aged_ledger(ledger_url: str, ledger_path: Path) -> Path:
    ledger = Ledger(ledger_url)
    _deliveries(ledger, "flu", [DeliveryState.SENT, DeliveryState.BOUNCED,
                                DeliveryState.SENDING, DeliveryState.QUEUED])
    _deliveries(ledger, "held", [DeliveryState.SENT])
    _deliveries(ledger, "recent", [DeliveryState.SENT])
    ledger.mark_pushed(event.event_id for event in ledger.pending_events())
    ledger.close()
    old = NOW - timedelta(days=500)
    _age(ledger_path, "UPDATE deliveries SET updated_at = ? WHERE campaign != 'recent'",
         old)
    _age(ledger_path, "UPDATE outbox SET pushed_at = ? WHERE campaign != 'recent'", old)
    _age(ledger_path, "UPDATE deliveries SET updated_at = ? WHERE campaign = 'recent'",
         NOW - timedelta(days=2))
    _age(ledger_path, "UPDATE outbox SET pushed_at = ? WHERE campaign = 'recent'",
         NOW - timedelta(days=2))
    return ledger_path


def test_purge_lists_purged_runs(aged_ledger: Path, ledger_url: str) -> None:
    """A run that lost rows is listed. A dry run and untouched runs are not."""
    purge_expired(ledger_url, POLICY, now=NOW, dry_run=True)
    ledger = Ledger(ledger_url)
    assert ledger.purged_at("flu", "2024-01-01") is None

    purge_expired(ledger_url, POLICY, now=NOW)
    assert ledger.purged_at("flu", "2024-01-01") is not None
    assert ledger.purged_at("held", "2024-01-01") is not None
    assert ledger.purged_at("recent", "2024-01-01") is None
    ledger.close()
    assert _count(aged_ledger, "purged_runs") == 2


def test_purged_run_rejected(aged_ledger: Path, ledger_url: str) -> None:
    purge_expired(ledger_url, POLICY, now=NOW)
    ledger = Ledger(ledger_url)
    try:
        with pytest.raises(ConfigError) as raised:
            reject_purged_run(ledger, "flu", date(2024, 1, 1))
        reject_purged_run(ledger, "flu", date(2024, 1, 2))
        reject_purged_run(ledger, "recent", date(2024, 1, 1))
    finally:
        ledger.close()
    assert "could send twice" in str(raised.value.hint)
    assert "flu for 2024-01-01" in str(raised.value)


def test_purge_removes_expired_final_rows(aged_ledger: Path, ledger_url: str) -> None:
    report = purge_expired(ledger_url, POLICY, now=NOW)
    assert report.removed["deliveries"] == 3  # flu sent + bounced, held sent
    assert report.removed["outbox_pushed"] == 3
    assert _count(aged_ledger, "deliveries", "campaign = 'flu'") == 2
    assert _count(aged_ledger, "deliveries",
                  "state IN ('sending', 'queued')") == 2
    assert _count(aged_ledger, "deliveries", "campaign = 'recent'") == 1
    assert _count(aged_ledger, "outbox", "campaign = 'recent'") == 1


def test_legal_hold_keeps_campaign_rows(aged_ledger: Path, ledger_url: str) -> None:
    policy = POLICY.model_copy(update={"legal_holds": (
        LegalHold(campaign="held", reason="matter 17"),)})
    report = purge_expired(ledger_url, policy, now=NOW)
    assert report.removed["deliveries"] == 2
    assert report.held_campaigns == ("held",)
    assert _count(aged_ledger, "deliveries", "campaign = 'held'") == 1
    assert _count(aged_ledger, "outbox", "campaign = 'held'") == 1


def test_dry_run_changes_nothing(aged_ledger: Path, ledger_url: str) -> None:
    before = _count(aged_ledger, "deliveries")
    report = purge_expired(ledger_url, POLICY, now=NOW, dry_run=True)
    assert report.removed["deliveries"] == 3
    assert _count(aged_ledger, "deliveries") == before
    assert _count(aged_ledger, "audit_log") == 0


def test_purge_is_audited_with_counts(aged_ledger: Path, ledger_url: str) -> None:
    report = purge_expired(ledger_url, POLICY, now=NOW, actor="cron")
    with AuditLog(ledger_url) as audit:
        entries = list(audit.entries(action="retention.purged"))
        assert audit.verify().ok
    assert len(entries) == 1
    assert entries[0].id == report.audit_entry_id
    assert entries[0].actor == "cron"
    details = entries[0].details_dict()
    assert details["removed_deliveries"] == 3
    assert details["removed_outbox_pushed"] == 3
    assert details["removed_engagement_events"] == 0
    assert details["removed_audit_entries"] == 0


def test_audit_prefix_purge_keeps_chain(audit: AuditLog, ledger_url: str,
                                        ledger_path: Path) -> None:
    for number in range(6):
        audit.append(action="segment.selected", target="flu",
                     details={"count": number})
    audit.append(action="segment.selected", target="held", details={"count": 1})
    audit.append(action="segment.selected", target="flu", details={"count": 9})
    # Ageing an entry means editing it, which the trigger rejects; so the
    # purge's "now" moves forward instead, past the first entries only.
    with sqlite3.connect(ledger_path) as connection:
        stamps = [row[0] for row in connection.execute(
            "SELECT created_at FROM audit_log ORDER BY id")]
    now = datetime.fromisoformat(stamps[3]) + timedelta(days=POLICY.audit_entries)
    report = purge_expired(ledger_url, POLICY, now=now)
    assert report.removed["audit_entries"] == 3
    remaining = list(audit.entries())
    assert remaining[0].id == 4
    verified = audit.verify()
    assert verified.ok, [p.describe() for p in verified.problems]


def test_audit_purge_stops_at_held_campaign(audit: AuditLog, ledger_url: str) -> None:
    audit.append(action="segment.selected", target="flu")
    audit.append(action="segment.selected", target="held")
    audit.append(action="segment.selected", target="flu")
    policy = POLICY.model_copy(update={"legal_holds": (
        LegalHold(campaign="held", reason="matter 17"),)})
    far_future = datetime.now(UTC) + timedelta(days=10_000)
    report = purge_expired(ledger_url, policy, now=far_future)
    assert report.removed["audit_entries"] == 1
    assert [entry.target for entry in audit.entries()][:2] == ["held", "flu"]
    assert audit.verify().ok


def test_deleted_prefix_without_record_reported(audit: AuditLog,
                                                ledger_path: Path) -> None:
    for number in range(3):
        audit.append(action="a", target="t", details={"n": number})
    with sqlite3.connect(ledger_path) as connection:
        connection.execute("DROP TRIGGER audit_log_no_delete")
        connection.execute("DELETE FROM audit_log WHERE id = 1")
    problems = audit.verify().problems
    assert [problem.entry_id for problem in problems] == [2]
    assert "no retention.purged entry" in problems[0].problem


def test_audit_retention_shorter_than_others_rejected() -> None:
    with pytest.raises(ValidationError, match="at least the longest"):
        RetentionSettings(deliveries=4000, audit_entries=3000)


def test_audit_retention_under_six_years_rejected() -> None:
    with pytest.raises(ValidationError, match="audit_entries"):
        RetentionSettings(audit_entries=365)


def test_legal_hold_typo_rejected(aged_ledger: Path, ledger_url: str) -> None:
    policy = RetentionSettings(
        legal_holds=(LegalHold(campaign="fluu", reason="matter 1"),))
    with pytest.raises(ConfigError) as raised:
        check_legal_holds(ledger_url, policy, configured={"checkup_reminder"})
    assert "'fluu'" in str(raised.value)
    assert "did you mean 'flu'?" in str(raised.value)


def test_legal_hold_known_names_accepted(aged_ledger: Path, ledger_url: str) -> None:
    """A hold may name a configured campaign or one with rows in the ledger."""
    policy = RetentionSettings(legal_holds=(
        LegalHold(campaign="held", reason="matter 1"),
        LegalHold(campaign="checkup_reminder", reason="matter 2")))
    check_legal_holds(ledger_url, policy, configured={"checkup_reminder"})
