"""Webhook-to-SMTP latency of behaviour triggers through ``carepost serve``.

Builds a throwaway project around the sample export (one trigger campaign,
delay zero, send window open all day), starts ``carepost serve`` as a
subprocess and a STARTTLS sink in this process, then posts N signed
webhooks at a fixed rate. For each webhook it measures the time from the
request to the sink accepting the message (matched by Message-ID), and
reports p50, p95 and max, and the webhooks accepted per second.

    .venv/bin/python bench/trigger.py --count 500 --rate 50
    .venv/bin/python bench/trigger.py --dispatch flow --count 100 --rate 10

Everything listens on 127.0.0.1. ``CAREPOST_PREFECT_API_URL`` selects an
existing Prefect server; otherwise serve starts the embedded one.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import duckdb
import httpx
import trustme
import yaml
from aiosmtpd.smtp import SMTP, Envelope, Session

from carepost.connectors.files import load_export
from carepost.connectors.local_smtp import LoopbackController
from carepost.core.schema import create_tables
from carepost.service.webhooks_verify import sign_events

REPO = Path(__file__).resolve().parent.parent
CAMPAIGN = "bench_no_show"
SECRET = "bench-webhook-secret"


class RecordingSink:
    """aiosmtpd handler that records when each Message-ID was accepted."""

    def __init__(self) -> None:
        self.accepted: dict[str, float] = {}
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session,
                          envelope: Envelope) -> str:
        headers = BytesHeaderParser().parsebytes(envelope.original_content or b"")
        with self._lock:
            self.accepted[str(headers["Message-ID"]).strip()] = time.time()
        return "250 2.0.0 OK"


def start_sink(folder: Path) -> tuple[LoopbackController, RecordingSink, Path]:
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    authority.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    ca_file = folder / "sink-ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    sink = RecordingSink()
    controller = LoopbackController(sink, hostname="127.0.0.1", port=0,
                                    server_hostname="localhost", tls_context=context,
                                    require_starttls=True)
    controller.start()
    return controller, sink, ca_file


def build_project(folder: Path, smtp_port: int, ca_file: Path) -> tuple[Path, list[str]]:
    """Write a project with one zero-delay trigger campaign; return its config."""
    (folder / "campaigns").mkdir(parents=True)
    (folder / "campaigns" / f"{CAMPAIGN}.yaml").write_text(yaml.safe_dump({
        "template": "missed_appointment", "purpose": "care",
        "trigger": {"event": "appointment_no_show", "key": "appointment_id",
                    "delay": "0m", "time_field": "missed_appointment_at"},
        "send_window": {"start": "00:00", "end": "00:00"},
    }))
    raw = yaml.safe_load((REPO / "carepost.yaml").read_text())
    raw.update({
        "root": str(folder), "state_dir": str(folder / "state"),
        "source": {"kind": "files", "profiles": str(REPO / "data/sample/profiles.csv"),
                   "events": str(REPO / "data/sample/events.parquet")},
        "campaigns_dir": "campaigns",
        "templates_dir": str(REPO / "templates/library"),
        "segments_dir": str(REPO / "segments/library"),
    })
    raw["smtp"] = {**raw["smtp"], "host": "127.0.0.1", "port": smtp_port,
                   "ca_file": str(ca_file), "username": None, "password_env": None,
                   "max_connections": 8}
    config = folder / "carepost.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    (folder / "state").mkdir()
    with duckdb.connect(str(folder / "state" / "warehouse.duckdb")) as conn:
        create_tables(conn)
        load_export(conn, REPO / "data/sample/profiles.csv",
                    REPO / "data/sample/events.parquet")
        rows = conn.execute(
            "SELECT profile_id FROM profiles WHERE email IS NOT NULL AND "
            "deceased_at IS NULL AND consent_contact ORDER BY profile_id").fetchall()
    return config, [row[0] for row in rows]


def message_id(run_key: str, profile_id: str, domain: str) -> str:
    """Return the Message-ID ``flows/delivery.py`` gives this trigger's message."""
    digest = hashlib.sha256(f"{CAMPAIGN}/{run_key}/{profile_id}".encode()).hexdigest()
    return f"<{digest[:32]}@{domain}>"


def start_serve(config: Path, port: int, dispatch: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CAREPOST_EVENTS_WEBHOOK_SECRET": SECRET,
           "CAREPOST_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "carepost.flows.cli", "serve", "--config",
               str(config), "--port", str(port), "--dispatch", dispatch]
    process = subprocess.Popen(command, env=env, cwd=config.parent)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"carepost serve exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit("carepost serve did not respond on /health within 180 s")


async def post_all(port: int, profiles: list[str], count: int, rate: float,
                   domain: str) -> tuple[dict[str, float], int, float]:
    """Post ``count`` webhooks at ``rate`` per second; return send times by id."""
    sent_at: dict[str, float] = {}
    accepted = 0
    url = f"http://127.0.0.1:{port}/webhooks/events"
    limits = httpx.Limits(max_connections=64)

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def one(number: int) -> int:
            profile = profiles[number % len(profiles)]
            appointment = f"bench-{number}"
            body = json.dumps({
                "event_id": f"bench-evt-{number}", "type": "appointment_no_show",
                "profile_id": profile, "occurred_at": datetime.now(UTC).isoformat(),
                "properties": {"appointment_id": appointment}}).encode()
            stamp = int(time.time())
            sent_at[message_id(f"appointment:{appointment}", profile, domain)] = time.time()
            response = await client.post(url, content=body, headers={
                "X-Carepost-Timestamp": str(stamp),
                "X-Carepost-Signature": sign_events(SECRET.encode(), stamp, body)})
            return response.status_code

        started = time.monotonic()
        tasks = []
        for number in range(count):
            delay = started + number / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(number)))
        statuses = await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
    accepted = sum(1 for status in statuses if status == 202)
    return sent_at, accepted, elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def run(count: int, rate: float, dispatch: str, port: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="carepost-bench-trigger-"))
    controller, sink, ca_file = start_sink(folder)
    serve = None
    try:
        config, profiles = build_project(folder / "project", controller.port, ca_file)
        domain = yaml.safe_load(config.read_text())["sender"]["address"].rpartition("@")[2]
        serve = start_serve(config, port, dispatch)
        sent_at, accepted, elapsed = asyncio.run(
            post_all(port, profiles, count, rate, domain))
        deadline = time.monotonic() + 120
        while len(sink.accepted) < accepted and time.monotonic() < deadline:
            time.sleep(0.2)
        latencies = [sink.accepted[key] - sent_at[key]
                     for key in sent_at if key in sink.accepted]
    finally:
        if serve is not None:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)
        controller.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "dispatch": dispatch, "webhooks": count, "target_rate_per_s": rate,
        "accepted": accepted, "accepted_per_s": round(accepted / elapsed, 1),
        "delivered": len(latencies),
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p95_s": round(percentile(latencies, 0.95), 3) if latencies else None,
        "max_s": round(max(latencies), 3) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="webhooks to post")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="webhooks per second to post")
    parser.add_argument("--dispatch", choices=("direct", "flow"), default="direct")
    parser.add_argument("--port", type=int, default=8797,
                        help="port for carepost serve on 127.0.0.1")
    arguments = parser.parse_args()
    print(json.dumps(run(arguments.count, arguments.rate, arguments.dispatch,
                         arguments.port), indent=2))


if __name__ == "__main__":
    main()
