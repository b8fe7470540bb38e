"""A local fake of the Segment Profile API, built from its documented shapes.

Routes, Basic auth (token as username, empty password), ``limit``/``next``
paging with ``cursor.has_more``, the ``start`` filter on events, 429 above
a request budget and 404 ``not_found`` follow Segment's "Profile API" page.
The Profile API is a hosted service that cannot run here, hence the fake.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

SPACE = "spc_Demo123"
TOKEN = "segment-test-token"


@dataclass
class Profile:
    traits: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)


class SegmentServer:
    """State and routes; ``app`` is the Starlette app."""

    def __init__(self) -> None:
        self.profiles: dict[str, Profile] = {}
        self.throttle_first = 0  # answer 429 to this many requests first
        self.raw_paths: list[str] = []
        self.queries: list[dict[str, str]] = []
        self.statuses: list[int] = []
        # {rest} is "<id_type>:<id>/<traits|events>"; an id may contain an
        # encoded slash, which arrives decoded.
        path = "/v1/spaces/{space}/collections/users/profiles/{rest:path}"
        self.app = Starlette(routes=[Route(path, self.read)])

    def respond(self, body: dict[str, Any], status: int = 200) -> JSONResponse:
        self.statuses.append(status)
        return JSONResponse(body, status_code=status, headers={"Request-Id": "req-1"})

    async def read(self, request: Request) -> JSONResponse:
        self.raw_paths.append(request.scope["raw_path"].decode())
        self.queries.append(dict(request.query_params))
        expected = "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()
        if request.headers.get("authorization") != expected:
            return self.respond({"error": {"code": "authentication_error",
                                           "message": "Unauthorized"}}, 401)
        if self.throttle_first > 0:
            self.throttle_first -= 1
            return self.respond({"error": {"code": "rate_limit_error",
                                           "message": "Too many requests"}}, 429)
        space = request.path_params["space"]
        external, _, what = request.path_params["rest"].rpartition("/")
        id_type, _, value = external.partition(":")
        profile = self.profiles.get(unquote(value)) if id_type == "user_id" else None
        if space != SPACE or profile is None:
            return self.respond({"error": {"code": "not_found",
                                           "message": "Profile was not found."}}, 404)
        limit = int(request.query_params.get("limit", "10"))
        offset = int(request.query_params.get("next") or 0)
        if what == "traits":
            items = sorted(profile.traits.items())
            page = dict(items[offset:offset + limit])
            return self.respond({"traits": page, **self.cursor(request, offset, limit, len(items))})
        start = request.query_params.get("start", "")
        events = sorted((e for e in profile.events if e["timestamp"] >= start),
                        key=lambda e: e["timestamp"])
        return self.respond({"data": events[offset:offset + limit],
                             **self.cursor(request, offset, limit, len(events))})

    @staticmethod
    def cursor(request: Request, offset: int, limit: int, total: int) -> dict[str, Any]:
        more = offset + limit < total
        return {"cursor": {"url": request.url.path, "has_more": more,
                           "next": str(offset + limit) if more else ""}}


def track(message_id: str, event: str, timestamp: str, **properties: Any) -> dict[str, Any]:
    return {"external_ids": [{"collection": "users", "type": "user_id", "id": "x",
                              "encoding": "none"}],
            "type": "track", "event": event, "message_id": message_id,
            "source_id": "src_EhrFeed", "timestamp": timestamp, "properties": properties,
            "context": {"library": {"name": "http"}}, "related": {"users": "use_1"}}
