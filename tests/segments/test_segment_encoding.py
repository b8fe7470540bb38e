"""``carepost segments validate`` with spec files that are not UTF-8."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from carepost.flows.cli import app
from carepost.segments import load_folder
from carepost.segments.yamlsource import SpecEncodingError, load_spec_file
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The shipped specs, one saved as Latin-1 and one as UTF-16 with a BOM."""
    folder = tmp_path / "segments"
    shutil.copytree(REPO / "segments" / "library", folder)
    latin1 = folder / "missed_appointment.yaml"
    latin1.write_bytes(("# Café\n" + latin1.read_text(encoding="utf-8")).encode("latin-1"))
    utf16 = folder / "patient_lifecycle.yaml"
    utf16.write_bytes(utf16.read_text(encoding="utf-8").encode("utf-16"))
    (folder / "broken.yaml").write_text("kind: condition\n", encoding="utf-8")
    config = tmp_path / "carepost.yaml"
    config.write_text(
        "practice: {name: Test Practice, postal_address: 1 Main St}\n"
        "sender: {address: care@example.test, name: Test}\n"
        "segments_dir: segments\nstate_dir: state\n",
        encoding="utf-8",
    )
    return config


def test_spec_error_names_byte(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(b"kind: condition\ndescription: Caf\xe9\n")

    with pytest.raises(SpecEncodingError) as caught:
        load_spec_file(path)

    error = caught.value
    assert str(error) == f"{path}: not UTF-8 text (byte 0xe9 at offset 32); save it as UTF-8"
    assert (error.line, error.column) == (2, 17)
    assert error.found == "byte 0xe9 at offset 32"


def test_validate_reports_every_file(project: Path) -> None:
    folder = project.parent / "segments"

    result = CliRunner().invoke(app, ["segments", "validate", "--config", str(project)])

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert f"{folder / 'missed_appointment.yaml'}: not UTF-8 text (byte 0xe9 at " \
        "offset 5); save it as UTF-8" in lines
    assert f"{folder / 'patient_lifecycle.yaml'}: not UTF-8 text (byte 0xff at " \
        "offset 0, a UTF-16 byte order mark); save it as UTF-8" in lines
    assert any(line.startswith(f"{folder / 'broken.yaml'}:") for line in lines)
    assert "Traceback" not in result.output


def test_validate_json_keeps_fields(project: Path) -> None:
    result = CliRunner().invoke(app, ["segments", "validate", "--json", "--config",
                                      str(project)])

    report = json.loads(result.stdout)
    assert report["valid"] == ["diabetes_prediabetes_adults"]
    [problem] = [p for p in report["problems"] if p["file"].endswith("missed_appointment.yaml")]
    assert problem["expected"] == "UTF-8 text"
    assert problem["found"] == "byte 0xe9 at offset 5"
    assert (problem["line"], problem["column"]) == (1, 6)


def test_folder_keeps_name_of_bad_file(project: Path) -> None:
    loaded = load_folder(project.parent / "segments")

    assert "missed_appointment" in loaded.file_names
    assert "missed_appointment" not in loaded.specs
