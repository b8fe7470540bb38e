"""Session-wide set-up shared by every test folder.

Prefect reads its settings when first imported, so this module points
PREFECT_HOME at a fresh folder before any test imports Prefect; a user's
``~/.prefect`` never affects the suite. The Prefect server itself starts
only when a test asks for the ``prefect_api`` fixture.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_STATE = Path(tempfile.mkdtemp(prefix="carepost-tests-"))

from carepost.flows import prefect_runtime  # noqa: E402

PREFECT_HOME = prefect_runtime.configure(TEST_STATE)
os.environ.pop(prefect_runtime.API_URL_ENV, None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect server (SQLite) for the session, on a free port."""
    server = prefect_runtime.ensure_server(PREFECT_HOME, free_port())
    from carepost.flows.redaction import install_redaction

    install_redaction()
    yield server.api_url
    server.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(TEST_STATE, ignore_errors=True)
