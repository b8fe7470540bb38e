"""Outbox pushes to a fake Segment ``/v1/batch`` with injected faults."""

from __future__ import annotations

import json
import logging

import pytest
from sqlmodel import Session, select

from carepost.connectors.cdp_sinks import SegmentBatchSink, SinkUnavailable
from carepost.flows.feedback import push_outbox
from carepost.ledger import Ledger, OutboxEvent
from carepost.ledger.engagement import Engagement

from .conftest import WRITE_KEY, fill_outbox, segment_config
from .fakes import FakeBatchApi, ResetProxy


def _pending(ledger: Ledger) -> list[str]:
    with Session(ledger.engine) as session:
        return list(session.exec(select(OutboxEvent.event_id)
                                 .where(OutboxEvent.pushed_at.is_(None))))


def _sink(url: str, **options: object) -> SegmentBatchSink:
    config = segment_config(url, **{"timeout_seconds": 0.5, **options})
    return SegmentBatchSink(config, WRITE_KEY, backoff_base_seconds=0.01)


def _assert_each_once(api: FakeBatchApi, ids: list[str]) -> None:
    """Every event arrived, under its own id, with the same content each time."""
    assert sorted(api.received) == sorted(ids)
    for message_id, copies in api.received.items():
        assert all(copy == copies[0] for copy in copies), message_id
        assert copies[0]["messageId"] == message_id


async def test_push_sends_track_messages(
        ledger: Ledger, segment_api: tuple[FakeBatchApi, ResetProxy]) -> None:
    api, proxy = segment_api
    ids = fill_outbox(ledger, 3)
    sink = _sink(proxy.url)

    summary = await push_outbox(ledger, sink)
    await sink.aclose()

    assert summary.pushed == 3
    assert _pending(ledger) == []
    message = api.received["evt-000000"][0]
    assert message["type"] == "track"
    assert message["userId"] == "p-0"
    assert message["event"] == "email_opened"
    assert message["properties"]["delivery_id"] == 0
    assert message["properties"]["machine"] is False
    assert "reason" not in message["properties"]
    assert api.sent_at[0].endswith("Z")
    _assert_each_once(api, ids)


async def test_faults_lose_and_double_nothing(
        ledger: Ledger, segment_api: tuple[FakeBatchApi, ResetProxy]) -> None:
    api, proxy = segment_api
    ids = fill_outbox(ledger, 600, pad=1000)
    api.faults = ["429", "500", "slow", "ok", "500", "ok", "slow"]
    proxy.actions = ["pass", "reset_after", "reset_before", "pass", "reset_after"]
    sink = _sink(proxy.url, max_attempts=12)
    delays: list[float] = []
    real_sleep = sink.sleep

    async def recorded(seconds: float) -> None:
        delays.append(seconds)
        await real_sleep(min(seconds, 0.05))

    sink.sleep = recorded

    summary = await push_outbox(ledger, sink)
    await sink.aclose()

    assert summary.pushed == 600
    assert _pending(ledger) == []
    assert max(api.requests) <= 500_000
    assert any(delay >= 1 for delay in delays)  # Retry-After: 1 honoured
    assert sum(len(copies) for copies in api.received.values()) > 600
    _assert_each_once(api, ids)


async def test_batches_respect_segment_limits(
        ledger: Ledger, segment_api: tuple[FakeBatchApi, ResetProxy]) -> None:
    api, proxy = segment_api
    big = fill_outbox(ledger, 100, pad=6000)
    small = fill_outbox(ledger, 2600, start=100)
    sink = _sink(proxy.url)

    summary = await push_outbox(ledger, sink)
    await sink.aclose()

    assert summary.pushed == 2700
    assert max(api.requests) <= 500_000
    assert summary.batches >= 3
    _assert_each_once(api, big + small)


