"""After a full run with marker patients, no marker is anywhere carepost or
Prefect writes: logs and command output, Prefect's database and result
storage, the ledger (every table and column), the CDP sink, the audit
export and the purge. The warehouse (the CDP's own copy) and the mailbox
(the patient's) hold PHI by design and are the positive controls.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from typer.testing import CliRunner

from carepost.connectors.local_smtp import LocalTlsSmtpServer
from carepost.flows.cli import app
from tests.conftest import PREFECT_HOME
from tests.flows.project import RUN_DATE, make_project, segment_members
from tests.flows.test_campaign_flow import _files_with, _marker_forms

pytestmark = pytest.mark.prefect

FIRST_NAME = "Qzvfirstmarker"
LAST_NAME = "Qzvlastmarker"
ADDRESS = "qzv-sweep-marker@example.test"
MARKERS = (FIRST_NAME, LAST_NAME, ADDRESS)
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")


def _carepost(args: list[str], config: Path, env: dict[str, str], cwd: Path
              ) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "carepost.flows.cli", *args,
               "--config", str(config)]
    return subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, prefect_api):
    folder = tmp_path_factory.mktemp("sweep")
    project = make_project(folder)
    members = segment_members("missed_appointment")
    project.rewrite_profiles({members[0]: {"first_name": FIRST_NAME,
                                           "last_name": LAST_NAME,
                                           "email": ADDRESS}})
    env = {**os.environ, "CAREPOST_PREFECT_API_URL": prefect_api,
           "CAREPOST_LOG_LEVEL": "DEBUG", "CAREPOST_SERVICE_IDENTITY": "svc-sweep"}
    export = project.state / "audit-export.jsonl"
    with LocalTlsSmtpServer(folder / "mailbox") as server:
        project.set_smtp(host=server.host, port=server.port,
                         ca_file=str(server.ca_file))
        # The run is the real command in a child process with DEBUG logs,
        # so its whole output can be searched; the rest runs in-process.
        child = _carepost(["run", "missed_appointment", "--as-of", RUN_DATE,
                           "--json", "--verbose"], project.config, env, folder)
        assert child.returncode == 0, child.stderr[-3000:]
    outputs = [(child.stdout, child.stderr)]
    # The commands add a stderr handler to the root logger, and CliRunner
    # closes that stream afterwards, so the handlers are put back.
    root_handlers = list(logging.getLogger().handlers)
    for args in (["audit", "export", "--since", "2000-01-01", "--out", str(export)],
                 ["purge", "--json"],
                 ["audit", "verify", "--json"]):
        result = CliRunner().invoke(app, [*args, "--config", str(project.config)],
                                    env=env)
        assert result.exit_code == 0, (args, result.output)
        outputs.append((result.stdout, result.stderr))
        logging.getLogger().handlers[:] = root_handlers
    return project, folder / "mailbox", export, outputs


def test_mailbox_and_warehouse_hold_markers(swept) -> None:
    project, maildir, _, _ = swept
    for marker in (FIRST_NAME, ADDRESS):
        assert _files_with(maildir, _marker_forms(marker), set()), marker
        assert _files_with(project.state, _marker_forms(marker), set()), marker


@pytest.mark.parametrize("marker", MARKERS)
def test_no_marker_in_any_output(swept, marker: str) -> None:
    project, _, export, outputs = swept
    forms = _marker_forms(marker)
    skip = {"warehouse.duckdb", "warehouse.duckdb.wal", "mailbox"}
    assert export.exists()
    assert _files_with(project.state, forms, skip) == []
    assert _files_with(PREFECT_HOME, forms, skip) == []
    for stdout, stderr in outputs:
        assert marker not in stdout
        assert marker not in stderr


def test_ledger_columns_hold_no_phi(swept) -> None:
    project = swept[0]
    hits = []
    with sqlite3.connect(project.state / "ledger.db") as connection:
        tables = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cursor = connection.execute(f'SELECT * FROM "{table}"')
            columns = [item[0] for item in cursor.description]
            for row in cursor:
                for column, value in zip(columns, row):
                    text = str(value)
                    if any(marker in text for marker in MARKERS):
                        hits.append(f"{table}.{column}: marker")
                    # Message-IDs are shaped like addresses but name no one.
                    if column != "message_id" and EMAIL.search(text):
                        hits.append(f"{table}.{column}: email-shaped value")
    assert "audit_log" in tables
    assert "deliveries" in tables
    assert hits == []


def test_audit_trail_of_the_run(swept) -> None:
    _, _, export, outputs = swept
    records = [json.loads(line) for line in export.read_text().splitlines()]
    actions = [record["action"] for record in records]
    for expected in ("config.changed", "template.changed", "segment.selected",
                     "delivery.batch", "campaign.finished"):
        assert expected in actions
    assert {record["actor"] for record in records} == {"svc-sweep"}
    batch = next(r for r in records if r["action"] == "delivery.batch")
    assert batch["details"]["delivery_ids"]
    assert batch["details"]["run_key"] == RUN_DATE
    verified = json.loads(outputs[-1][0])
    assert verified["ok"] is True
    purged = json.loads(outputs[2][0])
    assert purged["dry_run"] is False
    assert purged["audit_entry_id"] is not None
