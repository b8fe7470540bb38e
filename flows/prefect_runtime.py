"""carepost's own Prefect settings and its embedded Prefect server.

Prefect reads its settings when it is first imported, so ``configure``
must run before anything imports ``prefect``. carepost owns them:
``PREFECT_HOME`` and the profiles file live under the state folder, so a
user's ``~/.prefect`` never changes how carepost behaves.

With no API configured, Prefect would start a temporary in-process server
that runs no scheduler and is killed at exit before it records most task
runs. carepost instead starts a real ``prefect server`` (SQLite under the
state folder) as a child process on 127.0.0.1, or reuses the one it
started for the same state folder while that responds to its health check.
The port is derived from the state folder's path, so two checkouts on one
machine get two servers, and ``server.json`` in the Prefect home records
which port belongs to this folder. ``CAREPOST_PREFECT_API_URL`` points
carepost at an existing server (PostgreSQL-backed in production) instead.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx

from carepost.core.errors import CarepostError

log = logging.getLogger(__name__)

API_URL_ENV = "CAREPOST_PREFECT_API_URL"
PORT_ENV = "CAREPOST_PREFECT_PORT"
# Embedded servers listen on a port in this range chosen by the state folder.
PORT_BASE, PORT_SPAN = 4200, 700
STARTUP_TIMEOUT_SECONDS = 90.0


class PrefectServerError(CarepostError):
    """The embedded Prefect server did not start or stopped responding."""


def configure(state_dir: Path) -> Path:
    """Set the PREFECT_* environment carepost relies on; return PREFECT_HOME."""
    home = state_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        # Results may hold PHI: nothing is persisted, nothing is cached.
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "PREFECT_TASKS_DEFAULT_PERSIST_RESULT": "false",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
        "PREFECT_LOGGING_LEVEL": os.environ.get("CAREPOST_LOG_LEVEL", "WARNING"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    })
    return home


@dataclass
class PrefectServer:
    """A running Prefect API: ours (with a child process) or configured."""

    api_url: str
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        log.info("stopped the embedded Prefect server (pid %s)", self.process.pid)


def _healthy(api_url: str) -> bool:
    try:
        response = httpx.get(f"{api_url}/health", timeout=2.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def default_port(home: Path) -> int:
    """Return ``CAREPOST_PREFECT_PORT`` or a port derived from ``home``."""
    configured = os.environ.get(PORT_ENV)
    if configured:
        if not configured.isdigit() or not 1 <= int(configured) <= 65535:
            raise PrefectServerError(
                f"{PORT_ENV} is {configured!r}, expected a port number 1-65535")
        return int(configured)
    return PORT_BASE + zlib.crc32(str(home.resolve()).encode()) % PORT_SPAN


def _owned_port(home: Path) -> int | None:
    try:
        return int(json.loads((home / "server.json").read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_server(home: Path, port: int | None = None) -> PrefectServer:
    """Point Prefect at a healthy API, starting the embedded server if needed."""
    configured = os.environ.get(API_URL_ENV)
    if configured:
        os.environ["PREFECT_API_URL"] = configured
        if not _healthy(configured):
            raise PrefectServerError(
                f"Prefect API at {configured} did not respond to its health check",
                hint=f"start that server or unset {API_URL_ENV}",
            )
        return PrefectServer(configured)

    port = port or default_port(home)
    api_url = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_API_URL"] = api_url
    if _healthy(api_url):
        if _owned_port(home) != port:
            raise PrefectServerError(
                f"port {port} already serves a Prefect API that this state "
                f"folder did not start",
                hint=f"set {PORT_ENV} to a free port, or {API_URL_ENV} to use "
                "that server on purpose",
            )
        log.info("reusing the Prefect server at %s", api_url)
        return PrefectServer(api_url)
    process = _start_server(home, port, api_url)
    (home / "server.json").write_text(json.dumps({"port": port, "pid": process.pid}))
    return PrefectServer(api_url, process)


def _start_server(home: Path, port: int, api_url: str) -> subprocess.Popen[bytes]:
    log_path = home / "server.log"
    command = [sys.executable, "-m", "prefect", "server", "start",
               "--host", "127.0.0.1", "--port", str(port),
               "--no-ui", "--analytics-off"]
    env = {key: value for key, value in os.environ.items()
           if key != "PREFECT_API_URL"}
    with log_path.open("ab") as server_log:
        process = subprocess.Popen(command, stdout=server_log, stderr=server_log,
                                   stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=True)
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrefectServerError(
                f"the embedded Prefect server exited with code {process.returncode}",
                hint=f"read {log_path}; is port {port} taken by another program?",
            )
        if _healthy(api_url):
            log.info("started the embedded Prefect server at %s", api_url)
            return process
        time.sleep(0.3)
    process.kill()
    raise PrefectServerError(
        f"the embedded Prefect server did not answer within "
        f"{STARTUP_TIMEOUT_SECONDS:.0f} s",
        hint=f"read {log_path}",
    )
