"""``carepost report --html`` to a path that cannot be written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from carepost.flows.cli import app
from tests.conftest import REPO


@pytest.fixture
def config(tmp_path: Path) -> Path:
    raw = yaml.safe_load((REPO / "carepost.yaml").read_text(encoding="utf-8"))
    raw.update({"root": str(REPO), "state_dir": str(tmp_path / "state")})
    path = tmp_path / "carepost.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(("target", "reason", "hint"), [
    ("missing/dir/r.html", "No such file or directory", "create the folder"),
    ("", "Is a directory", "give a file name such as report.html"),
])
def test_unwritable_html_path(config: Path, tmp_path: Path, target: str,
                              reason: str, hint: str) -> None:
    html_path = tmp_path / target

    result = CliRunner().invoke(app, ["report", "checkup_reminder", "--html",
                                      str(html_path), "--config", str(config)])

    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.startswith(
        f"error: cannot write {html_path}: {reason} ({hint}")
    assert "Traceback" not in result.output
