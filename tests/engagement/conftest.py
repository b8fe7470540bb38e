"""Outbox fixtures and fake CDP endpoints on real uvicorn servers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session

from carepost.core.settings import RudderStackSink, SegmentSink
from carepost.ledger import Ledger, OutboxEvent
from carepost.ledger.models import utc_now

from tests.support.uvicorn_thread import UvicornThread
from .fakes import FakeBatchApi, ResetProxy

WRITE_KEY = "test-write-key"


def fill_outbox(ledger: Ledger, count: int, *, pad: int = 0,
                start: int = 0) -> list[str]:
    """Queue ``count`` outbox events; ``pad`` bytes make each one bigger."""
    ids = []
    with Session(ledger.engine) as session:
        for number in range(start, start + count):
            event_id = f"evt-{number:06d}"
            payload = {
                "event_id": event_id, "type": "email_opened",
                "profile_id": f"p-{number}", "campaign": "diabetes_education",
                "delivery_id": number, "occurred_at": utc_now().isoformat(),
                "properties": {"campaign": "diabetes_education", "machine": False,
                               "template": "diabetes_education" + "x" * pad,
                               "template_version": "v1",
                               "reason": "550 5.1.1 <someone@example.test>"},
            }
            session.add(OutboxEvent(event_id=event_id, type="email_opened",
                                    profile_id=f"p-{number}",
                                    campaign="diabetes_education",
                                    delivery_id=number,
                                    payload=json.dumps(payload)))
            ids.append(event_id)
        session.commit()
    return ids


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    book = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield book
    book.close()


@pytest.fixture
def segment_api() -> Iterator[tuple[FakeBatchApi, ResetProxy]]:
    api = FakeBatchApi(WRITE_KEY, batch_limit=500_000, flavour="segment")
    with UvicornThread(api.app) as server, ResetProxy(server.port) as proxy:
        yield api, proxy


@pytest.fixture
def rudder_api() -> Iterator[tuple[FakeBatchApi, str]]:
    api = FakeBatchApi(WRITE_KEY, batch_limit=4_000_000, flavour="rudderstack")
    with UvicornThread(api.app) as server:
        yield api, server.url


def segment_config(base_url: str, **options: object) -> SegmentSink:
    return SegmentSink(kind="segment", url=f"{base_url}/v1/batch", **options)


def rudder_config(base_url: str, **options: object) -> RudderStackSink:
    return RudderStackSink(kind="rudderstack", url=f"{base_url}/v1/batch", **options)
