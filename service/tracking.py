"""Tracking routes: the open pixel, click redirects and unsubscribes.

``tracking_routes`` is a route factory for ``create_app``:

- ``GET|HEAD /o/{token}``: a 1x1 GIF with no-cache headers; records an open.
- ``GET|HEAD /c/{token}``: 302 to the URL signed into the token; records a
  click. A token that does not verify, or carries no http(s) URL, gets
  404, so the service never redirects to a URL carepost did not write.
- ``GET /u/{token}``: a confirmation page; it changes nothing, so a link
  scanner that follows it cannot unsubscribe anybody.
- ``POST /u/{token}`` with ``List-Unsubscribe=One-Click`` (RFC 8058, sent
  by mail clients and by the page's button) suppresses the address at
  once for the purpose of the message it came in: an unsubscribe from a
  marketing message stops marketing, one from a care reminder stops care
  reminders. The other category is not affected.

Opens and clicks are classified by ``service.tracking_rules``; only the
verdict is stored. Responses never echo a value from the ledger except
the practice's name.
"""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from carepost.core.campaign import load_campaigns
from carepost.core.errors import CarepostError
from carepost.core.states import DeliveryState
from carepost.core.tokens import TokenClaims, TokenError, verify_token
from carepost.ledger import Delivery
from carepost.ledger.engagement import Engagement, Hit, Verdict, as_utc, sync_goals
from carepost.service.app import ServiceState
from carepost.service.tracking_rules import BURST_SECONDS, RequestFacts, classify

log = logging.getLogger(__name__)

# The smallest transparent 1x1 GIF89a.
PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c000000"
    "00010001000002024401003b")
NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
            "Pragma": "no-cache", "Expires": "0"}
PAGE_HEADERS = {**NO_CACHE, "X-Robots-Tag": "noindex",
                "Content-Security-Policy":
                    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
                "Referrer-Policy": "no-referrer"}
ONE_CLICK = ("List-Unsubscribe", "One-Click")
SCOPE_WORDS = {"marketing": "news and offers", "care": "care reminders"}

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _delivered_at(delivery: Delivery) -> datetime | None:
    if delivery.state == DeliveryState.SENT.value:
        return as_utc(delivery.updated_at)
    return None


