"""A throwaway project with a STARTTLS server, for the scheduled-run tests.

The sample export's addresses are on the reserved example.test domain.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from carepost.connectors.local_smtp import LocalTlsSmtpServer
from carepost.core.settings import load_settings
from carepost.ledger import Inbox, Ledger
from tests.flows.project import Project, make_project

CAMPAIGN = "diabetes_education"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[tuple[Project, LocalTlsSmtpServer]]:
    with LocalTlsSmtpServer(tmp_path / "mailbox") as smtp:
        project = make_project(tmp_path / "project")
        project.set_smtp(host=smtp.host, port=smtp.port, ca_file=str(smtp.ca_file))
        monkeypatch.setenv("CAREPOST_CONFIG", str(project.config))
        yield project, smtp


def scheduled_runs(project: Project) -> list[tuple[str, str]]:
    """Return the ``(run_key, state)`` rows of the campaign's scheduled runs."""
    ledger = Ledger(load_settings(project.config).ledger_url)
    try:
        return [(run.run_key, run.state)
                for run in Inbox(ledger.engine).scheduled_runs(CAMPAIGN)]
    finally:
        ledger.close()
