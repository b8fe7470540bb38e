"""One real campaign run with the ledger on PostgreSQL, then a re-run.

``carepost run`` runs in-process against the real Prefect server and a
STARTTLS server on 127.0.0.1; the project's carepost.yaml names the
PostgreSQL ledger (without its password, which comes from PGPASSWORD).
"""

from __future__ import annotations

import json
import mailbox

import pytest
import yaml
from typer.testing import CliRunner
from sqlalchemy import URL, create_engine, make_url, text

from carepost.connectors.local_smtp import LocalTlsSmtpServer
from carepost.flows.cli import app
from carepost.flows.runner import run_campaign
from carepost.ledger import AuditLog
from tests.flows.project import RUN_DATE, make_project

pytestmark = [pytest.mark.postgres, pytest.mark.prefect]


def _count(url: str, statement: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(statement)).scalar_one())
    finally:
        engine.dispose()


def test_run_and_rerun_on_postgres(tmp_path, prefect_api, ledger_url: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url = make_url(ledger_url)
    monkeypatch.setenv("PGPASSWORD", url.password or "")
    project = make_project(tmp_path / "project")
    raw = yaml.safe_load(project.config.read_text())
    without_password = URL.create(url.drivername, url.username, None, url.host,
                                  url.port, url.database, url.query)
    raw["ledger"] = {"url": without_password.render_as_string()}
    project.config.write_text(yaml.safe_dump(raw, sort_keys=False))

    with LocalTlsSmtpServer(tmp_path / "mailbox") as server:
        project.set_smtp(host=server.host, port=server.port,
                         ca_file=str(server.ca_file))
        monkeypatch.setenv("CAREPOST_PREFECT_API_URL", prefect_api)
        result = CliRunner().invoke(app, [
            "run", "missed_appointment", "--as-of", RUN_DATE, "--json",
            "--config", str(project.config)])
        assert result.exit_code == 0, result.output[-3000:]
        first = json.loads(result.stdout)
        second = run_campaign(project.config, "missed_appointment", RUN_DATE)

    sent_rows = _count(ledger_url, "SELECT count(*) FROM deliveries "
                                   "WHERE state = 'sent'")
    with AuditLog(ledger_url) as audit:
        verified = audit.verify()

    assert first["sent"] > 0
    assert len(mailbox.Maildir(tmp_path / "mailbox")) == first["sent"]
    assert sent_rows == first["sent"]
    assert second["sent"] == 0
    assert second["already_done"] == first["segment_size"]
    assert verified.ok
    assert verified.entries > 0
    assert not (project.state / "ledger.db").exists()
