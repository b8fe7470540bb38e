"""A local FHIR R4 server with Bulk Data export, search paging and SMART auth.

It follows the request and response shapes of the HL7 Bulk Data Access IG
2.0.0 and FHIR R4 search, and misbehaves on request the way real servers
do: an export that takes several polls, 429 with Retry-After, a 503, slow
downloads and a paging context that expires. Every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

FHIR_JSON = "application/fhir+json"


@dataclass
class Resource:
    body: dict[str, Any]
    updated: str = "2024-01-01T00:00:00Z"


@dataclass
class Behaviour:
    """What the server does besides answering correctly."""

    polls_before_ready: int = 3
    throttle_first_poll_seconds: int | None = None  # 429 + Retry-After on poll 1
    unavailable_on_poll: int | None = None  # 503 on this poll number
    retry_after_seconds: int = 0
    slow_first_download: dict[str, float] = field(default_factory=dict)  # name -> seconds
    failing_files: set[str] = field(default_factory=set)  # always 500
    files_per_type: dict[str, int] = field(default_factory=dict)
    requires_token: bool = True
    error_lines: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # "Type/id"
    expire_first_paging_context: bool = False
    include_patients_in_search: bool = False


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float
    status: int = 0


class FhirServer:
    """State and routes of the fake server; ``app`` is the Starlette app."""

    def __init__(self, public_key: str, client_id: str, key_id: str) -> None:
        self.public_key, self.client_id, self.key_id = public_key, client_id, key_id
        self.resources: dict[str, dict[str, Resource]] = {}
        self.behaviour = Behaviour()
        self.transaction_time = "2024-03-06T02:00:00Z"
        self.base = ""  # set once the port is known
        self.calls: list[Call] = []
        self.tokens: set[str] = set()
        self.jtis: set[str] = set()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.contexts: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self.expired_once = False
        self.downloads: dict[str, int] = {}
        self.app = Starlette(routes=[
            Route("/auth/token", self.token, methods=["POST"]),
            Route("/fhir/Group/{group}/$export", self.kick_off),
            Route("/fhir/status/{job}", self.status, methods=["GET", "DELETE"]),
            Route("/fhir/files/{job}/{name}", self.download),
            Route("/fhir/{kind}", self.search),
            Route("/fhir/", self.page),
        ])

    # --- data ------------------------------------------------------------------

    def add(self, body: dict[str, Any], updated: str = "2024-01-01T00:00:00Z") -> None:
        kind = self.resources.setdefault(body["resourceType"], {})
        kind[body["id"]] = Resource(body, updated)

    def changed_since(self, kind: str, since: str | None) -> list[dict[str, Any]]:
        items = self.resources.get(kind, {}).values()
        return [item.body for item in items if since is None or item.updated > since]

    def record(self, request: Request) -> Call:
        call = Call(request.method, request.url.path, dict(request.query_params),
                    {key.lower(): value for key, value in request.headers.items()},
                    time.monotonic())
        self.calls.append(call)
        return call

    def calls_to(self, prefix: str) -> list[Call]:
        return [call for call in self.calls if call.path.startswith(prefix)]

    # --- SMART backend services ---------------------------------------------------

    async def token(self, request: Request) -> Response:
        self.record(request)
        form = await request.form()
        assertion = str(form.get("client_assertion", ""))
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, self.public_key, algorithms=["RS384"],
                                audience=f"{self.base}/auth/token", issuer=self.client_id)
        except jwt.PyJWTError:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        valid = (
            form.get("grant_type") == "client_credentials"
            and form.get("client_assertion_type")
            == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            and header.get("kid") == self.key_id
            and claims["sub"] == self.client_id
            and claims["exp"] - time.time() <= 300
            and claims["jti"] not in self.jtis
        )
        if not valid:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        self.jtis.add(claims["jti"])
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return JSONResponse({"access_token": token, "token_type": "bearer",
                             "expires_in": 300, "scope": form.get("scope")})

    def authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and header[7:] in self.tokens

    # --- Bulk Data export -----------------------------------------------------------

    async def kick_off(self, request: Request) -> Response:
        self.record(request)
        if not self.authorised(request):
            return outcome("login", 401)
        if request.headers.get("prefer") != "respond-async":
            return outcome("invalid", 400)
        job = secrets.token_hex(4)
        types = request.query_params.get("_type", "").split(",")
        self.jobs[job] = {"types": types, "since": request.query_params.get("_since"),
                          "polls": 0, "transaction_time": self.transaction_time}
        return Response(status_code=202,
                        headers={"Content-Location": f"{self.base}/fhir/status/{job}"})

    async def status(self, request: Request) -> Response:
        call = self.record(request)
        job = self.jobs.get(request.path_params["job"])
        if job is None or not self.authorised(request):
            return outcome("not-found", 404)
        if request.method == "DELETE":
            self.jobs.pop(request.path_params["job"])
            return Response(status_code=202)
        job["polls"] += 1
        behaviour = self.behaviour
        if job["polls"] == 1 and behaviour.throttle_first_poll_seconds is not None:
            call.status = 429
            return outcome("throttled", 429, {
                "Retry-After": str(behaviour.throttle_first_poll_seconds)})
        if job["polls"] == behaviour.unavailable_on_poll:
            call.status = 503
            return outcome("transient", 503)
        if job["polls"] <= behaviour.polls_before_ready:
            done = 100 * job["polls"] // (behaviour.polls_before_ready + 1)
            return Response(status_code=202, headers={
                "X-Progress": f"{done}% complete",
                "Retry-After": str(behaviour.retry_after_seconds)})
        return JSONResponse(self.manifest(request.path_params["job"], job))

    def manifest(self, job_id: str, job: dict[str, Any]) -> dict[str, Any]:
        job["files"] = {}
        output = []
        for kind in job["types"]:
            items = self.changed_since(kind, job["since"])
            if not items:
                continue
            parts = max(1, self.behaviour.files_per_type.get(kind, 1))
            size = -(-len(items) // parts)
            for number in range(parts):
                chunk = items[number * size:(number + 1) * size]
                name = f"{kind}_{number + 1}.ndjson"
                job["files"][name] = "".join(json.dumps(item) + "\n" for item in chunk)
                output.append({"type": kind, "url": f"{self.base}/fhir/files/{job_id}/{name}",
                               "count": len(chunk)})
        errors, deleted = [], []
        if self.behaviour.error_lines:
            job["files"]["errors_1.ndjson"] = "".join(
                line + "\n" for line in self.behaviour.error_lines)
            errors.append({"type": "OperationOutcome",
                           "url": f"{self.base}/fhir/files/{job_id}/errors_1.ndjson"})
        if self.behaviour.deleted:
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"request": {"method": "DELETE", "url": ref}} for ref in self.behaviour.deleted]}
            job["files"]["deleted_1.ndjson"] = json.dumps(bundle) + "\n"
            deleted.append({"type": "Bundle",
                            "url": f"{self.base}/fhir/files/{job_id}/deleted_1.ndjson"})
        return {"transactionTime": job["transaction_time"],
                "request": f"{self.base}/fhir/Group/all/$export",
                "requiresAccessToken": self.behaviour.requires_token,
                "output": output, "error": errors, "deleted": deleted}

    async def download(self, request: Request) -> Response:
        call = self.record(request)
        job = self.jobs.get(request.path_params["job"], {})
        name = request.path_params["name"]
        if self.behaviour.requires_token and not self.authorised(request):
            return outcome("login", 401)
        if name in self.behaviour.failing_files:
            call.status = 500
            return outcome("exception", 500)
        self.downloads[name] = self.downloads.get(name, 0) + 1
        if self.downloads[name] == 1 and name in self.behaviour.slow_first_download:
            await asyncio.sleep(self.behaviour.slow_first_download[name])
        body = job.get("files", {}).get(name)
        if body is None:
            return outcome("not-found", 404)
        return PlainTextResponse(body, media_type="application/fhir+ndjson")

    # --- search -------------------------------------------------------------------------

    async def search(self, request: Request) -> Response:
        self.record(request)
        if not self.authorised(request):
            return outcome("login", 401)
        kind = request.path_params["kind"]
        since = request.query_params.get("_lastUpdated", "").removeprefix("gt") or None
        count = min(int(request.query_params.get("_count", "50")), 50)
        entries = [{"fullUrl": f"{self.base}/fhir/{kind}/{body['id']}", "resource": body,
                    "search": {"mode": "match"}} for body in self.changed_since(kind, since)]
        context = secrets.token_hex(4)
        self.contexts[context] = (kind, entries)
        return JSONResponse(self.bundle(context, 0, count))

    async def page(self, request: Request) -> Response:
        self.record(request)
        if not self.authorised(request):
            return outcome("login", 401)
        context = request.query_params.get("_getpages", "")
        if context not in self.contexts:
            return outcome("not-found", 410)
        if self.behaviour.expire_first_paging_context and not self.expired_once:
            self.expired_once = True
            del self.contexts[context]
            return outcome("not-found", 410)
        offset = int(request.query_params["_getpagesoffset"])
        return JSONResponse(self.bundle(context, offset, int(request.query_params["_count"])))

    def bundle(self, context: str, offset: int, count: int) -> dict[str, Any]:
        kind, entries = self.contexts[context]
        page = entries[offset:offset + count]
        if self.behaviour.include_patients_in_search:
            page = page + [{"resource": {"resourceType": "Patient", "id": "included-only"},
                            "search": {"mode": "include"}}]
        links = [{"relation": "self", "url": f"{self.base}/fhir/{kind}"}]
        if offset + count < len(entries):
            # A relative next link, as HAPI-style servers send, with an
            # opaque paging context id.
            links.append({"relation": "next", "url": (
                f"?_getpages={context}&_getpagesoffset={offset + count}"
                f"&_count={count}&_bundletype=searchset")})
        return {"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                "link": links, "entry": page}


def outcome(code: str, status: int, headers: dict[str, str] | None = None) -> Response:
    body = {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code}]}
    return Response(json.dumps(body), status_code=status, headers=headers,
                    media_type=FHIR_JSON)
