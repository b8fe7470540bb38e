"""Session-wide set-up shared by every test folder.

Prefect reads its settings when first imported, so this module points
PREFECT_HOME at a fresh folder before any test imports Prefect; a user's
``~/.prefect`` never affects the suite. The Prefect server itself starts
only when a test asks for the ``prefect_api`` fixture.
"""

from __future__ import annotations

import os
import random
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


# Below Linux's default ephemeral range (32768-60999). A port the kernel
# gave out for a bind to port 0 can go to the next such bind at once, for
# example the Prefect runner's own listener, before the server under test
# takes it. The kernel never gives out the ports chosen here that way.
_TEST_PORTS = range(20000, 32000)


def free_port() -> int:
    """Return a loopback port that is free now, outside the ephemeral range."""
    for _ in range(200):
        port = random.choice(_TEST_PORTS)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port found in 20000-31999")


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
