"""Commands that load CDP data work with named ``sources:`` only."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from carepost.flows.cli import app
from tests.flows.project import make_project


def _sources_only(folder: Path) -> Path:
    project = make_project(folder)
    raw = yaml.safe_load(project.config.read_text())
    raw["sources"] = {"clinic_export": raw.pop("source")}
    project.config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return project.config


def test_segment_preview_syncs_named_sources(tmp_path: Path) -> None:
    config = _sources_only(tmp_path / "project")

    result = CliRunner().invoke(app, ["segments", "preview", "missed_appointment",
                                      "--as-of", "2024-02-15", "--json",
                                      "--config", str(config)])

    assert result.exit_code == 0, result.output
    preview = json.loads(result.stdout)
    assert preview["count"] > 0
