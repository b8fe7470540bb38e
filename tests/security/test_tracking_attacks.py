"""Forged tokens and open-redirect attempts against the real click endpoint.

Tampered, unsigned and wrong-tag tokens are covered in
tests/service/test_tracking_routes.py and tests/core/test_tokens.py. These
tests add a forged delivery id, a token signed with a guessed key, and
destinations smuggled in beside a valid token.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from carepost.core.states import Purpose
from carepost.core.tokens import issue_token
from carepost.ledger import Ledger
from carepost.service.app import create_app
from carepost.service.tracking import tracking_routes
from carepost.service.tracking_links import click_url
from tests.service.conftest import add_sent_delivery, make_settings
from tests.support.uvicorn_thread import UvicornThread

DESTINATION = "https://www.example.test/book"
EVIL = "https://evil.example.org/login"


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[tuple[str, dict[str, bytes], int]]:
    monkeypatch.setenv("CAREPOST_TEST_TRACKING_SECRET", "tracking-secret-for-attacks")
    settings = make_settings(tmp_path)
    ledger = Ledger(settings.ledger_url)
    delivery = add_sent_delivery(ledger, "p-1", campaign="flu", purpose=Purpose.CARE)
    app = create_app(settings, route_factories=(tracking_routes,), ledger=ledger)
    with UvicornThread(app) as server:
        yield server.url, settings.tracking_keys, delivery
    ledger.close()


def _get(url: str) -> httpx.Response:
    return httpx.get(url, follow_redirects=False, timeout=10,
                     headers={"User-Agent": "Mozilla/5.0 Firefox/125.0"})


def test_forged_delivery_id_is_404(service) -> None:
    base, keys, delivery = service
    token = click_url(base, keys, delivery, 0, DESTINATION).rsplit("/", 1)[1]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    forged_raw = raw.replace(f".{delivery}.".encode(), f".{delivery + 1}.".encode(), 1)
    forged = base64.urlsafe_b64encode(forged_raw).rstrip(b"=").decode()
    response = _get(f"{base}/c/{forged}")
    assert response.status_code == 404
    assert "location" not in response.headers


def test_guessed_key_is_404(service) -> None:
    base, keys, delivery = service
    key_id = next(iter(keys))
    token = issue_token({key_id: b"guessed-secret"}, delivery, "c0", EVIL)
    response = _get(f"{base}/c/{token}")
    assert response.status_code == 404
    assert "location" not in response.headers


@pytest.mark.parametrize("suffix", [
    f"?url={EVIL}",
    f"?next={EVIL}&redirect={EVIL}",
    "/https://evil.example.org",
    "%2F%2Fevil.example.org",
])
def test_smuggled_destination_ignored(service, suffix: str) -> None:
    base, keys, delivery = service
    response = _get(click_url(base, keys, delivery, 0, DESTINATION) + suffix)
    assert response.headers.get("location") in (None, DESTINATION)
    assert "evil" not in response.headers.get("location", "")


def test_signed_url_redirects_exactly(service) -> None:
    base, keys, delivery = service
    response = _get(click_url(base, keys, delivery, 0, DESTINATION))
    assert response.status_code == 302
    assert response.headers["location"] == DESTINATION
