"""``carepost segments validate|sql|preview`` on the shipped sample export."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from carepost.flows.cli import app
from carepost.ledger.audit import AuditLog
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
RUN_DATE = "2024-02-15"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose config points at the sample export and a copy of the specs."""
    shutil.copytree(REPO / "segments" / "library", tmp_path / "segments")
    config = tmp_path / "carepost.yaml"
    config.write_text(
        "practice: {name: Test Practice, postal_address: 1 Main St}\n"
        "sender: {address: care@example.test, name: Test}\n"
        "source:\n"
        f"  profiles: {REPO / 'data/sample/profiles.csv'}\n"
        f"  events: {REPO / 'data/sample/events.parquet'}\n"
        "segments_dir: segments\n"
        "state_dir: state\n",
        encoding="utf-8",
    )
    return config


def invoke(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["segments", *args, "--config", str(config)])
    return result.exit_code, result.stdout, result.stderr


def test_validate_shipped(project: Path) -> None:
    code, out, _err = invoke(project, "validate")
    assert code == 0
    assert "3 segment files are valid" in out


def test_validate_lists_every_problem(project: Path) -> None:
    folder = project.parent / "segments"
    (folder / "broken.yaml").write_text(
        "kind: condition\ndescription: x\nwhere:\n  all:\n"
        "    - {trait: conditions, contians: {code: '1'}}\n"
        "    - {event: encounter, within: 14}\n",
        encoding="utf-8",
    )
    (folder / "other.yaml").write_text(
        "kind: condition\ndescription: x\nwhere: {in_segment: missed_appointmnet}\n",
        encoding="utf-8",
    )
    code, out, err = invoke(project, "validate")
    assert code == 1
    lines = out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].endswith(
        "broken.yaml:5:27: where.all[0].contians: expected one of trait, equals, "
        "not_equals, in, not_in, lt, lte, gt, gte, between, exists, contains, "
        "found unknown key 'contians' (did you mean contains?)"
    )
    assert "broken.yaml:6:34: where.all[1].within: expected a window" in lines[1]
    assert "(did you mean missed_appointment?)" in lines[2]
    assert "3 problems in 5 segment files" in err


def test_validate_json(project: Path) -> None:
    (project.parent / "segments" / "bad.yaml").write_text(
        "kind: condition\ndescription: x\nwhere: {trait: sexx, equals: F}\n"
    )
    code, out, _err = invoke(project, "validate", "--json")
    report = json.loads(out)
    assert code == 1
    assert report["problems"][0]["key_path"] == "where.trait"
    assert report["problems"][0]["suggestion"] == "sex"
    assert "missed_appointment" in report["valid"]


def test_sql_prints_parameters(project: Path) -> None:
    code, out, _err = invoke(project, "sql", "missed_appointment")
    assert code == 0
    assert "event1.type = $p0" in out
    assert '$p0 = "appointment_no_show"' in out
    assert "$p1 = 14" in out
    assert "appointment_no_show" not in out.split(";")[0]


def test_sql_stage_json(project: Path) -> None:
    code, out, _err = invoke(
        project, "sql", "patient_lifecycle", "--stage", "checkup_due", "--json"
    )
    compiled = json.loads(out)
    assert code == 0
    assert "checkup_due" in compiled["params"].values()
    assert "checkup_due" not in compiled["sql"]


def test_sql_unknown_segment(project: Path) -> None:
    code, _out, err = invoke(project, "sql", "missed_apointment")
    assert code == 1
    assert "did you mean missed_appointment?" in err


def test_preview_masks_phi(project: Path) -> None:
    code, out, _err = invoke(
        project, "preview", "patient_lifecycle", "--as-of", RUN_DATE
    )
    assert code == 0
    assert "patient_lifecycle (lifecycle) as of 2024-02-15: 100 profiles" in out
    assert "checkup_due" in out
    assert "@example.test" not in out
    assert "[PHI]" in out


def test_preview_json_breakdowns(project: Path) -> None:
    code, out, _err = invoke(
        project, "preview", "patient_lifecycle", "--as-of", RUN_DATE, "--json"
    )
    result = json.loads(out)
    assert code == 0
    assert sum(result["by_stage"].values()) == result["count"] == 100
    assert sum(result["by_state"].values()) == 100
    assert sum(result["by_age_band"].values()) == 100
    assert len(result["sample"]) == 5
    assert {row["email"] for row in result["sample"]} == {"[PHI]"}
    assert result["phi_shown"] is False


def test_preview_show_phi_audited(project: Path) -> None:
    code, out, _err = invoke(
        project,
        "preview",
        "missed_appointment",
        "--as-of",
        RUN_DATE,
        "--show-phi",
        "--json",
    )
    result = json.loads(out)
    assert code == 0
    assert all(row["email"].endswith("@example.test") for row in result["sample"])
    ledger = project.parent / "state" / "ledger.db"
    with AuditLog(f"sqlite:///{ledger}") as audit:
        (entry,) = list(audit.entries(action="segment.preview_phi"))
    details = entry.details_dict()
    assert entry.target == "segment:missed_appointment"
    assert details["profile_ids"] == ",".join(
        row["profile_id"] for row in result["sample"]
    )
    assert details["as_of"] == RUN_DATE


def test_show_phi_refused_without_audit(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "carepost.ledger.audit", None)
    code, out, err = invoke(project, "preview", "missed_appointment", "--show-phi")
    assert code == 1
    assert "--show-phi needs the audit log" in err
    assert "@" not in out


def test_preview_no_load_needs_warehouse(project: Path) -> None:
    code, _out, err = invoke(project, "preview", "missed_appointment", "--no-load")
    assert code == 1
    assert "does not exist yet" in err


def test_preview_bad_date(project: Path) -> None:
    code, _out, err = invoke(
        project, "preview", "missed_appointment", "--as-of", "15/02"
    )
    assert code == 2
    assert "YYYY-MM-DD" in err
