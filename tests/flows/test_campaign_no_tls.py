"""A campaign run against relays that cannot give verified TLS sends nothing.

Both servers are aiosmtpd on 127.0.0.1 that record every command they
receive, so "no MAIL command arrived" is checked from the server's side.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from carepost.flows.runner import run_campaign
from tests.flows.project import RUN_DATE, make_project
from tests.sender.servers import Certificates, RecordingServer, Script, server_context

pytestmark = pytest.mark.prefect


@pytest.mark.parametrize("case", ["no_starttls", "wrong_host_certificate"])
def test_relay_without_verified_tls_gets_no_mail(case, tmp_path, prefect_api) -> None:
    (tmp_path / "certificates").mkdir()
    certificates = Certificates.create(tmp_path / "certificates")
    leaf = certificates.wrong_host if case == "wrong_host_certificate" else certificates.good
    script = Script(offer_starttls=case != "no_starttls")
    project = make_project(tmp_path / "project")

    with RecordingServer(server_context(leaf), script) as server:
        project.set_smtp(host=server.host, port=server.port,
                         ca_file=str(certificates.ca_file), timeout_seconds=5.0)
        summary = run_campaign(project.config, "missed_appointment", RUN_DATE)

    assert summary["sent"] == 0
    assert summary["dropped_no_tls"] == summary["segment_size"] - summary["suppressed"]
    assert summary["dropped_no_tls"] > 0
    assert server.count("MAIL") == 0
    assert server.count("RCPT") == 0
    assert server.messages == []

    with sqlite3.connect(project.state / "ledger.db") as db:
        states = dict(db.execute(
            "SELECT state, count(*) FROM deliveries GROUP BY state").fetchall())
    assert states.get("dropped_no_tls") == summary["dropped_no_tls"]
    assert "sent" not in states

    events = [json.loads(line) for line in
              (project.state / "cdp-events.jsonl").read_text().splitlines()]
    assert {event["type"] for event in events} == {"email_dropped_no_tls"}