class Tracker:
    """The route handlers, bound to one ledger and one set of token keys."""

    def __init__(self, state: ServiceState, clock: Clock = _utc_now) -> None:
        self.keys = state.settings.tracking_keys
        self.practice = state.settings.practice.name
        self.engagement = Engagement(state.ledger)
        self.clock = clock
        self._click_lock = threading.Lock()

    # -- token and delivery lookup -------------------------------------------

    def _claims(self, request: Request, expected: str) -> TokenClaims | None:
        try:
            claims = verify_token(self.keys, request.path_params["token"])
        except TokenError:
            return None
        tag_ok = claims.tag == expected or (
            expected == "c" and claims.tag[:1] == "c" and claims.tag[1:].isdigit())
        return claims if tag_ok else None

    def _facts(self, request: Request) -> RequestFacts:
        client = request.client.host if request.client else None
        return RequestFacts(method=request.method,
                            user_agent=request.headers.get("user-agent"),
                            client_host=client)

    # -- opens and clicks ------------------------------------------------------

    def _record(self, delivery_id: int, kind: str, facts: RequestFacts,
                link_index: int | None = None) -> None:
        delivery = self.engagement.delivery(delivery_id)
        if delivery is None:
            log.info("tracking hit for unknown delivery %s ignored", delivery_id)
            return
        now = self.clock()
        verdict, rule = classify(kind, facts, _delivered_at(delivery), now)
        hit = Hit(kind=kind, verdict=verdict, rule=rule, occurred_at=now,
                  link_index=link_index)
        if kind != "click":
            self.engagement.record(delivery, hit)
            return
        # Record, then look for the burst, under one lock: two parallel
        # scanner requests cannot both miss each other.
        with self._click_lock:
            self.engagement.record(delivery, hit)
            if verdict is Verdict.HUMAN:
                self._mark_burst(delivery, hit)

    def _mark_burst(self, delivery: Delivery, hit: Hit) -> None:
        """Make a burst of clicks on different links of one message machine."""
        since = hit.occurred_at - timedelta(seconds=BURST_SECONDS)
        recent = self.engagement.clicks_since(delivery.id, since)
        if len({row.link_index for row in recent}) > 1:
            changed = self.engagement.mark_machine(recent, "link_burst")
            log.info("delivery %s: %d clicks of a link burst marked machine",
                     delivery.id, changed)

    async def open_pixel(self, request: Request) -> Response:
        claims = self._claims(request, "o")
        if claims is None:
            return Response(status_code=404, headers=NO_CACHE)
        await run_in_threadpool(self._record, claims.delivery_id, "open",
                                self._facts(request))
        return Response(PIXEL, media_type="image/gif", headers=NO_CACHE)

    async def click(self, request: Request) -> Response:
        claims = self._claims(request, "c")
        if claims is None or not _redirectable(claims.url):
            return Response("Not Found", status_code=404, headers=NO_CACHE)
        await run_in_threadpool(self._record, claims.delivery_id, "click",
                                self._facts(request), int(claims.tag[1:]))
        headers = {**NO_CACHE, "Referrer-Policy": "no-referrer"}
        return RedirectResponse(claims.url, status_code=302, headers=headers)

    # -- unsubscribe -------------------------------------------------------------

    async def unsubscribe_page(self, request: Request) -> Response:
        claims = self._claims(request, "u")
        delivery = claims and await run_in_threadpool(self.engagement.delivery,
                                                      claims.delivery_id)
        if not delivery:
            return _page("Link not valid", "This unsubscribe link is not valid.", 404)
        scope = SCOPE_WORDS.get(delivery.purpose, "email")
        body = (f"<p>Stop {scope} email from {html.escape(self.practice)}?</p>"
                '<form method="post"><input type="hidden" name="List-Unsubscribe" '
                'value="One-Click"><button type="submit">Unsubscribe</button></form>')
        return _page("Unsubscribe", body, 200)

    async def unsubscribe(self, request: Request) -> Response:
        claims = self._claims(request, "u")
        if claims is None:
            return _page("Link not valid", "This unsubscribe link is not valid.", 404)
        async with request.form() as form:
            one_click = form.get(ONE_CLICK[0]) == ONE_CLICK[1]
        if not one_click:
            return _page("Not unsubscribed",
                         "The request did not contain List-Unsubscribe=One-Click.",
                         400)
        done = await run_in_threadpool(self._unsubscribe, claims.delivery_id)
        if done is None:
            return _page("Link not valid", "This unsubscribe link is not valid.", 404)
        scope = SCOPE_WORDS.get(done, "email")
        return _page("Unsubscribed", f"You will receive no more {scope} email "
                     f"from {html.escape(self.practice)}.", 200)

    def _unsubscribe(self, delivery_id: int) -> str | None:
        delivery = self.engagement.delivery(delivery_id)
        if delivery is None:
            return None
        hit = Hit(kind="unsubscribe", verdict=Verdict.HUMAN, rule=None,
                  occurred_at=self.clock())
        if not self.engagement.unsubscribe(delivery, hit):
            log.warning("delivery %s has no address hash; unsubscribe not stored",
                        delivery_id)
            return None
        log.info("profile %s unsubscribed from %s messages (delivery %s)",
                 delivery.profile_id, delivery.purpose, delivery_id)
        return delivery.purpose


def _redirectable(url: str | None) -> bool:
    if not url:
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _page(title: str, body: str, status: int) -> HTMLResponse:
    text = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width\">"
            f"<title>{html.escape(title)}</title></head>"
            "<body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\">"
            f"<h1>{html.escape(title)}</h1>{body}</body></html>")
    return HTMLResponse(text, status_code=status, headers=PAGE_HEADERS)


def _store_goals(state: ServiceState) -> None:
    """Copy the campaigns' goals to the ledger for conversion attribution."""
    settings = state.settings
    try:
        campaigns = load_campaigns(settings.path(settings.campaigns_dir))
    except CarepostError as exc:
        log.warning("campaign goals not stored: %s", exc)
        return
    sync_goals(state.ledger, {c.name: c.goal for c in campaigns.values()})


def tracking_routes(state: ServiceState, *, clock: Clock = _utc_now) -> list[BaseRoute]:
    """Route factory for ``create_app``: the tracking endpoints."""
    _store_goals(state)
    tracker = Tracker(state, clock)
    return [
        Route("/o/{token}", tracker.open_pixel, methods=["GET", "HEAD"]),
        Route("/c/{token}", tracker.click, methods=["GET", "HEAD"]),
        Route("/u/{token}", tracker.unsubscribe_page, methods=["GET", "HEAD"]),
        Route("/u/{token}", tracker.unsubscribe, methods=["POST"]),
    ]


__all__ = ["PIXEL", "Tracker", "tracking_routes"]
