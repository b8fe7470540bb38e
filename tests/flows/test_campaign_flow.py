"""Campaign flow runs on a real Prefect server, SQLite ledger, DuckDB file
and STARTTLS server. The shipped export's addresses are on the reserved
example.test domain; the marker patient below is written by the test.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import mailbox
import sqlite3
from pathlib import Path

import pytest

from carepost.connectors.local_smtp import LocalTlsSmtpServer
from carepost.flows.runner import run_campaign
from tests.conftest import PREFECT_HOME
from tests.flows.project import RUN_DATE, make_project, segment_members

pytestmark = pytest.mark.prefect

MARKER_NAME = "Zqxvorplemarker"
MARKER_ADDRESS = "zqx-marker-7f3a@example.test"


@pytest.fixture(scope="module")
def delivered(tmp_path_factory, prefect_api):
    """One missed_appointment run with a marker patient, then a re-run.

    The first run is the real command in a child process with DEBUG
    logging, so its whole output can be searched for the marker.
    """
    folder = tmp_path_factory.mktemp("project")
    project = make_project(folder)
    members = segment_members("missed_appointment")
    assert len(members) >= 2, "the shipped export must fill this segment"
    # The last member withdrew consent: the selection removes them.
    project.rewrite_profiles({members[0]: {"first_name": MARKER_NAME,
                                           "email": MARKER_ADDRESS},
                              members[-1]: {"consent_contact": "false"}})
    with LocalTlsSmtpServer(folder / "mailbox") as server:
        project.set_smtp(host=server.host, port=server.port,
                         ca_file=str(server.ca_file))
        command = [sys.executable, "-m", "carepost.flows.cli", "run",
                   "missed_appointment", "--as-of", RUN_DATE, "--json", "--verbose",
                   "--config", str(project.config)]
        env = {**os.environ, "CAREPOST_PREFECT_API_URL": prefect_api,
               "CAREPOST_LOG_LEVEL": "DEBUG"}
        child = subprocess.run(command, capture_output=True, text=True, env=env,
                               timeout=300, cwd=folder)
        assert child.returncode == 0, child.stderr[-3000:]
        first = json.loads(child.stdout)
        second = run_campaign(project.config, "missed_appointment", RUN_DATE)
    output = child.stdout + child.stderr
    return project, folder / "mailbox", first, second, members, output


def test_run_delivers_each_member(delivered) -> None:
    project, maildir, first, _, members, _ = delivered
    assert first["segment_size"] == len(members)
    assert first["sent"] > 0
    assert len(mailbox.Maildir(maildir)) == first["sent"]


def test_rerun_sends_nothing_new(delivered) -> None:
    _, maildir, first, second, _, _ = delivered
    assert second["sent"] == 0
    assert second["already_done"] == first["segment_size"]
    assert len(mailbox.Maildir(maildir)) == first["sent"]


def test_removed_member_recorded_unread(delivered) -> None:
    """A member the selection removes gets a ledger row, no address read."""
    project, _, first, _, members, _ = delivered
    with sqlite3.connect(project.state / "ledger.db") as db:
        state, reason, address_hash = db.execute(
            "SELECT state, reason, address_hash FROM deliveries"
            " WHERE profile_id = ?", (members[-1],)).fetchone()
    assert state == "suppressed"
    assert reason == "no contact consent"
    assert address_hash is None
    assert first["suppressed"] >= 1


def test_sent_rows_record_tls(delivered) -> None:
    project = delivered[0]
    with sqlite3.connect(project.state / "ledger.db") as db:
        rows = db.execute(
            "SELECT tls_version, tls_cipher, cert_sha256 FROM deliveries"
            " WHERE state = 'sent'").fetchall()
    assert rows
    assert {version for version, _, _ in rows} <= {"TLSv1.2", "TLSv1.3"}
    assert all(cipher and len(fingerprint) == 64 for _, cipher, fingerprint in rows)


def test_events_reach_the_sink(delivered) -> None:
    project, _, first, _, _, _ = delivered
    lines = (project.state / "cdp-events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert sum(e["type"] == "email_sent" for e in events) == first["sent"]
    assert len({e["event_id"] for e in events}) == len(events)


def test_marker_reached_the_recipient(delivered) -> None:
    """Positive control: the marker really went through the pipeline."""
    _, maildir, *_ = delivered
    bodies = [message.as_bytes() for message in mailbox.Maildir(maildir)]
    assert any(MARKER_ADDRESS.encode() in body for body in bodies)


def _marker_forms(marker: str) -> list[bytes]:
    """The marker as text, UTF-16 and in each base64 alignment (pickles)."""
    raw = marker.encode()
    forms = [raw, marker.encode("utf-16-le")]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)[4:-4]
        forms.append(encoded[:12])
    return forms


def _files_with(folder: Path, forms: list[bytes], skip: set[str]) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if not path.is_file() or skip & set(path.parts):
            continue
        data = path.read_bytes()
        if any(form in data for form in forms):
            hits.append(str(path))
    return hits


@pytest.mark.parametrize("marker", [MARKER_NAME, MARKER_ADDRESS])
def test_no_phi_where_prefect_or_carepost_write(delivered, marker) -> None:
    project, output = delivered[0], delivered[-1]
    forms = _marker_forms(marker)
    # The warehouse is the CDP's own copy and the mailbox is the patient's:
    # both hold PHI by design. Everything else must not.
    skip = {"warehouse.duckdb", "warehouse.duckdb.wal", "mailbox"}
    assert _files_with(project.state, forms, set()), "the search must see the warehouse"
    assert _files_with(PREFECT_HOME, forms, skip) == []
    assert _files_with(project.state, forms, skip) == []
    assert marker not in output


def test_flow_parameters_are_names_and_dates(delivered, prefect_api) -> None:
    import httpx

    response = httpx.post(f"{prefect_api}/flow_runs/filter",
                          json={"limit": 200}, timeout=10)
    runs = [run for run in response.json()
            if run["name"] == f"missed_appointment-{RUN_DATE}"]
    assert runs
    for run in runs:
        parameters = run["parameters"]
        assert parameters["campaign"] == "missed_appointment"
        assert parameters["run_date"] == RUN_DATE
        # Any other parameter is a schedule time, never profile data.
        assert set(parameters) <= {"campaign", "run_date", "scheduled_for"}
