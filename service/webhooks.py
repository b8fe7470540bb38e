"""Webhook routes: CDP events in, committed to the durable inbox.

``POST /webhooks/segment`` takes Segment's webhook destination and
``POST /webhooks/events`` a generic signed event (see
``webhooks_verify`` for both signature schemes). Each request goes
through the same steps:

1. read the body up to ``webhooks.max_body_bytes`` (413 beyond it);
2. check the signature over the raw bytes (401);
3. parse and map the JSON (400);
4. commit the event to the inbox; a known ``event_id`` is a no-op;
5. only then reply 2xx, and wake the behaviour flow through ``notify``.

Replies: 202 ``accepted`` for a new event, 200 ``duplicate`` for an id the
inbox already holds, 200 ``ignored`` for a Segment message carepost does
not act on (so Segment does not retry it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from carepost.core.campaign import load_campaigns
from carepost.core.settings import Settings
from carepost.ledger.inbox import Inbox, IncomingEvent
from carepost.service.app import RouteFactory, ServiceState
from carepost.service.webhooks_verify import (
    SEGMENT_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookRejected,
    generic_event,
    parse_json,
    segment_event,
    verify_events,
    verify_segment,
)

__all__ = ["webhook_routes"]

log = logging.getLogger(__name__)

# Called with the event id after the inbox commit; must not block.
Notify = Callable[[str], None]


async def read_limited_body(request: Request, limit: int) -> bytes:
    """Read the request body, rejecting it with 413 once it passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise WebhookRejected(413, f"body of {declared} bytes is over the "
                                   f"{limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookRejected(413, f"body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


class _WebhookEndpoints:
    def __init__(self, state: ServiceState, notify: Notify | None) -> None:
        settings = state.settings
        self.limit = settings.webhooks.max_body_bytes
        self.tolerance = settings.webhooks.tolerance_seconds
        self.segment_secret = settings.secret(settings.webhooks.segment_secret_env)
        self.events_secret = settings.secret(settings.webhooks.events_secret_env)
        self.inbox = Inbox(state.ledger.engine)
        self.notify = notify
        self.trigger_keys = _trigger_keys(settings)

    async def segment(self, request: Request) -> JSONResponse:
        try:
            body = await read_limited_body(request, self.limit)
            verify_segment(self.segment_secret, body,
                           request.headers.get(SEGMENT_SIGNATURE_HEADER))
            incoming = segment_event(parse_json(body))
        except WebhookRejected as exc:
            return _rejected("segment", exc)
        if incoming is None:
            return JSONResponse({"status": "ignored"}, status_code=200)
        return await self._store(incoming)

    async def events(self, request: Request) -> JSONResponse:
        try:
            body = await read_limited_body(request, self.limit)
            verify_events(self.events_secret, body,
                          request.headers.get(TIMESTAMP_HEADER),
                          request.headers.get(SIGNATURE_HEADER),
                          now=datetime.now(UTC), tolerance_seconds=self.tolerance)
            incoming = generic_event(parse_json(body))
        except WebhookRejected as exc:
            return _rejected("events", exc)
        return await self._store(incoming)

    async def _store(self, incoming: IncomingEvent) -> JSONResponse:
        keys = self.trigger_keys.get(incoming.type)
        if keys and not any(incoming.properties.get(key) for key in keys):
            # Accepting it would answer 2xx for an event no campaign can send.
            return _rejected(incoming.source, WebhookRejected(
                422, f"event {incoming.event_id} of type {incoming.type} has no "
                f"{' or '.join(sorted(keys))} property, which the campaigns it "
                "triggers need; add it to the event's properties"))
        # The commit happens before the reply: a crash after it loses nothing.
        stored = await run_in_threadpool(self.inbox.accept, incoming)
        reply = {"status": "accepted" if stored else "duplicate",
                 "event_id": incoming.event_id}
        if not stored:
            log.info("event %s from %s was already in the inbox; ignored",
                     incoming.event_id, incoming.source)
            return JSONResponse(reply, status_code=200)
        log.info("accepted %s event %s for profile %s", incoming.type,
                 incoming.event_id, incoming.profile_id)
        if self.notify is not None:
            self.notify(incoming.event_id)
        return JSONResponse(reply, status_code=202)


def _trigger_keys(settings: Settings) -> dict[str, set[str]]:
    """Return, per event type, the key properties of the campaigns it triggers."""
    keys: dict[str, set[str]] = {}
    for campaign in load_campaigns(settings.path(settings.campaigns_dir)).values():
        if campaign.trigger is not None:
            keys.setdefault(campaign.trigger.event, set()).add(campaign.trigger.key)
    return keys


def _rejected(endpoint: str, exc: WebhookRejected) -> JSONResponse:
    log.warning("rejected a %s webhook with %d: %s", endpoint, exc.status, exc.reason)
    return JSONResponse({"error": exc.reason}, status_code=exc.status)


def webhook_routes(notify: Notify | None = None) -> RouteFactory:
    """Return the route factory for ``create_app``; ``notify`` wakes the flow."""

    def factory(state: ServiceState) -> list[BaseRoute]:
        endpoints = _WebhookEndpoints(state, notify)
        return [
            Route("/webhooks/segment", endpoints.segment, methods=["POST"]),
            Route("/webhooks/events", endpoints.events, methods=["POST"]),
        ]

    return factory
