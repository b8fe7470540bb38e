"""User errors on ``carepost run`` are one clear line, before any flow."""

from __future__ import annotations

from pathlib import Path

import yaml
from sqlmodel import Session
from typer.testing import CliRunner

from carepost.flows.cli import app
from carepost.ledger import Ledger
from carepost.ledger.models import PurgedRun
from tests.flows.project import make_project


def _run(config: Path, *args: str):
    return CliRunner().invoke(app, ["run", *args, "--config", str(config)])


def test_unknown_campaign_lists_known(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    result = _run(project.config, "missed_apointment", "--as-of", "2024-02-15")
    assert result.exit_code == 1
    assert "campaign 'missed_apointment' not found" in result.stderr
    assert "missed_appointment" in result.stderr
    assert "Traceback" not in result.output


def test_unknown_segment_named(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    path = project.root / "campaigns/missed_appointment.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["segment"] = "missed_appointments"
    path.write_text(yaml.safe_dump(raw))

    result = _run(project.config, "missed_appointment", "--as-of", "2024-02-15")

    assert result.exit_code == 1
    assert "segment 'missed_appointments' not found" in result.stderr
    assert not (project.state / "prefect" / "server.json").exists()


def test_unknown_stage_named(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    path = project.root / "campaigns/checkup_reminder.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["stage"] = "checkup_overdue"
    path.write_text(yaml.safe_dump(raw))

    result = _run(project.config, "checkup_reminder", "--as-of", "2024-02-15")

    assert result.exit_code == 1
    assert "has no stage 'checkup_overdue'" in result.stderr


def test_purged_run_rejected_early(tmp_path: Path) -> None:
    """A run whose rows the retention purge removed is rejected before any flow."""
    project = make_project(tmp_path / "project")
    project.state.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(f"sqlite:///{project.state / 'ledger.db'}")
    with Session(ledger.engine) as session:
        session.add(PurgedRun(campaign="missed_appointment", run_key="2024-02-15"))
        session.commit()
    ledger.close()

    result = _run(project.config, "missed_appointment", "--as-of", "2024-02-15")

    assert result.exit_code == 1
    assert "retention purge removed its delivery rows" in result.stderr
    assert "could send twice" in result.stderr
    assert not (project.state / "prefect" / "server.json").exists()
