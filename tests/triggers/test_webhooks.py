"""Webhook endpoints on a real uvicorn server: signatures, replay, limits.

Profile and event ids are invented; no body carries a name or address.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from carepost.core.settings import load_settings
from carepost.ledger import InboxEvent, Ledger
from carepost.service.app import create_app
from carepost.service.webhooks import webhook_routes
from carepost.service.webhooks_verify import sign_events
from tests.flows.project import make_project
from tests.support.uvicorn_thread import UvicornThread

SEGMENT_SECRET = b"segment-test-secret"
EVENTS_SECRET = b"events-test-secret"


@dataclass
class Service:
    url: str
    ledger: Ledger
    woken: list[str]

    def inbox(self) -> list[InboxEvent]:
        with Session(self.ledger.engine) as session:
            return list(session.exec(select(InboxEvent)))


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    monkeypatch.setenv("CAREPOST_SEGMENT_WEBHOOK_SECRET", SEGMENT_SECRET.decode())
    monkeypatch.setenv("CAREPOST_EVENTS_WEBHOOK_SECRET", EVENTS_SECRET.decode())
    settings = load_settings(make_project(tmp_path / "project").config)
    ledger = Ledger(settings.ledger_url)
    woken: list[str] = []
    app = create_app(settings, route_factories=(webhook_routes(woken.append),),
                     ledger=ledger)
    with UvicornThread(app) as server:
        yield Service(server.url, ledger, woken)
    ledger.close()


def _event(event_id: str = "evt-1", **changes: object) -> dict[str, object]:
    event: dict[str, object] = {
        "event_id": event_id, "type": "appointment_no_show",
        "profile_id": "pt-000123", "occurred_at": "2024-03-06T16:20:00Z",
        "properties": {"appointment_id": "ap-77", "first_name": "Zqx"},
    }
    event.update(changes)
    return event


def _post_event(url: str, body: bytes, *, timestamp: int | None = None,
                secret: bytes = EVENTS_SECRET) -> httpx.Response:
    stamp = int(time.time()) if timestamp is None else timestamp
    headers = {"X-Carepost-Timestamp": str(stamp),
               "X-Carepost-Signature": sign_events(secret, stamp, body),
               "Content-Type": "application/json"}
    return httpx.post(f"{url}/webhooks/events", content=body, headers=headers)


def _post_segment(url: str, body: bytes, secret: bytes = SEGMENT_SECRET
                  ) -> httpx.Response:
    signature = hmac.new(secret, body, hashlib.sha1).hexdigest()
    return httpx.post(f"{url}/webhooks/segment", content=body,
                      headers={"X-Signature": signature,
                               "Content-Type": "application/json"})


def test_event_accepted_and_stored(service: Service) -> None:
    response = _post_event(service.url, json.dumps(_event()).encode())
    assert response.status_code == 202
    assert response.json()["status"] == "accepted"
    rows = service.inbox()
    assert [row.event_id for row in rows] == ["evt-1"]
    assert json.loads(rows[0].properties) == {"appointment_id": "ap-77"}
    assert service.woken == ["evt-1"]


def test_replayed_event_triggers_nothing(service: Service) -> None:
    body = json.dumps(_event()).encode()
    first = _post_event(service.url, body)
    second = _post_event(service.url, body)
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json()["status"] == "duplicate"
    assert len(service.inbox()) == 1
    assert service.woken == ["evt-1"]


def test_wrong_signature_rejected(service: Service) -> None:
    body = json.dumps(_event()).encode()
    response = _post_event(service.url, body, secret=b"not-the-secret")
    assert response.status_code == 401
    assert service.inbox() == []


def test_missing_signature_rejected(service: Service) -> None:
    response = httpx.post(f"{service.url}/webhooks/events",
                          content=json.dumps(_event()).encode(),
                          headers={"X-Carepost-Timestamp": str(int(time.time()))})
    assert response.status_code == 401


@pytest.mark.parametrize("offset", [-2 * 86400, -360, 360])
def test_stale_or_future_timestamp_rejected(service: Service, offset: int) -> None:
    body = json.dumps(_event()).encode()
    response = _post_event(service.url, body, timestamp=int(time.time()) + offset)
    assert response.status_code == 401
    assert "timestamp" in response.json()["error"]
    assert service.inbox() == []


def test_whitespace_variant_accepted(service: Service) -> None:
    body = json.dumps(_event(), indent=4, sort_keys=True).encode() + b"\n\n"
    response = _post_event(service.url, body)
    assert response.status_code == 202


def test_signature_covers_raw_bytes(service: Service) -> None:
    signed = json.dumps(_event()).encode()
    stamp = int(time.time())
    headers = {"X-Carepost-Timestamp": str(stamp),
               "X-Carepost-Signature": sign_events(EVENTS_SECRET, stamp, signed)}
    reformatted = json.dumps(_event(), indent=2).encode()
    response = httpx.post(f"{service.url}/webhooks/events", content=reformatted,
                          headers=headers)
    assert response.status_code == 401


def test_malformed_json_rejected(service: Service) -> None:
    response = _post_event(service.url, b'{"event_id": "evt-1",')
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_unknown_event_type_rejected(service: Service) -> None:
    body = json.dumps(_event(type="pizza_ordered")).encode()
    response = _post_event(service.url, body)
    assert response.status_code == 400


def test_address_as_profile_id_rejected(service: Service) -> None:
    body = json.dumps(_event(profile_id="zqx@example.test")).encode()
    response = _post_event(service.url, body)
    assert response.status_code == 400
    assert "example.test" not in response.text


def test_oversized_body_rejected(service: Service) -> None:
    padding = "x" * (70 * 1024)
    body = json.dumps(_event(properties={"appointment_id": "ap-1",
                                         "note": padding})).encode()
    response = _post_event(service.url, body)
    assert response.status_code == 413
    assert service.inbox() == []


def test_oversized_chunked_body_rejected(service: Service) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(80):
            yield b"x" * 1024

    stamp = int(time.time())
    response = httpx.post(f"{service.url}/webhooks/events", content=chunks(),
                          headers={"X-Carepost-Timestamp": str(stamp),
                                   "X-Carepost-Signature": "00"})
    assert response.status_code == 413


def _segment_track(message_id: str = "api-1b2c3d4e", **changes: object) -> dict:
    message: dict[str, object] = {
        "version": 1, "type": "track", "userId": "pt-000123",
        "event": "Appointment Missed",
        "properties": {"appointment_id": "ap-5531", "first_name": "Zqx"},
        "timestamp": "2024-03-06T16:20:00.000Z", "messageId": message_id,
    }
    message.update(changes)
    return message


def test_segment_track_mapped(service: Service) -> None:
    response = _post_segment(service.url, json.dumps(_segment_track()).encode())
    assert response.status_code == 202
    [row] = service.inbox()
    assert row.event_id == "api-1b2c3d4e"
    assert row.type == "appointment_no_show"
    assert row.profile_id == "pt-000123"
    assert json.loads(row.properties) == {"appointment_id": "ap-5531"}


def test_segment_retry_is_duplicate(service: Service) -> None:
    body = json.dumps(_segment_track()).encode()
    assert _post_segment(service.url, body).status_code == 202
    retry = _post_segment(service.url, body)
    assert retry.status_code == 200
    assert retry.json()["status"] == "duplicate"
    assert len(service.inbox()) == 1


def test_segment_wrong_signature(service: Service) -> None:
    body = json.dumps(_segment_track()).encode()
    response = _post_segment(service.url, body, secret=b"other")
    assert response.status_code == 401


def test_segment_unmapped_event_ignored(service: Service) -> None:
    body = json.dumps(_segment_track(event="Newsletter Opened")).encode()
    response = _post_segment(service.url, body)
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert service.inbox() == []


def test_segment_batch_rejected(service: Service) -> None:
    body = json.dumps([_segment_track("a"), _segment_track("b")]).encode()
    response = _post_segment(service.url, body)
    assert response.status_code == 400
    assert "batch" in response.json()["error"]


def test_event_without_trigger_key_rejected(service: Service) -> None:
    event = _event(properties={"clinic": "north"})
    response = _post_event(service.url, json.dumps(event).encode())
    assert response.status_code == 422
    assert "appointment_id" in response.json()["error"]
    assert service.inbox() == []
