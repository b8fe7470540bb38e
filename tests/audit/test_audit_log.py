"""The audit log API: append, chain, append-only triggers, PHI rejection."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from carepost.core.phi import PHI
from carepost.ledger import AuditError, AuditLog, Ledger
from carepost.ledger.audit import GENESIS_HASH, SERVICE_IDENTITY_ENV, compute_hash


def test_append_chains_entries(audit: AuditLog) -> None:
    first = audit.append(action="segment.selected", target="flu-shot",
                         details={"count": 12, "run_key": "2024-02-15"})
    second = audit.append(action="batch.sent", target="flu-shot", details=None)
    assert first.id == 1
    assert first.prev_hash == GENESIS_HASH
    assert second.id == 2
    assert second.prev_hash == first.entry_hash
    assert second.entry_hash == compute_hash(second)
    assert audit.verify().ok


def test_ledger_create_all_makes_table_and_triggers(ledger_url: str,
                                                    ledger_path: Path) -> None:
    Ledger(ledger_url).close()
    with sqlite3.connect(ledger_path) as connection:
        names = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
    assert "audit_log" in names
    assert "audit_log_no_update" in names
    assert "audit_log_no_delete" in names


def test_update_and_delete_abort(audit: AuditLog, ledger_path: Path) -> None:
    audit.append(action="config.changed", target="carepost.yaml")
    connection = sqlite3.connect(ledger_path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        connection.execute("UPDATE audit_log SET actor = 'someone-else'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        connection.execute("DELETE FROM audit_log")
    connection.close()
    assert audit.verify().entries == 1


@pytest.mark.parametrize("value", [
    "patient@example.test",
    "Sam <sam@example.org>",
    "ids 1,2 and x@y.example",
])
def test_email_like_detail_rejected(audit: AuditLog, value: str) -> None:
    with pytest.raises(AuditError, match="email address"):
        audit.append(action="export", target="report", details={"note": value})
    assert audit.verify().entries == 0


def test_email_like_target_rejected(audit: AuditLog) -> None:
    with pytest.raises(AuditError, match="target"):
        audit.append(action="preview", target="sam@example.org")


def test_phi_detail_rejected(audit: AuditLog) -> None:
    with pytest.raises(AuditError, match="PHI"):
        audit.append(action="preview", target="t", details={"name": PHI("Sam")})


def test_nested_detail_rejected(audit: AuditLog) -> None:
    with pytest.raises(AuditError, match="type list"):
        audit.append(action="preview", target="t",
                     details={"ids": ["p1", "p2"]})  # type: ignore[dict-item]


def test_bad_detail_key_rejected(audit: AuditLog) -> None:
    with pytest.raises(AuditError, match="not a lower-case identifier"):
        audit.append(action="preview", target="t", details={"First Name": 1})


def test_actor_from_service_identity(audit: AuditLog,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SERVICE_IDENTITY_ENV, "svc-carepost-prod")
    assert audit.append(action="a", target="t").actor == "svc-carepost-prod"
    assert audit.append(actor="alice", action="a", target="t").actor == "alice"


def test_actor_defaults_to_os_user(audit: AuditLog,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SERVICE_IDENTITY_ENV, raising=False)
    monkeypatch.setenv("LOGNAME", "os-user-7")
    monkeypatch.setenv("USER", "os-user-7")
    assert audit.append(action="a", target="t").actor == "os-user-7"


def test_record_change_only_on_new_hash(audit: AuditLog) -> None:
    first = audit.record_change(kind="config", target="carepost.yaml", sha256="a" * 64)
    same = audit.record_change(kind="config", target="carepost.yaml", sha256="a" * 64)
    changed = audit.record_change(kind="config", target="carepost.yaml",
                                  sha256="b" * 64)
    assert first is not None
    assert same is None
    assert changed is not None
    assert changed.details_dict()["previous_sha256"] == "a" * 64


def test_concurrent_appends_keep_chain(ledger_url: str) -> None:
    Ledger(ledger_url).close()
    logs = [AuditLog(ledger_url) for _ in range(4)]

    def append_many(log: AuditLog) -> None:
        for number in range(25):
            log.append(action="batch.sent", target="c", details={"batch": number})

    threads = [threading.Thread(target=append_many, args=(log,)) for log in logs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = logs[0].verify()
    for log in logs:
        log.close()
    assert report.entries == 100
    assert report.problems == []