async def test_oversized_event_is_dead_lettered(
        ledger: Ledger, segment_api: tuple[FakeBatchApi, ResetProxy],
        caplog: pytest.LogCaptureFixture) -> None:
    api, proxy = segment_api
    normal = fill_outbox(ledger, 5)
    huge = fill_outbox(ledger, 1, pad=40_000, start=5)
    sink = _sink(proxy.url)

    with caplog.at_level(logging.ERROR, logger="carepost"):
        summary = await push_outbox(ledger, sink)
        again = await push_outbox(ledger, sink)
    await sink.aclose()

    assert summary.pushed == 5
    assert summary.dead_lettered == 1
    assert again.pushed == 0
    letters = Engagement(ledger).dead_letters()
    assert [(row.event_id, row.count) for row in letters] == [(huge[0], 1)]
    assert letters[0].size_bytes > 32_000
    assert huge[0] in caplog.text
    assert "example.test" not in caplog.text
    assert _pending(ledger) == huge
    _assert_each_once(api, normal)


async def test_rejected_event_is_isolated(
        ledger: Ledger, segment_api: tuple[FakeBatchApi, ResetProxy]) -> None:
    api, proxy = segment_api
    ids = fill_outbox(ledger, 40)
    api.poisoned = {ids[17]}
    sink = _sink(proxy.url)

    summary = await push_outbox(ledger, sink)
    await sink.aclose()

    assert summary.pushed == 39
    assert summary.dead_lettered == 1
    letters = Engagement(ledger).dead_letters()
    assert [(row.event_id, row.reason) for row in letters] == [(ids[17], "HTTP 400")]
    _assert_each_once(api, [i for i in ids if i != ids[17]])


async def test_crash_before_ack_repushes_same_ids(
        tmp_path, segment_api: tuple[FakeBatchApi, ResetProxy]) -> None:
    api, proxy = segment_api

    class CrashingLedger(Ledger):
        def mark_pushed(self, event_ids) -> None:
            raise KeyboardInterrupt("crash between push and acknowledgement")

    url = f"sqlite:///{tmp_path / 'crash.db'}"
    crashing = CrashingLedger(url)
    ids = fill_outbox(crashing, 10)
    sink = _sink(proxy.url)
    with pytest.raises(KeyboardInterrupt):
        await push_outbox(crashing, sink)
    crashing.close()

    restarted = Ledger(url)
    summary = await push_outbox(restarted, sink)
    await sink.aclose()

    assert summary.pushed == 10
    assert _pending(restarted) == []
    assert all(len(copies) == 2 for copies in api.received.values())
    _assert_each_once(api, ids)
    restarted.close()


async def test_sink_down_keeps_events_pending(
        ledger: Ledger, segment_api: tuple[FakeBatchApi, ResetProxy]) -> None:
    api, proxy = segment_api
    ids = fill_outbox(ledger, 4)
    api.faults = ["500"] * 3
    sink = _sink(proxy.url, max_attempts=3)

    with pytest.raises(SinkUnavailable):
        await push_outbox(ledger, sink)
    assert sorted(_pending(ledger)) == ids
    summary = await push_outbox(ledger, sink)
    await sink.aclose()

    assert summary.pushed == 4
    _assert_each_once(api, ids)


async def test_wrong_write_key_is_not_retried(
        ledger: Ledger, segment_api: tuple[FakeBatchApi, ResetProxy]) -> None:
    api, proxy = segment_api
    ids = fill_outbox(ledger, 2)
    sink = SegmentBatchSink(segment_config(proxy.url), "wrong-key")

    with pytest.raises(SinkUnavailable, match="HTTP 401"):
        await push_outbox(ledger, sink)
    await sink.aclose()

    assert sorted(_pending(ledger)) == ids
    assert api.calls == 1


async def test_long_retry_after_ends_push(
        ledger: Ledger, segment_api: tuple[FakeBatchApi, ResetProxy]) -> None:
    api, proxy = segment_api
    fill_outbox(ledger, 1)
    api.faults = ["429"]
    sink = _sink(proxy.url, max_backoff_seconds=0.5)

    with pytest.raises(SinkUnavailable, match="wait 1 s"):
        await push_outbox(ledger, sink)
    await sink.aclose()

    assert len(_pending(ledger)) == 1
    assert json.loads(json.dumps(api.received)) == {}
