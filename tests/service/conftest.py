"""A ledger with sent deliveries and the tracking service on real uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from carepost.core.settings import Settings
from carepost.core.states import DeliveryState, Purpose
from carepost.ledger import Delivery, Ledger, Settlement, hash_address
from carepost.service.app import create_app
from carepost.service.tracking import tracking_routes
from tests.conftest import REPO

from tests.support.uvicorn_thread import UvicornThread

ADDRESS_KEY = b"address-key-for-tests"


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    raw = {
        "root": str(REPO),
        "state_dir": str(tmp_path / "state"),
        "practice": {"name": "Prairie Family Health",
                     "postal_address": "1200 O Street, Lincoln, NE 68508"},
        "sender": {"address": "care@prairie-health.example.test",
                   "name": "Prairie Family Health"},
        "source": {"kind": "files", "profiles": "data/sample/profiles.csv",
                   "events": "data/sample/events.parquet"},
        "tracking": {"base_url": "https://links.example.test",
                     "secret_env": "CAREPOST_TEST_TRACKING_SECRET"},
        **overrides,
    }
    return Settings.model_validate(raw)


def add_sent_delivery(ledger: Ledger, profile_id: str, *, campaign: str,
                      purpose: Purpose, sent_seconds_ago: float = 3600,
                      address: str | None = None) -> int:
    """Claim, send and settle one delivery; date its settlement in the past."""
    address = address or f"{profile_id}@example.test"
    claim = ledger.claim(campaign=campaign, run_key="2024-02-15",
                         profile_id=profile_id, purpose=purpose,
                         template=campaign, template_version="v1",
                         address_hash=hash_address(ADDRESS_KEY, address))
    assert ledger.begin_send(claim.delivery_id)
    ledger.settle(claim.delivery_id, Settlement(DeliveryState.SENT))
    with Session(ledger.engine) as session:
        row = session.get(Delivery, claim.delivery_id)
        row.updated_at = datetime.now(UTC) - timedelta(seconds=sent_seconds_ago)
        session.add(row)
        session.commit()
    return claim.delivery_id


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setenv("CAREPOST_TEST_TRACKING_SECRET", "current-tracking-secret")
    return b"current-tracking-secret"


@pytest.fixture
def settings(tmp_path: Path, secret: bytes) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    book = Ledger(settings.ledger_url)
    yield book
    book.close()


@pytest.fixture
def service(settings: Settings, ledger: Ledger) -> Iterator[str]:
    app = create_app(settings, route_factories=(tracking_routes,), ledger=ledger)
    with UvicornThread(app) as server:
        yield server.url


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
                             "(KHTML, like Gecko) Chrome/124.0 Safari/537.36"}
    with httpx.Client(headers=headers, follow_redirects=False, timeout=10) as http:
        yield http
