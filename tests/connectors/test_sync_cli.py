"""``carepost sync`` as a child process, including one killed halfway."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from carepost.core.settings import load_settings
from carepost.flows.sync import sync_named_source

from .conftest import CLIENT_ID, KEY_ID, PRIVATE_KEY_ENV
from .exports import HEADER, profile_line
from .fhir_data import shipped_resources

pytestmark = pytest.mark.prefect

REPO = Path(__file__).resolve().parents[2]


def write_project(folder: Path, fhir_base: str) -> Path:
    profiles = folder / "profiles.csv"
    profiles.write_text("\n".join([HEADER, profile_line("p1", "a@example.org"),
                                   profile_line("p2", "not an address")]) + "\n",
                        encoding="utf-8")
    config = {
        "practice": {"name": "Test Practice", "postal_address": "1 Test Street"},
        "sender": {"address": "care@practice.example.test", "name": "Test Practice"},
        "state_dir": str(folder / "state"),
        "sources": {
            "crm": {"kind": "files", "profiles": "profiles.csv"},
            "ehr": {"kind": "fhir", "base_url": f"{fhir_base}/fhir", "group": "all",
                    "timeout_seconds": 120,
                    "auth": {"token_url": f"{fhir_base}/auth/token", "client_id": CLIENT_ID,
                             "key_id": KEY_ID, "private_key_env": PRIVATE_KEY_ENV}},
        },
    }
    path = folder / "carepost.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "carepost.flows.cli", "sync", *args, "--config", str(config)]


def child_env(prefect_api: str) -> dict[str, str]:
    return {**os.environ, "CAREPOST_PREFECT_API_URL": prefect_api}


def test_sync_command_prints_summary(tmp_path, fhir_server, prefect_api, capsys) -> None:
    from carepost.flows.cli_sync import print_summary

    config = write_project(tmp_path, fhir_server.base)

    child = subprocess.run(command(config, "crm", "--json"), capture_output=True, text=True,
                           env=child_env(prefect_api), timeout=300, cwd=tmp_path)

    assert child.returncode == 0, child.stderr[-2000:]
    summary = json.loads(child.stdout)
    assert summary["profiles"] == 1
    assert summary["quarantined"] == 1
    assert summary["quarantine_reasons"] == {"email: invalid address": 1}
    assert "not an address" not in child.stdout + child.stderr
    print_summary(summary)
    printed = capsys.readouterr().out
    assert "records quarantined" in printed
    assert "email: invalid address (1)" in printed
    assert "fingerprints of 1 files" in printed


def test_unknown_source_is_usage_error(tmp_path, fhir_server) -> None:
    config = write_project(tmp_path, fhir_server.base)

    child = subprocess.run(command(config, "warehouse"), capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)

    assert child.returncode == 2
    assert "source 'warehouse' is not configured" in child.stderr
    assert "crm, ehr" in child.stderr


def test_killed_sync_keeps_committed_batches(tmp_path, fhir_server, prefect_api) -> None:
    data = shipped_resources()
    for kind in ("Patient", "Condition", "Encounter"):
        for body in data[kind][:120]:
            fhir_server.add(body)
    fhir_server.behaviour.files_per_type = {"Encounter": 3}
    fhir_server.behaviour.slow_first_download = {"Encounter_2.ndjson": 120.0}
    config = write_project(tmp_path, fhir_server.base)
    child = subprocess.Popen(command(config, "ehr", "--json"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=child_env(prefect_api), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while "Encounter_2.ndjson" not in fhir_server.downloads:
            assert child.poll() is None, "the sync ended before the slow download"
            assert time.monotonic() < deadline, "the sync never reached Encounter_2"
            time.sleep(0.1)
    finally:
        child.kill()
        child.wait(timeout=30)

    warehouse = duckdb.connect(str(tmp_path / "state" / "warehouse.duckdb"))
    profiles = warehouse.execute("SELECT count(*) FROM profiles").fetchone()[0]
    encounters = warehouse.execute(
        "SELECT count(*) FROM events WHERE type = 'encounter'").fetchone()[0]
    marks = warehouse.execute("SELECT count(*) FROM sync_watermarks").fetchone()[0]
    warehouse.close()
    assert profiles == len(data["Patient"])
    assert encounters == 40  # Encounter_1 of three files of 40
    assert marks == 0

    fhir_server.behaviour.slow_first_download = {}
    settings = load_settings(config)
    warehouse = duckdb.connect(str(tmp_path / "state" / "warehouse.duckdb"))
    try:
        summary = asyncio.run(sync_named_source(settings, warehouse, "ehr"))
    finally:
        warehouse.close()
    assert summary.watermark == fhir_server.transaction_time
    assert "_since" not in fhir_server.calls_to("/fhir/Group/all/$export")[-1].query
