"""Signature checks and payload mapping for inbound CDP webhooks.

Pure functions, so the rules are tested without a server:

- Segment's webhook destination signs the raw body with the shared
  secret: ``X-Signature`` is the hex HMAC-SHA1 (Segment documentation,
  "Webhooks" destination). It carries no timestamp, so replays are
  stopped by the inbox remembering every ``messageId``.
- The generic endpoint signs ``timestamp + "." + raw body`` with
  HMAC-SHA256; ``X-Carepost-Timestamp`` contains Unix seconds and
  ``X-Carepost-Signature`` the hex digest. A timestamp more than the
  tolerance (5 minutes by default) in the past or future is rejected.

Both compare digests with ``hmac.compare_digest`` over the raw request
bytes, never over re-serialised JSON, so key order and whitespace do
not matter as long as the signature covers the bytes received.

Errors::

    WebhookRejected (status, reason)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from typing import Any

from carepost.core.errors import CarepostError
from carepost.core.schema import EVENT_TYPES
from carepost.ledger.inbox import IncomingEvent, kept_properties

TIMESTAMP_HEADER = "x-carepost-timestamp"
SIGNATURE_HEADER = "x-carepost-signature"
SEGMENT_SIGNATURE_HEADER = "x-signature"

# Segment track event names (as a practice's CDP sends them) and the
# canonical event types they map to. Other names are acknowledged and
# ignored, so Segment does not retry them.
SEGMENT_EVENT_TYPES: dict[str, str] = {
    "Appointment Booked": "appointment_booked",
    "Appointment Rescheduled": "appointment_booked",
    "Appointment Attended": "appointment_attended",
    "Appointment Completed": "appointment_attended",
    "Appointment Cancelled": "appointment_cancelled",
    "Appointment Missed": "appointment_no_show",
    "Appointment No Show": "appointment_no_show",
    "Prescription Written": "prescription_written",
    "Prescription Filled": "prescription_filled",
    "Form Submitted": "form_submitted",
    "Portal Login": "portal_login",
}

# Profile and event ids: printable, no spaces, no "@" (an address used as
# a user id would put PHI into the inbox and the logs).
_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class WebhookRejected(CarepostError):
    """A webhook request is rejected with an HTTP ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


def verify_segment(secret: bytes, body: bytes, signature: str | None) -> None:
    """Check Segment's ``X-Signature`` (hex HMAC-SHA1 of the raw body)."""
    expected = hmac.new(secret, body, hashlib.sha1).hexdigest()
    _compare(expected, signature, SEGMENT_SIGNATURE_HEADER)


def sign_events(secret: bytes, timestamp: int, body: bytes) -> str:
    """Return the ``X-Carepost-Signature`` value for a generic webhook."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify_events(secret: bytes, body: bytes, timestamp: str | None,
                  signature: str | None, *, now: datetime,
                  tolerance_seconds: int) -> None:
    """Check the generic endpoint's timestamp and HMAC-SHA256 signature."""
    if timestamp is None or not timestamp.strip().isdigit():
        raise WebhookRejected(401, f"missing or invalid {TIMESTAMP_HEADER} header; "
                                   "send Unix seconds")
    seconds = int(timestamp)
    skew = abs(now.timestamp() - seconds)
    if skew > tolerance_seconds:
        raise WebhookRejected(401, f"timestamp is {skew:.0f} s away from the "
                                   f"server clock; the limit is {tolerance_seconds} s")
    _compare(sign_events(secret, seconds, body), signature, SIGNATURE_HEADER)


def _compare(expected: str, provided: str | None, header: str) -> None:
    if not provided:
        raise WebhookRejected(401, f"missing {header} header")
    candidate = provided.strip().lower().encode("ascii", "replace")
    if not hmac.compare_digest(expected.encode(), candidate):
        raise WebhookRejected(401, f"invalid signature in {header}")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookRejected(400, f"body is not valid JSON ({exc.__class__.__name__} "
                                   f"at position {getattr(exc, 'pos', 0)})") from None


def segment_event(payload: Any) -> IncomingEvent | None:
    """Map a Segment message to an inbox event; None for an ignored one."""
    if isinstance(payload, list):
        raise WebhookRejected(400, "batched deliveries are not accepted because "
                                   "Segment signs only the first event; turn "
                                   "batching off for this destination")
    if not isinstance(payload, dict):
        raise WebhookRejected(400, "expected a JSON object")
    if payload.get("type") != "track":
        return None
    event_type = SEGMENT_EVENT_TYPES.get(str(payload.get("event")))
    if event_type is None or payload.get("userId") in (None, ""):
        return None
    properties = payload.get("properties") or {}
    if not isinstance(properties, dict):
        raise WebhookRejected(400, "properties must be a JSON object")
    return IncomingEvent(
        event_id=_identifier(payload.get("messageId"), "messageId"),
        source="segment",
        type=event_type,
        profile_id=_identifier(payload.get("userId"), "userId"),
        occurred_at=_timestamp(payload.get("timestamp"), "timestamp"),
        properties=kept_properties(properties),
    )


def generic_event(payload: Any) -> IncomingEvent:
    """Validate a generic webhook body (one canonical event)."""
    if not isinstance(payload, dict):
        raise WebhookRejected(400, "expected a JSON object with event_id, type, "
                                   "profile_id and occurred_at")
    event_type = payload.get("type")
    if event_type not in EVENT_TYPES:
        known = ", ".join(sorted(EVENT_TYPES))
        raise WebhookRejected(400, f"unknown event type {str(event_type)[:40]!r}; "
                                   f"expected one of: {known}")
    properties = payload.get("properties") or {}
    if not isinstance(properties, dict):
        raise WebhookRejected(400, "properties must be a JSON object")
    return IncomingEvent(
        event_id=_identifier(payload.get("event_id"), "event_id"),
        source="events",
        type=event_type,
        profile_id=_identifier(payload.get("profile_id"), "profile_id"),
        occurred_at=_timestamp(payload.get("occurred_at"), "occurred_at"),
        properties=kept_properties(properties),
    )


def _identifier(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        # The value is not echoed: it could be an address.
        raise WebhookRejected(400, f"{field} is missing or not an id; use 1-128 "
                                   "letters, digits, '.', '_', ':' or '-'")
    return value


def _timestamp(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise WebhookRejected(400, f"{field} is missing; use an ISO 8601 time "
                                   "with an offset, such as 2024-03-06T16:20:00Z")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise WebhookRejected(400, f"{field} is not an ISO 8601 time; use for "
                                   "example 2024-03-06T16:20:00Z") from None
    if parsed.tzinfo is None:
        raise WebhookRejected(400, f"{field} has no UTC offset; add Z or +00:00")
    return parsed.astimezone(UTC)
