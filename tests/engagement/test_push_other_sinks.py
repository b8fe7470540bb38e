"""RudderStack, signed webhook and JSON Lines sinks through ``push_outbox``."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from carepost.connectors.cdp_sinks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    JsonlEventSink,
    RudderStackBatchSink,
    WebhookBatchSink,
    build_sink,
    retry_after_seconds,
)
from carepost.core.errors import ConfigError
from carepost.core.settings import WebhookSink
from carepost.flows.feedback import push_outbox
from carepost.ledger import Ledger

from ..service.conftest import make_settings
from tests.support.uvicorn_thread import UvicornThread
from .conftest import WRITE_KEY, fill_outbox, rudder_config
from .fakes import FakeBatchApi

SECRET = b"webhook-secret"


async def test_rudderstack_takes_bigger_batches(
        ledger: Ledger, rudder_api: tuple[FakeBatchApi, str]) -> None:
    api, url = rudder_api
    ids = fill_outbox(ledger, 100, pad=25_000)
    sink = RudderStackBatchSink(rudder_config(url), WRITE_KEY)

    summary = await push_outbox(ledger, sink)
    await sink.aclose()

    assert summary.pushed == 100
    assert summary.batches == 1
    assert 2_500_000 < api.requests[0] <= 4_000_000
    assert sorted(api.received) == ids


class WebhookReceiver:
    def __init__(self) -> None:
        self.bodies: list[tuple[bytes, str, str]] = []
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> PlainTextResponse:
        self.bodies.append((await request.body(), request.headers[TIMESTAMP_HEADER],
                            request.headers[SIGNATURE_HEADER]))
        return PlainTextResponse("accepted", status_code=202)


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, str]]:
    hook = WebhookReceiver()
    with UvicornThread(hook.app) as server:
        yield hook, f"{server.url}/hook"


async def test_webhook_signs_raw_body(
        ledger: Ledger, receiver: tuple[WebhookReceiver, str]) -> None:
    hook, url = receiver
    ids = fill_outbox(ledger, 3)
    config = WebhookSink(kind="webhook", url=url)
    sink = WebhookBatchSink(config, SECRET)

    summary = await push_outbox(ledger, sink)
    await sink.aclose()

    assert summary.pushed == 3
    body, timestamp, signature = hook.bodies[0]
    expected = hmac.new(SECRET, timestamp.encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    assert signature == f"v1={expected}"
    events = json.loads(body)["events"]
    assert [event["event_id"] for event in events] == ids
    assert "reason" not in events[0]["properties"]


async def test_jsonl_sink_appends_payloads(ledger: Ledger, tmp_path: Path) -> None:
    ids = fill_outbox(ledger, 4)
    sink = JsonlEventSink(tmp_path / "events.jsonl")

    summary = await push_outbox(ledger, sink)

    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert summary.pushed == 4
    assert [json.loads(line)["event_id"] for line in lines] == ids


def test_build_sink_needs_the_write_key(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAREPOST_SEGMENT_WRITE_KEY", raising=False)
    settings = make_settings(tmp_path, sink={"kind": "segment"})

    with pytest.raises(ConfigError, match="CAREPOST_SEGMENT_WRITE_KEY"):
        build_sink(settings)


def test_sink_url_must_be_https(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must use https"):
        make_settings(tmp_path, sink={"kind": "rudderstack",
                                      "url": "http://dataplane.example.net/v1/batch"})


@pytest.mark.parametrize("header, expected", [
    ("7", 7.0), (None, None), ("soon", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
])
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    assert retry_after_seconds(header) == expected
