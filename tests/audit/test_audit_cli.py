"""``carepost audit export`` writes JSON Lines an auditor can re-verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from carepost.flows.cli import app
from carepost.ledger import AuditLog, Ledger
from carepost.ledger.audit import AuditEntry, verify_chain
from tests.conftest import REPO


@pytest.fixture
def config(tmp_path: Path) -> Path:
    raw = yaml.safe_load((REPO / "carepost.yaml").read_text())
    raw.update({"root": str(REPO), "state_dir": str(tmp_path / "state")})
    path = tmp_path / "carepost.yaml"
    path.write_text(yaml.safe_dump(raw))
    (tmp_path / "state").mkdir()
    url = f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    Ledger(url).close()
    with AuditLog(url) as audit:
        audit.append(action="segment.selected", target="flu", details={"count": 3})
        audit.append(action="delivery.batch", target="flu",
                     details={"delivery_ids": "1-3", "sent": 3})
    return path


def test_export_writes_verifiable_lines(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    result = CliRunner().invoke(app, ["audit", "export", "--since", "2000-01-01",
                                      "--out", str(out), "--config", str(config)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["action"] for record in records] == ["segment.selected",
                                                        "delivery.batch"]
    entries = [AuditEntry(**{**r, "details": json.dumps(r["details"])}) for r in records]
    assert verify_chain(entries).ok


def test_export_is_itself_audited(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    CliRunner().invoke(app, ["audit", "export", "--since", "2000-01-01",
                             "--out", str(out), "--config", str(config)])
    url = f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    with AuditLog(url) as audit:
        exported = list(audit.entries(action="audit.exported"))
    assert len(exported) == 1
    assert exported[0].details_dict() == {"since": "2000-01-01", "entries": 2}
    assert exported[0].target == "audit.jsonl"


def test_export_since_future_is_empty(config: Path) -> None:
    result = CliRunner().invoke(app, ["audit", "export", "--since", "2999-01-01",
                                      "--config", str(config)])
    assert result.exit_code == 0
    assert result.stdout == ""


def test_export_bad_date_is_usage_error(config: Path) -> None:
    result = CliRunner().invoke(app, ["audit", "export", "--since", "15/02/2024",
                                      "--config", str(config)])
    assert result.exit_code == 2
    assert "YYYY-MM-DD" in result.stderr
