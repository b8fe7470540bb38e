"""carepost's embedded Prefect server belongs to one state folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from carepost.connectors.local_smtp import LocalTlsSmtpServer
from carepost.flows import prefect_runtime
from carepost.flows.prefect_runtime import PrefectServerError, default_port
from tests.conftest import free_port
from tests.flows.project import RUN_DATE, make_project


def test_port_differs_by_state_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(prefect_runtime.PORT_ENV, raising=False)
    first = default_port(tmp_path / "one")
    assert first == default_port(tmp_path / "one")
    assert first != default_port(tmp_path / "two")
    assert prefect_runtime.PORT_BASE <= first < prefect_runtime.PORT_BASE + 700


def test_port_setting_validated(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(prefect_runtime.PORT_ENV, "99999")
    with pytest.raises(PrefectServerError, match="99999"):
        default_port(tmp_path)


@pytest.mark.prefect
def test_foreign_server_not_reused(tmp_path: Path, prefect_api: str,
                                   monkeypatch) -> None:
    monkeypatch.delenv(prefect_runtime.API_URL_ENV, raising=False)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    port = urlparse(prefect_api).port
    other_home = tmp_path / "prefect"
    other_home.mkdir()

    with pytest.raises(PrefectServerError, match="did not start"):
        prefect_runtime.ensure_server(other_home, port)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)


def test_run_uses_own_server_not_home(tmp_path: Path) -> None:
    """`carepost run` sends its flow to the state folder's server.

    Loading campaigns imports Prefect before that server starts, so this
    runs the real command in a child process with an empty HOME: Prefect
    must neither start a temporary server nor write under ~/.prefect.
    """
    project = make_project(tmp_path / "project")
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PREFECT_", "CAREPOST_PREFECT"))}
    env.update({"HOME": str(home), "CAREPOST_PREFECT_PORT": str(free_port())})
    with LocalTlsSmtpServer(tmp_path / "mailbox") as server:
        project.set_smtp(host=server.host, port=server.port,
                         ca_file=str(server.ca_file))
        child = subprocess.run(
            [sys.executable, "-m", "carepost.flows.cli", "run", "missed_appointment",
             "--as-of", RUN_DATE, "--json", "--config", str(project.config)],
            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)

    assert child.returncode == 0, child.stderr[-3000:]
    assert "temporary server" not in child.stdout + child.stderr
    assert json.loads(child.stdout)["sent"] > 0
    assert not (home / ".prefect").exists()
    assert (project.state / "prefect" / "prefect.db").exists()
