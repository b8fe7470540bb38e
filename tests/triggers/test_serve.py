"""``carepost serve`` as a subprocess: start-up, deployments, a crash after
the inbox commit, replay, and a clean stop on SIGTERM.

Runs against the session's Prefect server and a STARTTLS server in this
process. Profile ids come from the sample export; bodies carry ids only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from carepost.service.webhooks_verify import sign_events
from tests.conftest import free_port
from tests.triggers.conftest import NO_SHOW_CAMPAIGN, TriggerProject

pytestmark = pytest.mark.prefect

SECRET = "serve-test-secret"
DELAY = timedelta(hours=1)
DUE_IN = timedelta(seconds=6)


def _start(project: TriggerProject, api_url: str, port: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "carepost.flows.cli", "serve",
               "--config", str(project.project.config), "--port", str(port),
               "--poll-seconds", "1"]
    env = {**os.environ, "CAREPOST_PREFECT_API_URL": api_url,
           "CAREPOST_EVENTS_WEBHOOK_SECRET": SECRET, "CAREPOST_LOG_LEVEL": "INFO"}
    return subprocess.Popen(command, env=env, cwd=project.project.root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(condition: Callable[[], bool], seconds: float, what: str,
              process: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode} while "
                                 f"waiting for {what}:\n{process.stdout.read()}")
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _post(port: int, event: dict[str, object]) -> httpx.Response:
    body = json.dumps(event).encode()
    stamp = int(time.time())
    return httpx.post(f"http://127.0.0.1:{port}/webhooks/events", content=body,
                      headers={"X-Carepost-Timestamp": str(stamp),
                               "X-Carepost-Signature":
                                   sign_events(SECRET.encode(), stamp, body)},
                      timeout=10)


def _deployment_names(api_url: str) -> set[str]:
    response = httpx.post(f"{api_url}/deployments/filter", json={}, timeout=10)
    response.raise_for_status()
    return {item["name"] for item in response.json()}


def test_serve_survives_crash_after_inbox_commit(trigger_project: TriggerProject,
                                                 prefect_api: str) -> None:
    delayed = {**NO_SHOW_CAMPAIGN, "trigger": {**NO_SHOW_CAMPAIGN["trigger"],
                                               "delay": "1h"}}
    trigger_project.write_campaign("no_show_followup", delayed)
    trigger_project.write_campaign("weekly_test", {
        "segment": "diabetes_prediabetes_adults", "template": "diabetes_education",
        "purpose": "marketing",
        "schedule": {"cron": "0 9 * * 1", "timezone": "America/Chicago"}})
    occurred = datetime.now(UTC) - DELAY + DUE_IN
    event = {"event_id": "crash-1", "type": "appointment_no_show",
             "profile_id": trigger_project.profile_ids[0],
             "occurred_at": occurred.isoformat(),
             "properties": {"appointment_id": "ap-crash"}}

    first_port = free_port()
    first = _start(trigger_project, prefect_api, first_port)
    _wait_for(lambda: _healthy(first_port), 90, "the first /health", first)
    assert {"weekly_test", "behaviour", "retention"} <= _deployment_names(prefect_api)
    accepted = _post(first_port, event)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert accepted.status_code == 202
    assert trigger_project.smtp.messages_received == 0

    second_port = free_port()
    second = _start(trigger_project, prefect_api, second_port)
    try:
        _wait_for(lambda: _healthy(second_port), 90, "the second /health", second)
        _wait_for(lambda: trigger_project.smtp.messages_received == 1, 60,
                  "the delayed send after the restart", second)
        replay = _post(second_port, event)
        other_id = _post(second_port, {**event, "event_id": "crash-2"})
        time.sleep(3)
        assert replay.status_code == 200
        assert replay.json()["status"] == "duplicate"
        assert other_id.status_code == 202
        assert trigger_project.smtp.messages_received == 1
    finally:
        second.send_signal(signal.SIGTERM)
        output, _ = second.communicate(timeout=60)
    assert second.returncode == 0, output[-3000:]
    assert "carepost serve started" in output
    assert "carepost serve stopped" in output
