"""Tracking routes on a real uvicorn server and a real SQLite ledger."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from carepost.core.settings import Settings
from carepost.core.states import Purpose
from carepost.core.tokens import issue_token
from carepost.ledger import Ledger, OutboxEvent, Suppression, hash_address
from carepost.ledger.engagement import EngagementEvent
from carepost.service.tracking import PIXEL
from carepost.service.tracking_links import click_url, open_pixel_url, unsubscribe_url

from .conftest import ADDRESS_KEY, add_sent_delivery

SCANNER = {"User-Agent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
                         "(via ggpht.com GoogleImageProxy)"}


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def _events(ledger: Ledger) -> list[EngagementEvent]:
    with Session(ledger.engine) as session:
        return list(session.exec(select(EngagementEvent).order_by(EngagementEvent.id)))


def _outbox(ledger: Ledger, event_type: str) -> list[dict]:
    with Session(ledger.engine) as session:
        rows = session.exec(select(OutboxEvent).where(OutboxEvent.type == event_type))
        return [json.loads(row.payload) for row in rows]


def test_open_pixel_returns_gif_and_records_human(
        settings: Settings, ledger: Ledger, service: str, client: httpx.Client) -> None:
    delivery = add_sent_delivery(ledger, "p-1", campaign="diabetes_education",
                                 purpose=Purpose.MARKETING)
    url = open_pixel_url(service, settings.tracking_keys, delivery)

    first = client.get(url)
    second = client.get(url)

    assert first.status_code == 200
    assert first.headers["content-type"] == "image/gif"
    assert first.content == PIXEL
    assert "no-store" in first.headers["cache-control"]
    assert second.status_code == 200
    events = _events(ledger)
    assert [(e.kind, e.verdict) for e in events] == [("open", "human")]
    pushed = _outbox(ledger, "email_opened")
    assert len(pushed) == 1
    assert pushed[0]["properties"]["machine"] is False
    assert pushed[0]["properties"]["template_version"] == "v1"


@pytest.mark.parametrize("headers, method, rule", [
    (SCANNER, "GET", "user_agent"),
    ({"User-Agent": "Mozilla/5.0"}, "GET", "user_agent"),
    ({"User-Agent": ""}, "GET", "user_agent"),
    ({}, "HEAD", "head_request"),
])
def test_open_from_proxy_is_machine(
        settings: Settings, ledger: Ledger, service: str, client: httpx.Client,
        headers: dict, method: str, rule: str) -> None:
    delivery = add_sent_delivery(ledger, "p-2", campaign="diabetes_education",
                                 purpose=Purpose.MARKETING)
    url = open_pixel_url(service, settings.tracking_keys, delivery)

    response = client.request(method, url, headers=headers)

    assert response.status_code == 200
    events = _events(ledger)
    assert [(e.kind, e.verdict, e.rule) for e in events] == [("open", "machine", rule)]
    assert _outbox(ledger, "email_opened")[0]["properties"]["machine"] is True


def test_open_right_after_delivery_is_machine(
        settings: Settings, ledger: Ledger, service: str, client: httpx.Client) -> None:
    delivery = add_sent_delivery(ledger, "p-3", campaign="diabetes_education",
                                 purpose=Purpose.MARKETING, sent_seconds_ago=0.2)

    client.get(open_pixel_url(service, settings.tracking_keys, delivery))

    assert [(e.verdict, e.rule) for e in _events(ledger)] == [
        ("machine", "open_before_delivery_window")]


@pytest.mark.parametrize("token", ["not-a-token", "AAAA", ""])
def test_open_with_bad_token_is_404(service: str, client: httpx.Client,
                                    ledger: Ledger, token: str) -> None:
    response = client.get(f"{service}/o/{token}x")

    assert response.status_code == 404
    assert _events(ledger) == []


def test_click_redirects_to_signed_url(
        settings: Settings, ledger: Ledger, service: str, client: httpx.Client) -> None:
    delivery = add_sent_delivery(ledger, "p-4", campaign="diabetes_education",
                                 purpose=Purpose.MARKETING)
    destination = "https://www.prairie-health.example.test/book?class=diabetes"
    url = click_url(service, settings.tracking_keys, delivery, 2, destination)

    response = client.get(url)

    assert response.status_code == 302
    assert response.headers["location"] == destination
    assert response.headers["referrer-policy"] == "no-referrer"
    events = _events(ledger)
    assert [(e.kind, e.verdict, e.link_index) for e in events] == [("click", "human", 2)]
    assert _outbox(ledger, "email_clicked")[0]["properties"]["link_index"] == 2


def test_click_rejects_other_urls(
        settings: Settings, ledger: Ledger, service: str, client: httpx.Client) -> None:
    delivery = add_sent_delivery(ledger, "p-5", campaign="diabetes_education",
                                 purpose=Purpose.MARKETING)
    keys = settings.tracking_keys
    good = click_url(service, keys, delivery, 0, "https://www.example.test/a")
    token = _path(good).split("/")[2]
    tampered = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    unsigned = issue_token({"kother": b"someone-else"}, delivery, "c0",
                           "https://evil.example.org/")
    script = issue_token(keys, delivery, "c0", "javascript:alert(1)")
    open_token = issue_token(keys, delivery, "o")

    for bad in (tampered, unsigned, script, open_token):
        response = client.get(f"{service}/c/{bad}")
        assert response.status_code == 404, bad
        assert "location" not in response.headers
    assert _events(ledger) == []


def test_click_soon_after_delivery_is_machine(
        settings: Settings, ledger: Ledger, service: str, client: httpx.Client) -> None:
    delivery = add_sent_delivery(ledger, "p-6", campaign="diabetes_education",
                                 purpose=Purpose.MARKETING, sent_seconds_ago=3)

    response = client.get(click_url(service, settings.tracking_keys, delivery, 0,
                                    "https://www.example.test/a"))

    assert response.status_code == 302
    assert [(e.verdict, e.rule) for e in _events(ledger)] == [
        ("machine", "click_after_delivery")]


def test_link_burst_marks_every_click_machine(
        settings: Settings, ledger: Ledger, service: str, client: httpx.Client) -> None:
    delivery = add_sent_delivery(ledger, "p-7", campaign="diabetes_education",
                                 purpose=Purpose.MARKETING)
    keys = settings.tracking_keys
    links = [click_url(service, keys, delivery, index, f"https://www.example.test/{index}")
             for index in range(4)]

    for link in links:
        assert client.get(link).status_code == 302

    events = _events(ledger)
    assert len(events) == 4
    assert {e.verdict for e in events} == {"machine"}
    assert {e.rule for e in events} == {"link_burst"}
    pushed = _outbox(ledger, "email_clicked")
    assert len(pushed) == 4
    assert all(event["properties"]["machine"] for event in pushed)


def test_unsubscribe_get_changes_nothing(
        settings: Settings, ledger: Ledger, service: str, client: httpx.Client) -> None:
    delivery = add_sent_delivery(ledger, "p-8", campaign="diabetes_education",
                                 purpose=Purpose.MARKETING)
    url = unsubscribe_url(service, settings.tracking_keys, delivery)

    page = client.get(url, headers=SCANNER)
    head = client.head(url, headers=SCANNER)

    assert page.status_code == 200
    assert '<form method="post">' in page.text
    assert 'name="List-Unsubscribe" value="One-Click"' in page.text
    assert head.status_code == 200
    address_hash = hash_address(ADDRESS_KEY, "p-8@example.test")
    assert not ledger.is_suppressed(address_hash, Purpose.MARKETING)
    assert _events(ledger) == []


@pytest.mark.parametrize("purpose, campaign, other", [
    (Purpose.MARKETING, "diabetes_education", Purpose.CARE),
    (Purpose.CARE, "checkup_reminder", Purpose.MARKETING),
])
def test_one_click_post_suppresses_its_category(
        settings: Settings, ledger: Ledger, service: str, client: httpx.Client,
        purpose: Purpose, campaign: str, other: Purpose) -> None:
    delivery = add_sent_delivery(ledger, "p-9", campaign=campaign, purpose=purpose)
    url = unsubscribe_url(service, settings.tracking_keys, delivery)

    first = client.post(url, data={"List-Unsubscribe": "One-Click"})
    again = client.post(url, files={"List-Unsubscribe": (None, "One-Click")})

    assert first.status_code == 200
    assert again.status_code == 200
    address_hash = hash_address(ADDRESS_KEY, "p-9@example.test")
    assert ledger.is_suppressed(address_hash, purpose)
    assert not ledger.is_suppressed(address_hash, other)
    with Session(ledger.engine) as session:
        rows = list(session.exec(select(Suppression)))
    assert [(row.scope, row.profile_id) for row in rows] == [(purpose.value, "p-9")]
    assert len(_outbox(ledger, "email_unsubscribed")) == 1


def test_unsubscribe_post_without_one_click_is_400(
        settings: Settings, ledger: Ledger, service: str, client: httpx.Client) -> None:
    delivery = add_sent_delivery(ledger, "p-10", campaign="diabetes_education",
                                 purpose=Purpose.MARKETING)
    url = unsubscribe_url(service, settings.tracking_keys, delivery)

    response = client.post(url, data={"List-Unsubscribe": "Yes"})

    assert response.status_code == 400
    address_hash = hash_address(ADDRESS_KEY, "p-10@example.test")
    assert not ledger.is_suppressed(address_hash, Purpose.MARKETING)


def test_unsubscribe_unknown_delivery_is_404(
        settings: Settings, service: str, client: httpx.Client) -> None:
    url = unsubscribe_url(service, settings.tracking_keys, 99999)

    assert client.get(url).status_code == 404
    assert client.post(url, data={"List-Unsubscribe": "One-Click"}).status_code == 404


def test_store_holds_no_ip_or_user_agent(
        settings: Settings, ledger: Ledger, service: str, client: httpx.Client) -> None:
    delivery = add_sent_delivery(ledger, "p-11", campaign="diabetes_education",
                                 purpose=Purpose.MARKETING)
    marker = "MarkerAgent/7.7 (Linux)"
    client.get(open_pixel_url(service, settings.tracking_keys, delivery),
               headers={"User-Agent": marker})
    client.get(click_url(service, settings.tracking_keys, delivery, 0,
                         "https://www.example.test/a"), headers={"User-Agent": marker})
    ledger.close()

    stored = b"".join(path.read_bytes()
                      for path in Path(settings.state_path).glob("ledger.db*"))
    assert len(_events(ledger)) == 2
    assert b"MarkerAgent" not in stored
    assert b"127.0.0.1" not in stored


def test_rotated_secret_still_verifies(
        tmp_path: Path, ledger: Ledger, settings: Settings,
        monkeypatch: pytest.MonkeyPatch, client: httpx.Client) -> None:
    from carepost.service.app import create_app
    from carepost.service.tracking import tracking_routes

    from .conftest import make_settings
    from tests.support.uvicorn_thread import UvicornThread

    delivery = add_sent_delivery(ledger, "p-12", campaign="diabetes_education",
                                 purpose=Purpose.MARKETING)
    old_url = open_pixel_url("https://x", settings.tracking_keys, delivery)
    monkeypatch.setenv("CAREPOST_TEST_TRACKING_SECRET", "new-tracking-secret")
    monkeypatch.setenv("CAREPOST_TEST_OLD_SECRET", "current-tracking-secret")
    rotated = make_settings(tmp_path, tracking={
        "base_url": "https://links.example.test",
        "secret_env": "CAREPOST_TEST_TRACKING_SECRET",
        "previous_secret_envs": ["CAREPOST_TEST_OLD_SECRET"]})
    unrotated = make_settings(tmp_path, tracking={
        "base_url": "https://links.example.test",
        "secret_env": "CAREPOST_TEST_TRACKING_SECRET"})

    assert next(iter(rotated.tracking_keys.values())) == b"new-tracking-secret"
    for config, expected in ((rotated, 200), (unrotated, 404)):
        app = create_app(config, route_factories=(tracking_routes,), ledger=ledger)
        with UvicornThread(app) as server:
            response = client.get(server.url + _path(old_url))
        assert response.status_code == expected
