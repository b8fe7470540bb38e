"""CDP event sinks behind one ``EventSink`` protocol.

    SinkError (CarepostError)
    ├── SinkRejected      the sink returned 4xx (not 429) for this batch
    └── SinkUnavailable   retries ran out, or the credentials are refused

A sink splits outbox events into batches that respect its limits
(``plan``) and sends one batch (``send``). The caller acknowledges a batch
in the ledger only after ``send`` returns, so an event counts as pushed
only on a 2xx for its own batch. Every message carries the outbox event
id as ``messageId``, so a batch re-sent after a timeout or a crash is
deduplicated by the CDP. Events are minimised on the way out: only the
property names in ``PUSHED_PROPERTIES`` leave the machine.

Sinks: Segment's HTTP Tracking API ``/v1/batch``, RudderStack's HTTP API
``/v1/batch`` (same message shape, other limits), a generic webhook
signed with HMAC-SHA256, and the demo's JSON Lines file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from carepost.connectors.jsonl_sink import JsonlSink
from carepost.core.errors import CarepostError, ConfigError
from carepost.core.settings import (
    RudderStackSink,
    SegmentSink,
    Settings,
    WebhookSink,
    HttpSinkSettings,
)

log = logging.getLogger(__name__)

# Property names that may leave the machine; anything else (an SMTP reply
# text, for example, which can quote an address) stays in the ledger.
PUSHED_PROPERTIES = frozenset({
    "campaign", "run", "template", "template_version", "machine",
    "machine_rule", "link_index", "goal_event", "source_event_id", "touch",
})
LIBRARY = {"name": "carepost", "version": "0.1.0"}

# Segment's documented limits (HTTP Tracking API page): 32 KB per event,
# 500 KB per batch request, at most 2,500 events per batch. KB is taken
# as 1,000 bytes to stay under either reading.
SEGMENT_LIMITS = (32_000, 500_000, 2_500)
# RudderStack's HTTP API page: 32 KB per event, 4 MB per batch.
RUDDERSTACK_LIMITS = (32_000, 4_000_000, 10_000)

SIGNATURE_HEADER = "X-Carepost-Signature"
TIMESTAMP_HEADER = "X-Carepost-Timestamp"


class SinkError(CarepostError):
    """A push to the CDP failed; the events stay in the outbox."""


class SinkRejected(SinkError):
    def __init__(self, sink: str, status: int, detail: str) -> None:
        self.status = status
        super().__init__(f"{sink} rejected the batch with HTTP {status}: {detail}",
                         hint="the batch is split to find the event it rejects")


class SinkUnavailable(SinkError):
    """Retries ran out or the sink rejected the credentials."""


@dataclass(frozen=True)
class SinkEvent:
    """One outbox event: its id (the dedupe key) and its JSON payload."""

    event_id: str
    payload: str


@dataclass
class Plan:
    batches: list[list[SinkEvent]] = field(default_factory=list)
    oversized: list[tuple[SinkEvent, int]] = field(default_factory=list)


class EventSink(Protocol):
    name: str

    def plan(self, events: Sequence[SinkEvent]) -> Plan: ...

    async def send(self, batch: Sequence[SinkEvent]) -> None: ...

    async def aclose(self) -> None: ...


def minimal_event(payload: str) -> dict[str, Any]:
    """Return the outbox payload with only the properties allowed out."""
    data = json.loads(payload)
    properties = {key: value for key, value in data.get("properties", {}).items()
                  if key in PUSHED_PROPERTIES and value is not None}
    properties["delivery_id"] = data.get("delivery_id")
    return {"event_id": data["event_id"], "type": data["type"],
            "profile_id": data["profile_id"], "campaign": data["campaign"],
            "occurred_at": data["occurred_at"], "properties": properties}


def track_message(payload: str) -> dict[str, Any]:
    """Map an outbox payload to a Segment spec ``track`` message."""
    event = minimal_event(payload)
    return {"type": "track", "userId": event["profile_id"],
            "event": event["type"], "messageId": event["event_id"],
            "timestamp": event["occurred_at"], "properties": event["properties"]}


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def retry_after_seconds(value: str | None) -> float | None:
    """Parse ``Retry-After`` (seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class HttpBatchSink:
    """A JSON batch endpoint with size limits, retries and backoff.

    429, 5xx, timeouts and connection errors are retried with exponential
    backoff and jitter; ``Retry-After`` is honoured, and a wait longer
    than ``max_backoff_seconds`` ends the push (the events stay pending).
    """

    name = "http"

    def __init__(self, config: HttpSinkSettings, limits: tuple[int, int, int], *,
                 backoff_base_seconds: float = 0.5,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.url = config.url
        self.max_event_bytes, self.max_batch_bytes, self.max_batch_events = limits
        self.max_attempts = config.max_attempts
        self.max_backoff = config.max_backoff_seconds
        self.backoff_base = backoff_base_seconds
        self.sleep = sleep
        self.client = httpx.AsyncClient(timeout=config.timeout_seconds,
                                        follow_redirects=False)

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- per-sink shape --------------------------------------------------------

    def encode(self, event: SinkEvent) -> bytes:
        return _compact(track_message(event.payload))

    def envelope(self) -> dict[str, Any]:
        return {"batch": [], "sentAt": _iso_now(), "context": {"library": LIBRARY}}

    def body(self, batch: Sequence[SinkEvent]) -> bytes:
        envelope = self.envelope()
        envelope["batch"] = [json.loads(self.encode(event)) for event in batch]
        return _compact(envelope)

    def headers(self, body: bytes) -> dict[str, str]:
        return {"Content-Type": "application/json"}

    # -- planning ------------------------------------------------------------

    def plan(self, events: Sequence[SinkEvent]) -> Plan:
        """Split into batches under the limits; set aside oversized events."""
        plan = Plan()
        overhead = len(_compact(self.envelope()))
        current: list[SinkEvent] = []
        size = overhead
        for event in events:
            event_size = len(self.encode(event))
            if event_size > self.max_event_bytes:
                plan.oversized.append((event, event_size))
                continue
            full = len(current) >= self.max_batch_events
            if current and (full or size + event_size + 1 > self.max_batch_bytes):
                plan.batches.append(current)
                current, size = [], overhead
            current.append(event)
            size += event_size + 1
        if current:
            plan.batches.append(current)
        return plan

    # -- sending -------------------------------------------------------------

    async def send(self, batch: Sequence[SinkEvent]) -> None:
        """POST one batch; return only after a 2xx for this batch."""
        for attempt in range(1, self.max_attempts + 1):
            body = self.body(batch)  # fresh sentAt and signature per attempt
            wait = await self._attempt(body, attempt, len(batch))
            if wait is None:
                return
            if attempt == self.max_attempts:
                break
            await self.sleep(wait)
        raise SinkUnavailable(
            f"{self.name} did not accept a batch of {len(batch)} events after "
            f"{self.max_attempts} attempts",
            hint="the events stay in the outbox; run carepost feedback again")

    async def _attempt(self, body: bytes, attempt: int, count: int) -> float | None:
        """Make one request; None on success, else the seconds to wait."""
        try:
            response = await self.client.post(self.url, content=body,
                                              headers=self.headers(body))
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            log.warning("%s push of %d events, attempt %d: %s", self.name, count,
                        attempt, type(exc).__name__)
            return self._backoff(attempt)
        status = response.status_code
        if 200 <= status < 300:
            return None
        if status in (401, 403):
            raise SinkUnavailable(f"{self.name} rejected the credentials (HTTP {status})",
                                  hint="check the write key or secret variable")
        if status == 429 or status >= 500:
            log.warning("%s push of %d events, attempt %d: HTTP %d", self.name,
                        count, attempt, status)
            return self._backoff(attempt, response.headers.get("Retry-After"))
        raise SinkRejected(self.name, status, response.text[:200])

    def _backoff(self, attempt: int, retry_after: str | None = None) -> float:
        delay = self.backoff_base * 2 ** (attempt - 1) * (1 + random.random() / 2)
        requested = retry_after_seconds(retry_after)
        if requested is not None:
            if requested > self.max_backoff:
                raise SinkUnavailable(
                    f"{self.name} asked to wait {requested:.0f} s",
                    hint="the events stay in the outbox; run carepost feedback later")
            delay = max(delay, requested)
        return min(delay, self.max_backoff)


def _basic(username: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:".encode()).decode()


class SegmentBatchSink(HttpBatchSink):
    """Segment ``/v1/batch``: the write key is the Basic auth username."""

    name = "segment"

    def __init__(self, config: SegmentSink, write_key: str, **options: Any) -> None:
        super().__init__(config, SEGMENT_LIMITS, **options)
        self._authorization = _basic(write_key)

    def headers(self, body: bytes) -> dict[str, str]:
        return {"Content-Type": "application/json",
                "Authorization": self._authorization}


class RudderStackBatchSink(SegmentBatchSink):
    """RudderStack ``/v1/batch``: Segment's shape with a 4 MB batch limit."""

    name = "rudderstack"

    def __init__(self, config: RudderStackSink, write_key: str,
                 **options: Any) -> None:
        HttpBatchSink.__init__(self, config, RUDDERSTACK_LIMITS, **options)
        self._authorization = _basic(write_key)


def sign_webhook(secret: bytes, timestamp: str, body: bytes) -> str:
    """Return ``v1=<hex HMAC-SHA256>`` over ``timestamp + "." + body``."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


class WebhookBatchSink(HttpBatchSink):
    """POST ``{"events": [...], "sent_at": ...}`` signed with a shared secret."""

    name = "webhook"

    def __init__(self, config: WebhookSink, secret: bytes, **options: Any) -> None:
        limits = (SEGMENT_LIMITS[0], config.max_batch_bytes, 2_500)
        super().__init__(config, limits, **options)
        self.secret = secret

    def encode(self, event: SinkEvent) -> bytes:
        return _compact(minimal_event(event.payload))

    def envelope(self) -> dict[str, Any]:
        return {"events": [], "sent_at": _iso_now()}

    def body(self, batch: Sequence[SinkEvent]) -> bytes:
        envelope = self.envelope()
        envelope["events"] = [json.loads(self.encode(event)) for event in batch]
        return _compact(envelope)

    def headers(self, body: bytes) -> dict[str, str]:
        timestamp = str(int(time.time()))
        return {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign_webhook(self.secret, timestamp, body)}


class JsonlEventSink:
    """The demo's JSON Lines file as an ``EventSink`` (one batch, no limits)."""

    name = "jsonl"

    def __init__(self, path: Path) -> None:
        self.file = JsonlSink(path)

    def plan(self, events: Sequence[SinkEvent]) -> Plan:
        return Plan(batches=[list(events)] if events else [])

    async def send(self, batch: Sequence[SinkEvent]) -> None:
        self.file.push(event.payload for event in batch)

    async def aclose(self) -> None:
        return None


def _required_env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{what} variable {name} is not set",
                          hint=f"export {name} before pushing events")
    return value


def build_sink(settings: Settings, **options: Any) -> EventSink:
    """Build the sink ``settings.sink`` names; secrets come from the environment."""
    config = settings.sink
    if isinstance(config, SegmentSink):
        return SegmentBatchSink(config, _required_env(config.write_key_env,
                                                      "Segment write key"), **options)
    if isinstance(config, RudderStackSink):
        key = _required_env(config.write_key_env, "RudderStack write key")
        return RudderStackBatchSink(config, key, **options)
    if isinstance(config, WebhookSink):
        secret = _required_env(config.secret_env, "webhook signing secret")
        return WebhookBatchSink(config, secret.encode(), **options)
    return JsonlEventSink(settings.state_path / config.path)


__all__ = [
    "EventSink", "HttpBatchSink", "JsonlEventSink", "PUSHED_PROPERTIES", "Plan",
    "RudderStackBatchSink", "SegmentBatchSink", "SinkError", "SinkEvent",
    "SinkRejected", "SinkUnavailable", "WebhookBatchSink", "build_sink",
    "minimal_event", "retry_after_seconds", "sign_webhook", "track_message",
]
