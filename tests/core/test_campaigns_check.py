"""``carepost campaigns --check``: the segment, stage, template and purpose."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from carepost.flows.cli import app
from tests.conftest import REPO

SEGMENTS = "diabetes_prediabetes_adults, missed_appointment, patient_lifecycle"
TEMPLATES = "checkup_reminder, diabetes_education, missed_appointment, refill_reminder"

GOOD = """\
segment: patient_lifecycle
stage: checkup_due
template: checkup_reminder
purpose: care
"""


def _project(folder: Path, campaigns: dict[str, str]) -> Path:
    """Write a project whose campaigns are ``campaigns``, with the shipped library."""
    raw = yaml.safe_load((REPO / "carepost.yaml").read_text(encoding="utf-8"))
    raw.update({
        "root": str(folder),
        "state_dir": str(folder / "state"),
        "campaigns_dir": "campaigns",
        "segments_dir": str(REPO / "segments/library"),
        "templates_dir": "templates",
    })
    shutil.copytree(REPO / "templates/library", folder / "templates")
    (folder / "campaigns").mkdir()
    for name, text in campaigns.items():
        (folder / "campaigns" / f"{name}.yaml").write_text(text, encoding="utf-8")
    config = folder / "carepost.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return config


def _invoke(config: Path, *options: str):
    return CliRunner().invoke(app, ["campaigns", *options, "--config", str(config)])


def test_shipped_campaigns_pass_check() -> None:
    result = _invoke(REPO / "carepost.yaml", "--check")

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "checked 5 campaigns: 0 problems" in result.stderr


def test_each_problem_one_line(tmp_path: Path) -> None:
    config = _project(tmp_path, {
        "good": GOOD,
        "lost_segment": GOOD.replace("patient_lifecycle", "patient_lifecycel"),
        "lost_stage": GOOD.replace("checkup_due", "checkup_overdue"),
        "stray_stage": "segment: missed_appointment\nstage: new_patient\n"
                       "template: missed_appointment\npurpose: care\n",
        "lost_template": GOOD.replace("template: checkup_reminder",
                                      "template: checkup"),
        "wrong_purpose": "segment: diabetes_prediabetes_adults\n"
                         "template: diabetes_education\npurpose: care\n",
    })

    result = _invoke(config, "--check")

    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        f"campaigns/lost_segment.yaml: segment 'patient_lifecycel' not found "
        f"(known: {SEGMENTS})",
        "campaigns/lost_stage.yaml: segment 'patient_lifecycle' has no stage "
        "'checkup_overdue' (stages: new_patient, re_engagement, checkup_due, "
        "active_care)",
        f"campaigns/lost_template.yaml: template 'checkup' not found "
        f"(known: {TEMPLATES})",
        "campaigns/stray_stage.yaml: stage 'new_patient' given, but segment "
        "'missed_appointment' is not a lifecycle segment and has no stages; "
        "remove stage:",
        "campaigns/wrong_purpose.yaml: template 'diabetes_education' has "
        "purpose 'marketing' but the campaign has purpose 'care'; make them "
        "equal, because the purpose decides which consent a send needs",
    ]
    assert "checked 6 campaigns: 5 problems" in result.stderr


def test_unloadable_file_reported(tmp_path: Path) -> None:
    config = _project(tmp_path, {
        "good": GOOD,
        "twice": GOOD + "purpose: marketing\n",
    })

    result = _invoke(config, "--check")

    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"{tmp_path / 'campaigns' / 'twice.yaml'}:5:1: duplicate key 'purpose'")


def test_invalid_template_reported(tmp_path: Path) -> None:
    config = _project(tmp_path, {"good": GOOD})
    broken = tmp_path / "templates" / "checkup_reminder.html.j2"
    broken.write_text(broken.read_text(encoding="utf-8").replace(
        "purpose: care", "purpose: sales"), encoding="utf-8")

    result = _invoke(config, "--check")

    assert result.exit_code == 1, result.output
    assert result.stdout.startswith(
        "campaigns/good.yaml: template 'checkup_reminder' is invalid: ")
    assert "invalid purpose 'sales'" in result.stdout


def test_plain_listing_prints_names(tmp_path: Path) -> None:
    config = _project(tmp_path, {
        "good": GOOD,
        "lost_segment": GOOD.replace("patient_lifecycle", "nowhere"),
    })

    result = _invoke(config)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["good", "lost_segment"]
