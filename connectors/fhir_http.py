"""HTTP side of the FHIR source: retries, Bulk Data ``$export`` and search paging.

Bulk Data (HL7 FHIR Bulk Data Access IG 2.0.0): a kick-off ``GET`` with
``Prefer: respond-async`` returns 202 and a ``Content-Location`` status
URL. Polling it returns 202 (with ``Retry-After`` and optionally
``X-Progress``) until the export is done, then 200 and the manifest. Each
output file is NDJSON, fetched with the bearer token when the manifest
sets ``requiresAccessToken``.

Search (FHIR R4 http.html#search): each Bundle's ``link`` with relation
``next`` is followed verbatim until there is none. A server that has
dropped its paging context returns 404 or 410 to its own ``next`` link;
the search then restarts from the first page.

Every request is retried on 429, 500, 502, 503, 504 and on a timeout or
connection error, waiting for ``Retry-After`` when the server sends it
and an exponential backoff otherwise. A 401 renews the access token once.
Requests go only to https URLs, or http on loopback.

Errors:

    CarepostError
    └── FhirError   the server rejected a request, an export failed, or a
                    wait or retry limit ran out; the message names the
                    status code and OperationOutcome issue codes only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from carepost.connectors.fhir_auth import SmartTokenProvider
from carepost.core.errors import CarepostError
from carepost.core.sources import FhirSource, require_tls_url

log = logging.getLogger("carepost.connectors.fhir")

__all__ = ["FhirClient", "FhirError"]

FHIR_JSON = "application/fhir+json"
FHIR_NDJSON = "application/fhir+ndjson"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_MAX_SECONDS = 30.0
# Poll interval when a 202 status response has no Retry-After.
DEFAULT_POLL_SECONDS = 2.0
EXPIRED_PAGING_STATUSES = frozenset({404, 410})
MAX_SEARCH_RESTARTS = 2


class FhirError(CarepostError):
    """A FHIR request or export failed; the message carries codes, never data.

    ``status`` is the HTTP status of the failed response, when there was one.
    """

    def __init__(self, message: str, *, hint: str | None = None,
                 status: int | None = None) -> None:
        self.status = status
        super().__init__(message, hint=hint)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Return the wait in seconds that a ``Retry-After`` header requests (seconds or HTTP date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def issue_codes(response: httpx.Response) -> str:
    """Return the issue codes of an OperationOutcome body, or its absence."""
    try:
        body = response.json()
    except ValueError:
        return "no OperationOutcome"
    issues = body.get("issue", []) if isinstance(body, dict) else []
    codes = sorted({str(issue.get("code", "unknown")) for issue in issues})
    return "issues: " + ", ".join(codes) if codes else "no OperationOutcome"


class FhirClient:
    """An async FHIR client for one source; use it as an async context manager."""

    def __init__(self, spec: FhirSource, root: Path) -> None:
        self._spec = spec
        self._base = httpx.URL(spec.base_url.rstrip("/") + "/")
        self._tokens = SmartTokenProvider(spec.auth, root) if spec.auth else None
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> FhirClient:
        self._http = httpx.AsyncClient(
            timeout=self._spec.timeout_seconds, follow_redirects=False
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._http is not None
        await self._http.aclose()

    def resolve(self, url: str) -> httpx.URL:
        """Resolve a link against the base URL and check that it uses TLS."""
        resolved = self._base.join(url)
        try:
            require_tls_url(str(resolved))
        except ValueError:
            raise FhirError(
                f"the server sent a link that is not https: {resolved.scheme}://{resolved.host}",
                hint="carepost fetches FHIR data only over TLS",
            ) from None
        return resolved

    # --- one request, with retries --------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        *,
        accept: str = FHIR_JSON,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        with_token: bool = True,
        ok: frozenset[int] = frozenset({200}),
    ) -> httpx.Response:
        """Send one request, retrying transient failures; return the response."""
        assert self._http is not None
        target = self.resolve(url)
        renewed = False
        for attempt in range(1, self._spec.max_attempts + 1):
            sent = {"Accept": accept, **(headers or {})}
            if with_token and self._tokens:
                token = await self._tokens.token(self._http)
                sent["Authorization"] = f"Bearer {token.get_secret_value()}"
            try:
                response = await self._http.request(method, target, headers=sent, params=params)
            except (httpx.TimeoutException, httpx.NetworkError) as error:
                await self._back_off(attempt, None, type(error).__name__, target)
                continue
            if response.status_code in ok:
                return response
            if response.status_code == 401 and self._tokens and not renewed:
                self._tokens.invalidate()
                renewed = True
                continue
            if response.status_code not in RETRY_STATUSES:
                raise FhirError(
                    f"{method} {target.path} returned {response.status_code} "
                    f"({issue_codes(response)})",
                    hint="check the FHIR base URL, the resource types and the client's scopes",
                    status=response.status_code,
                )
            await self._back_off(attempt, response, str(response.status_code), target)
        raise FhirError(
            f"{method} {target.path} failed {self._spec.max_attempts} times",
            hint="the server is unavailable or rate-limiting; run the sync again later",
        )

    async def _back_off(
        self, attempt: int, response: httpx.Response | None, why: str, target: httpx.URL
    ) -> None:
        if attempt == self._spec.max_attempts:
            return
        wait = retry_after_seconds(response) if response is not None else None
        if wait is None:
            wait = min(self._spec.backoff_seconds * 2 ** (attempt - 1), BACKOFF_MAX_SECONDS)
        log.warning("FHIR %s on %s; retry %d in %.1f s", why, target.path, attempt, wait)
        await asyncio.sleep(wait)

    # --- Bulk Data $export -----------------------------------------------------

    async def kick_off(self, since: str | None) -> str:
        """Start an export and return its status URL."""
        path = f"Group/{self._spec.group}/$export" if self._spec.group else "Patient/$export"
        params = {"_type": ",".join(self._spec.types), "_outputFormat": FHIR_NDJSON}
        if since:
            params["_since"] = since
        response = await self.request(
            "GET", path, params=params, headers={"Prefer": "respond-async"},
            ok=frozenset({202}),
        )
        location = response.headers.get("Content-Location")
        if not location:
            raise FhirError("export kick-off returned 202 without Content-Location",
                            hint="the server does not follow the Bulk Data specification")
        return location

    async def wait_for_manifest(self, status_url: str) -> dict[str, Any]:
        """Poll the status URL until the manifest is ready and return it."""
        deadline = time.monotonic() + self._spec.max_wait_seconds
        polls = 0
        while True:
            response = await self.request("GET", status_url, ok=frozenset({200, 202}))
            polls += 1
            if response.status_code == 200:
                log.info("FHIR export ready after %d polls", polls)
                return response.json()
            progress = response.headers.get("X-Progress", "in progress")
            wait = retry_after_seconds(response)
            wait = DEFAULT_POLL_SECONDS if wait is None else wait
            if time.monotonic() + wait > deadline:
                await self.cancel(status_url)
                raise FhirError(
                    f"FHIR export not ready after {self._spec.max_wait_seconds:.0f} s",
                    hint="raise max_wait_seconds or narrow types",
                )
            log.info("FHIR export %s; polling again in %.1f s", progress[:40], wait)
            await asyncio.sleep(wait)

    async def cancel(self, status_url: str) -> None:
        """Ask the server to drop an export (DELETE on the status URL)."""
        try:
            await self.request("DELETE", status_url, ok=frozenset({200, 202, 204, 404}))
        except FhirError as error:
            log.warning("cancelling the FHIR export failed: %s", error)

    async def ndjson_lines(self, url: str, with_token: bool) -> list[tuple[int, str]]:
        """Download one NDJSON file; return its non-blank lines with line numbers."""
        response = await self.request("GET", url, accept=FHIR_NDJSON, with_token=with_token)
        # NOTE: a file is held in memory while it loads; servers split large
        # exports into several files, which keeps each one bounded.
        lines = response.text.split("\n")
        return [(number, line) for number, line in enumerate(lines, 1) if line.strip()]

    # --- search with paging ------------------------------------------------------

    async def search(
        self, resource_type: str, since: str | None
    ) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """Yield (page number, Bundle) for every page of one search."""
        params = {"_count": str(self._spec.page_size)}
        if since:
            params["_lastUpdated"] = f"gt{since}"
        for restart in range(MAX_SEARCH_RESTARTS + 1):
            url, query, page = resource_type, params, 0
            while url:
                try:
                    response = await self.request("GET", url, params=query)
                except FhirError as error:
                    if page == 0 or not _expired_paging(error):
                        raise
                    log.warning("FHIR %s paging context expired at page %d; restarting",
                                resource_type, page + 1)
                    break
                page += 1
                bundle = response.json()
                yield page, bundle
                url, query = _next_link(bundle), None
            else:
                return
        raise FhirError(
            f"{resource_type} search lost its paging context {MAX_SEARCH_RESTARTS + 1} times",
            hint="lower page_size or sync when the server is less busy",
        )


def _expired_paging(error: FhirError) -> bool:
    return error.status in EXPIRED_PAGING_STATUSES


def _next_link(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link", []) or []:
        if link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def parse_json_line(line: str) -> dict[str, Any] | None:
    """Parse one NDJSON line into an object, or None when it is not one."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
