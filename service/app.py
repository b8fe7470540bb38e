"""The HTTP service: tracking hits and webhooks in one Starlette app.

``create_app(settings)`` builds the app; ``carepost serve`` runs it with
uvicorn. Each concern adds its routes from its own module:
``service/tracking.py`` (opens, clicks, unsubscribes) and
``service/webhooks.py`` (CDP events that trigger behaviour emails). Both
read and write the delivery ledger; neither imports ``carepost.flows``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from carepost.core.settings import Settings
from carepost.ledger import Ledger

log = logging.getLogger(__name__)


@dataclass
class ServiceState:
    """What every route module needs; built once per app."""

    settings: Settings
    ledger: Ledger


RouteFactory = Callable[[ServiceState], list[BaseRoute]]


async def _health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app(settings: Settings, *, route_factories: tuple[RouteFactory, ...] = (),
               ledger: Ledger | None = None) -> Starlette:
    """Build the service app with the health route plus each factory's routes."""
    state = ServiceState(settings=settings,
                         ledger=ledger or Ledger(settings.ledger_url))
    routes: list[BaseRoute] = [Route("/health", _health)]
    for factory in route_factories:
        routes.extend(factory(state))
    app = Starlette(routes=routes)
    app.state.carepost = state
    log.info("service app built with %d routes", len(routes))
    return app
