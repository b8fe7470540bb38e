"""An attacker with write access to the ledger file edits, deletes or
reorders audit entries; ``carepost audit verify`` names each one."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from carepost.flows.cli import app
from carepost.ledger import AuditLog, Ledger
from tests.conftest import REPO


@pytest.fixture
def project(tmp_path: Path) -> Path:
    raw = yaml.safe_load((REPO / "carepost.yaml").read_text())
    raw.update({"root": str(REPO), "state_dir": str(tmp_path / "state")})
    config = tmp_path / "carepost.yaml"
    config.write_text(yaml.safe_dump(raw))
    url = f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    (tmp_path / "state").mkdir()
    Ledger(url).close()
    with AuditLog(url) as audit:
        for number in range(1, 6):
            audit.append(actor="alice", action="delivery.batch", target="flu",
                         details={"count": number})
    return config


def _tamper(config: Path, *statements: str) -> None:
    with sqlite3.connect(config.parent / "state" / "ledger.db") as connection:
        connection.execute("DROP TRIGGER audit_log_no_update")
        connection.execute("DROP TRIGGER audit_log_no_delete")
        for statement in statements:
            connection.execute(statement)


def _verify(config: Path) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["audit", "verify", "--json",
                                      "--config", str(config)])
    return result.exit_code, json.loads(result.stdout)


def test_intact_log_verifies(project: Path) -> None:
    code, report = _verify(project)
    assert code == 0
    assert report["ok"] is True
    assert report["entries"] == 5


def test_edited_entry_named(project: Path) -> None:
    _tamper(project, "UPDATE audit_log SET actor = 'mallory' WHERE id = 3")
    code, report = _verify(project)
    assert code == 1
    problems = report["problems"]
    assert [problem["entry_id"] for problem in problems] == [3]
    assert "edited" in problems[0]["problem"]
    assert problems[0]["expected"] != problems[0]["found"]


def test_edited_and_rehashed_entry_named(project: Path) -> None:
    # Recomputing the edited entry's own hash breaks the next entry's link.
    with AuditLog(f"sqlite:///{project.parent / 'state' / 'ledger.db'}") as audit:
        entry = next(e for e in audit.entries() if e.id == 3)
    entry.actor = "mallory"
    from carepost.ledger.audit import compute_hash

    forged = compute_hash(entry)
    _tamper(project, f"UPDATE audit_log SET actor = 'mallory', "
                     f"entry_hash = '{forged}' WHERE id = 3")
    code, report = _verify(project)
    assert code == 1
    assert [problem["entry_id"] for problem in report["problems"]] == [4]
    assert report["problems"][0]["found"] != forged


def test_deleted_entry_named(project: Path) -> None:
    _tamper(project, "DELETE FROM audit_log WHERE id = 2")
    code, report = _verify(project)
    assert code == 1
    assert {problem["entry_id"] for problem in report["problems"]} == {3}
    assert any("missing" in problem["problem"] for problem in report["problems"])


def test_reordered_entries_named(project: Path) -> None:
    _tamper(project,
            "UPDATE audit_log SET id = -2 WHERE id = 2",
            "UPDATE audit_log SET id = 2 WHERE id = 4",
            "UPDATE audit_log SET id = 4 WHERE id = -2")
    code, report = _verify(project)
    assert code == 1
    assert {problem["entry_id"] for problem in report["problems"]} >= {2, 4}


def test_verify_text_names_entry(project: Path) -> None:
    _tamper(project, "UPDATE audit_log SET details = '{\"count\":99}' WHERE id = 5")
    result = CliRunner().invoke(app, ["audit", "verify", "--config", str(project)])
    assert result.exit_code == 1
    assert "entry 5" in result.stderr
    assert "expected" in result.stderr
