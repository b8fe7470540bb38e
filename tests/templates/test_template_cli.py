"""``carepost templates check``, ``lint`` and ``preview`` on real folders."""

from __future__ import annotations

import json
import shutil
import stat
import textwrap
from pathlib import Path

import duckdb
import pytest
from carepost.core.schema import create_tables
from carepost.flows.cli_templates import PHI_ACTION, app
from carepost.ledger.audit import AuditLog
from typer.testing import CliRunner

from .conftest import SHIPPED, front_matter

runner = CliRunner()


def config(tmp_path: Path, library: Path, sender: str = "Lakeside Family Clinic") -> Path:
    path = tmp_path / "carepost.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            practice:
              name: Lakeside Family Clinic
              postal_address: 100 Main St, Springfield, IL 62701
              website: https://www.lakeside.example.test
            sender:
              address: care@lakeside.example.test
              name: {sender}
            source:
              profiles: profiles.csv
              events: events.parquet
            state_dir: {tmp_path / "state"}
            templates_dir: {library}
            """
        ),
        "utf-8",
    )
    return path


def copy_library(tmp_path: Path) -> Path:
    library = tmp_path / "library"
    shutil.copytree(SHIPPED, library)
    return library


def add_template(library: Path, name: str, body: str, **front: str) -> None:
    (library / f"{name}.html.j2").write_text(
        front_matter(**front) + textwrap.dedent(body), "utf-8"
    )


def test_check_shipped(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", "--config", str(config(tmp_path, SHIPPED)),
                                 "--json"])
    report = json.loads(result.stdout)

    assert result.exit_code == 0, result.output
    assert report["problems"] == []
    assert report["samples"] == 6
    assert report["renders"] == 24
    assert report["templates"] == [
        "checkup_reminder", "diabetes_education", "missed_appointment", "refill_reminder"
    ]


def test_check_reports_file_and_line(tmp_path: Path) -> None:
    library = copy_library(tmp_path)
    add_template(library, "divides", "<p>Hi</p>\n<p>{{ age / 0 }}</p>\n",
                 fields="[first_name, age]")
    add_template(library, "undeclared", "<p>{{ last_name }}</p>\n")
    result = runner.invoke(app, ["check", "--config", str(config(tmp_path, library))])
    lines = result.stdout.splitlines()

    assert result.exit_code == 1
    assert f"{library / 'undeclared.html.j2'}:7: 'last_name' is not a declared field " \
        "of template 'undeclared'" in lines
    assert f"{library / 'divides.html.j2'}:8: sample 'en-complete': render error " \
        "(ZeroDivisionError)" in lines
    assert "Maribel" not in result.output


def test_lint_shipped_clean(tmp_path: Path) -> None:
    result = runner.invoke(app, ["lint", "--config", str(config(tmp_path, SHIPPED))])
    assert result.exit_code == 0, result.output
    assert "no health information" in result.stdout


def test_lint_finds_disclosures(tmp_path: Path) -> None:
    library = copy_library(tmp_path)
    add_template(
        library,
        "leaky",
        """\
        <p><a href="{{ practice.website }}/programs/diabetes-care">Join</a></p>
        <p><a href="{{ practice.website }}/book?who={{ last_name | urlencode }}">Book</a></p>
        """,
        fields="[first_name, last_name]",
    )
    text = library / "leaky.html.j2"
    text.write_text(text.read_text().replace("purpose: care\n",
                                             "purpose: care\nsender_name: Cancer Center\n"))
    path = config(tmp_path, library, sender="Lakeside Oncology Associates")
    result = runner.invoke(app, ["lint", "--config", str(path)])
    output = result.stdout

    assert result.exit_code == 1
    assert f"{path}: sender name names a health condition ('Oncology')" in output
    assert f"{text}:5: sender_name names a health condition ('Cancer')" in output
    assert "URL names a health condition ('diabetes')" in output
    assert "a URL contains the profile field 'last_name' (sample 'en-complete')" in output
    assert "Okonkwo" not in output


def test_lint_reports_subject_rule(tmp_path: Path) -> None:
    library = copy_library(tmp_path)
    add_template(library, "subject", "<p>x</p>\n", subject="Your diabetes results")
    result = runner.invoke(app, ["lint", "--config", str(config(tmp_path, library))])

    assert result.exit_code == 1
    assert "'subject' names a health condition ('diabetes')" in result.stdout


def test_preview_sample(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "preview", "missed_appointment", "--profile", "es-complete", "--out", str(out),
        "--config", str(config(tmp_path, SHIPPED)), "--json",
    ])
    files = json.loads(result.stdout)

    assert result.exit_code == 0, result.output
    assert files["language"] == "es"
    html = Path(files["html"]).read_text("utf-8")
    assert "Hola, Graciela:" in html
    assert "/c/" not in html
    assert "Hola, Graciela:" in Path(files["text"]).read_text("utf-8")
    widths = Path(files["widths"]).read_text("utf-8")
    assert 'width="1200"' in widths
    assert 'width="375"' in widths
    assert f'src="{Path(files["html"]).name}"' in widths


def test_preview_unknown_sample(tmp_path: Path) -> None:
    result = runner.invoke(app, ["preview", "refill_reminder", "--profile", "nobody",
                                 "--config", str(config(tmp_path, SHIPPED))])
    assert result.exit_code == 1
    assert "no sample profile 'nobody'" in result.stderr
    assert "en-complete" in result.stderr


def test_real_profile_needs_show_phi(tmp_path: Path) -> None:
    result = runner.invoke(app, ["preview", "refill_reminder", "--profile-id", "p1",
                                 "--config", str(config(tmp_path, SHIPPED))])
    assert result.exit_code == 2
    assert "--show-phi" in result.stderr


def test_real_profile_preview_audited(tmp_path: Path) -> None:
    path = config(tmp_path, SHIPPED)
    (tmp_path / "state").mkdir()
    conn = duckdb.connect(str(tmp_path / "state" / "warehouse.duckdb"))
    create_tables(conn)
    conn.execute(
        "INSERT INTO profiles (profile_id, email, first_name, timezone, language) "
        "VALUES ('p-77', 'ana@example.org', 'Anabel', 'America/Chicago', 'es')"
    )
    conn.close()
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "preview", "refill_reminder", "--profile-id", "p-77", "--show-phi",
        "--out", str(out), "--config", str(path),
    ])

    assert result.exit_code == 0, result.output
    html = out / "refill_reminder.profile-p-77.html"
    assert "Hola, Anabel:" in html.read_text("utf-8")
    assert stat.S_IMODE(html.stat().st_mode) == 0o600
    assert "patient's data" in result.stderr
    with AuditLog(f"sqlite:///{tmp_path / 'state' / 'ledger.db'}") as audit:
        entries = list(audit.entries(action=PHI_ACTION))
    assert [entry.target for entry in entries] == ["profile:p-77"]
    assert entries[0].details_dict()["template"] == "refill_reminder"


def test_real_profile_missing(tmp_path: Path) -> None:
    path = config(tmp_path, SHIPPED)
    (tmp_path / "state").mkdir()
    conn = duckdb.connect(str(tmp_path / "state" / "warehouse.duckdb"))
    create_tables(conn)
    conn.close()
    result = runner.invoke(app, ["preview", "refill_reminder", "--profile-id", "p-1",
                                 "--show-phi", "--config", str(path)])

    assert result.exit_code == 1
    assert "profile id p-1 is not in the warehouse" in result.stderr
    ledger = tmp_path / "state" / "ledger.db"
    if ledger.exists():
        with AuditLog(f"sqlite:///{ledger}") as audit:
            assert list(audit.entries(action=PHI_ACTION)) == []


@pytest.mark.parametrize("command", ["check", "lint"])
def test_missing_folder(tmp_path: Path, command: str) -> None:
    result = runner.invoke(app, [command, "--config",
                                 str(config(tmp_path, tmp_path / "none"))])
    assert result.exit_code == 1
    assert "template folder not found" in result.stderr
