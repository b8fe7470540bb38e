"""Measure the tracking service and the CDP push on this machine (loopback only).

1. Tracking: the real tracking routes on uvicorn (one worker, SQLite
   ledger) take open-pixel and click requests from an httpx client with
   a fixed number of requests in flight. The load stops after
   ``--requests`` requests or ``--seconds`` seconds, whichever comes first.
2. Push: ``--events`` outbox events go to a local endpoint that accepts
   Segment ``/v1/batch`` bodies (parses them and returns 200), through the
   real ``SegmentBatchSink`` and ``push_outbox``.

    .venv/bin/python bench/tracking.py [--requests 4000] [--seconds 30]
        [--concurrency 16] [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from sqlmodel import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from carepost.connectors.cdp_sinks import SegmentBatchSink
from carepost.core.settings import SegmentSink, Settings
from carepost.core.states import DeliveryState
from carepost.flows.feedback import push_outbox
from carepost.ledger import Delivery, Ledger, OutboxEvent
from carepost.ledger.models import utc_now
from carepost.service.app import create_app
from carepost.service.tracking import tracking_routes
from carepost.service.tracking_links import click_url, open_pixel_url

HOST = "127.0.0.1"


class ServerThread:
    def __init__(self, app: object, port: int) -> None:
        config = uvicorn.Config(app, host=HOST, port=port, log_level="warning",
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class ServerProcess:
    """The tracking service in its own process, so the client does not share its GIL."""

    def __init__(self, state: Path, port: int) -> None:
        self.command = [sys.executable, __file__, "--serve", str(state), str(port)]
        self.port = port

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen(self.command)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://{HOST}:{self.port}/health", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.process.kill()
        raise RuntimeError("tracking service did not start")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def serve(state: Path, port: int) -> None:
    settings = _settings(state)
    app = create_app(settings, route_factories=(tracking_routes,))
    uvicorn.run(app, host=HOST, port=port, log_level="warning", lifespan="off")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _settings(state: Path) -> Settings:
    os.environ["CAREPOST_BENCH_TRACKING_SECRET"] = "bench-secret"
    return Settings.model_validate({
        "root": str(Path(__file__).resolve().parent.parent),
        "state_dir": str(state),
        "practice": {"name": "Bench Practice", "postal_address": "1 Main St"},
        "sender": {"address": "care@bench.example.test", "name": "Bench"},
        "source": {"kind": "files", "profiles": "data/sample/profiles.csv",
                   "events": "data/sample/events.parquet"},
        "tracking": {"secret_env": "CAREPOST_BENCH_TRACKING_SECRET"},
    })


def _sent_deliveries(ledger: Ledger, count: int) -> list[int]:
    with Session(ledger.engine, expire_on_commit=False) as session:
        rows = [Delivery(idempotency_key=f"bench/2024-02-15/p-{n}",
                         campaign="diabetes_education", run_key="2024-02-15",
                         profile_id=f"p-{n}", purpose="marketing",
                         template="diabetes_education", template_version="v1",
                         state=DeliveryState.SENT.value, address_hash=f"h{n}",
                         updated_at=utc_now().replace(year=2024))
                for n in range(count)]
        session.add_all(rows)
        session.commit()
        return [row.id for row in rows]


async def _load(urls: list[str], concurrency: int, seconds: float) -> tuple[int, float, list[float]]:
    queue = iter(urls)
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0"}

    async def worker(client: httpx.AsyncClient) -> None:
        for url in queue:
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            response = await client.get(url)
            latencies.append(time.perf_counter() - started)
            assert response.status_code in (200, 302), response.status_code

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return len(latencies), time.perf_counter() - started, latencies


def bench_tracking(state: Path, requests: int, seconds: float, concurrency: int) -> dict:
    settings = _settings(state)
    ledger = Ledger(settings.ledger_url)
    ids = _sent_deliveries(ledger, max(1, requests // 2))
    ledger.close()
    port = _free_port()
    base = f"http://{HOST}:{port}"
    keys = settings.tracking_keys
    results = {}
    with ServerProcess(state, port):
        kinds = {
            "open": [open_pixel_url(base, keys, ids[n % len(ids)]) for n in range(requests)],
            "click": [click_url(base, keys, ids[n % len(ids)], 0,
                                "https://www.example.test/book") for n in range(requests)],
        }
        for kind, urls in kinds.items():
            done, elapsed, latencies = asyncio.run(_load(urls, concurrency, seconds))
            results[kind] = {
                "requests": done, "seconds": round(elapsed, 2),
                "per_second": round(done / elapsed),
                "p50_ms": round(statistics.median(latencies) * 1000, 1),
                "p95_ms": round(statistics.quantiles(latencies, n=20)[18] * 1000, 1)}
    return results


def _accepting_app(counter: list[int]) -> Starlette:
    async def batch(request: Request) -> JSONResponse:
        counter[0] += len(json.loads(await request.body())["batch"])
        return JSONResponse({"success": True})

    return Starlette(routes=[Route("/v1/batch", batch, methods=["POST"])])


def bench_push(state: Path, events: int) -> dict:
    ledger = Ledger(f"sqlite:///{state / 'push.db'}")
    with Session(ledger.engine) as session:
        for n in range(events):
            payload = {"event_id": f"e{n}", "type": "email_opened", "profile_id": f"p-{n}",
                       "campaign": "diabetes_education", "delivery_id": n,
                       "occurred_at": utc_now().isoformat(),
                       "properties": {"campaign": "diabetes_education",
                                      "template_version": "v1", "machine": False}}
            session.add(OutboxEvent(event_id=f"e{n}", type="email_opened",
                                    profile_id=f"p-{n}", campaign="diabetes_education",
                                    delivery_id=n, payload=json.dumps(payload)))
        session.commit()
    received = [0]
    port = _free_port()
    with ServerThread(_accepting_app(received), port):
        sink = SegmentBatchSink(SegmentSink(kind="segment",
                                            url=f"http://{HOST}:{port}/v1/batch"),
                                "bench-key")
        started = time.perf_counter()
        summary = asyncio.run(_push(ledger, sink))
        elapsed = time.perf_counter() - started
    ledger.close()
    assert received[0] == events == summary.pushed
    return {"events": events, "batches": summary.batches, "seconds": round(elapsed, 2),
            "per_second": round(events / elapsed)}


async def _push(ledger: Ledger, sink: SegmentBatchSink):
    try:
        return await push_outbox(ledger, sink)
    finally:
        await sink.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000,
                        help="requests per kind (open, click)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="time limit per kind, in seconds")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="requests in flight")
    parser.add_argument("--events", type=int, default=20000,
                        help="outbox events to push")
    parser.add_argument("--serve", nargs=2, metavar=("STATE", "PORT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]))
        return
    with tempfile.TemporaryDirectory(prefix="carepost-bench-") as folder:
        state = Path(folder)
        tracking = bench_tracking(state, args.requests, args.seconds, args.concurrency)
        push = bench_push(state, args.events)
    print(json.dumps({"tracking": tracking, "push": push}, indent=2))


if __name__ == "__main__":
    main()
