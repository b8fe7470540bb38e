"""Sync traits and events of known profiles from the Segment Profile API.

"Known profiles" are the profile ids already in the warehouse (loaded by
another source): the Profile API reads one profile at a time and has no
listing. For each id it reads
``/v1/spaces/<space>/collections/users/profiles/<id_type>:<id>/traits``
and ``.../events`` (Segment docs, "Profile API", 2025):

- HTTP Basic auth with the access token as username and an empty password.
- The id type is sent in lower case (other casing finds nothing), and the
  id is percent-encoded, ``+`` as ``%2B``, because unencoded
  non-alphanumerics can make the API return 500.
- List calls page with ``limit`` and ``next``; the answer's
  ``cursor.has_more`` says whether to ask again with ``cursor.next``.
- Events cover only the last 14 days, so the window starts at the later
  of the watermark and 14 days ago; older events need a warehouse export.
- 429 (above 100 requests/s per space) and 5xx are retried with an
  exponential backoff. A 404 ``not_found`` means Segment has no such
  profile: it is counted and recorded in ``segment_missing_profiles``.
- The Profile API returns no consent preferences, so consent columns are
  never set from it.

Each batch of ``BATCH_PROFILES`` profiles is one transaction, and the
watermark (the time this sync started) is stored after the last one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import httpx

from carepost.connectors.sync import (
    SyncSummary,
    apply_staged_events,
    apply_staged_profiles,
    get_watermark,
    set_watermark,
    shared_addresses,
    stage_records,
    transaction,
)
from carepost.connectors.sync_checks import clear_quarantine, quarantine_reasons
from carepost.core.errors import CarepostError
from carepost.core.schema import EVENT_COLUMNS, PROFILE_COLUMNS, create_tables
from carepost.core.sources import SegmentSource, read_secret

log = logging.getLogger("carepost.connectors.segment")

__all__ = ["SegmentError", "sync_segment"]

Progress = Callable[[str, int], None]

EVENT_WINDOW = timedelta(days=14)
BATCH_PROFILES = 200
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MISSING_DDL = """
CREATE TABLE IF NOT EXISTS segment_missing_profiles (
    source VARCHAR NOT NULL,
    profile_id VARCHAR NOT NULL,
    checked_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source, profile_id)
)
"""
# Segment's reserved traits (Spec: Identify) and the canonical columns they fill.
TRAIT_COLUMNS = {
    "email": "email",
    "first_name": "first_name",
    "firstName": "first_name",
    "last_name": "last_name",
    "lastName": "last_name",
    "gender": "sex",
    "timezone": "timezone",
    "language": "language",
}
ADDRESS_COLUMNS = {"postal_code": "postal_code", "postalCode": "postal_code",
                   "state": "state"}


class SegmentError(CarepostError):
    """The Profile API rejected a request or kept failing; codes only."""


async def sync_segment(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    spec: SegmentSource,
    root: Path,
    *,
    since: datetime | None = None,
    progress: Progress | None = None,
) -> SyncSummary:
    """Sync traits and recent events of every known profile from Segment."""
    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    create_tables(conn)
    conn.execute(MISSING_DDL)
    token = read_secret(spec.token_env, f"Segment source {name}")
    window_start = _window_start(since, get_watermark(conn, name), started_at)
    ids = [row[0] for row in conn.execute("SELECT profile_id FROM profiles ORDER BY 1").fetchall()]

    summary = SyncSummary(source=name, kind="segment")
    label = f"segment:{name}"
    client = httpx.AsyncClient(
        base_url=spec.base_url.rstrip("/"),
        auth=httpx.BasicAuth(token.get_secret_value(), ""),
        timeout=spec.timeout_seconds,
    )
    async with client:
        reader = _ProfileReader(client, spec, window_start)
        for offset in range(0, len(ids), BATCH_PROFILES):
            batch_ids = ids[offset:offset + BATCH_PROFILES]
            results = await reader.read_many(batch_ids)
            with transaction(conn):
                _apply(conn, f"{label}:{offset // BATCH_PROFILES + 1}", offset, results, spec,
                       summary)
            summary.batches += 1
            if progress:
                progress(f"profiles {offset + 1}-{offset + len(batch_ids)}", len(batch_ids))

    summary.watermark = started_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    with transaction(conn):
        set_watermark(conn, name, "segment", summary.watermark)
    labels = [f"{label}:{n + 1}" for n in range(summary.batches)]
    summary.add_reasons(quarantine_reasons(conn, labels))
    summary.shared_address_count, summary.shared_address_groups = shared_addresses(conn)
    summary.elapsed_seconds = round(time.monotonic() - started, 3)
    return summary


def _window_start(since: datetime | None, stored: str | None, now: datetime) -> datetime:
    oldest = now - EVENT_WINDOW
    start = since or (datetime.fromisoformat(stored.replace("Z", "+00:00")) if stored else None)
    if start is None or start < oldest:
        return oldest
    return start


class _ProfileReader:
    """Reads profiles with bounded concurrency and retries."""

    def __init__(self, client: httpx.AsyncClient, spec: SegmentSource, start: datetime) -> None:
        self._client, self._spec = client, spec
        self._start = start.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        self._gate = asyncio.Semaphore(spec.concurrency)
        self._base = f"/v1/spaces/{quote(spec.space_id, safe='')}/collections/users/profiles"

    async def read_many(self, ids: list[str]) -> list[tuple[str, dict | None, list[dict]]]:
        return list(await asyncio.gather(*(self._read(profile_id) for profile_id in ids)))

    async def _read(self, profile_id: str) -> tuple[str, dict | None, list[dict]]:
        """Return (id, traits or None when Segment has no profile, events)."""
        external = f"{self._spec.id_type.lower()}:{quote(profile_id, safe='')}"
        path = f"{self._base}/{external}"
        async with self._gate:
            traits_pages = await self._pages(f"{path}/traits", {})
            if traits_pages is None:
                return profile_id, None, []
            events = await self._pages(f"{path}/events", {"start": self._start, "sort": "asc"})
        traits: dict[str, Any] = {}
        for page in traits_pages:
            traits.update(page.get("traits") or {})
        return profile_id, traits, [item for page in events or [] for item in page.get("data") or []]

    async def _pages(self, path: str, params: dict[str, str]) -> list[dict] | None:
        pages: list[dict] = []
        query = {**params, "limit": str(self._spec.page_size)}
        while True:
            response = await self._get(path, query)
            if response is None:
                return None
            body = response.json()
            pages.append(body)
            cursor = body.get("cursor") or {}
            if not cursor.get("has_more") or not cursor.get("next"):
                return pages
            query = {**params, "limit": str(self._spec.page_size), "next": str(cursor["next"])}

    async def _get(self, path: str, query: dict[str, str]) -> httpx.Response | None:
        for attempt in range(1, self._spec.max_attempts + 1):
            response = await self._client.get(path, params=query)
            if response.status_code == 200:
                return response
            if response.status_code == 404 and _error_code(response) == "not_found":
                return None
            if response.status_code not in RETRY_STATUSES:
                raise SegmentError(
                    f"Profile API returned {response.status_code} ({_error_code(response)}) "
                    f"with Request-Id {response.headers.get('Request-Id', 'none')}",
                    hint="check space_id and the access token in " + self._spec.token_env,
                )
            if attempt < self._spec.max_attempts:
                wait = self._spec.backoff_seconds * 2 ** (attempt - 1)
                log.warning("Profile API %d; retry %d in %.2f s", response.status_code,
                            attempt, wait)
                await asyncio.sleep(wait)
        raise SegmentError(
            f"Profile API kept failing after {self._spec.max_attempts} tries",
            hint="the space is rate-limited or unavailable; run the sync again later",
        )


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "no error code"


def _profile_record(profile_id: str, row: int, traits: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"source_row": row, "profile_id": profile_id}
    rest = dict(traits)
    for trait, column in TRAIT_COLUMNS.items():
        if trait in rest:
            record[column] = rest.pop(trait)
    birthday = rest.pop("birthday", None)
    if isinstance(birthday, str):
        record["birth_date"] = birthday[:10]
    address = rest.pop("address", None)
    if isinstance(address, dict):
        for key, column in ADDRESS_COLUMNS.items():
            if key in address:
                record[column] = address[key]
    record["traits"] = rest or None
    return record


def _apply(
    conn: duckdb.DuckDBPyConnection,
    label: str,
    offset: int,
    results: list[tuple[str, dict | None, list[dict]]],
    spec: SegmentSource,
    summary: SyncSummary,
) -> None:
    """Upsert one batch of profiles and their events."""
    clear_quarantine(conn, label)
    profiles, events, missing = [], [], []
    for position, (profile_id, traits, items) in enumerate(results, offset + 1):
        if traits is None:
            missing.append(profile_id)
            continue
        profiles.append(_profile_record(profile_id, position, traits))
        for item in items:
            kind = spec.event_types.get(str(item.get("event")))
            if item.get("type") != "track" or kind is None:
                summary.unmapped_records += 1
                continue
            events.append({"source_row": position, "event_id": item.get("message_id"),
                           "profile_id": profile_id, "type": kind,
                           "occurred_at": item.get("timestamp"),
                           "properties": item.get("properties") or {}})
    if profiles:
        stage_records(conn, profiles, PROFILE_COLUMNS)
        loaded, quarantined, _ = apply_staged_profiles(conn, label)
        summary.profiles += loaded
        summary.quarantined += quarantined
    if events:
        stage_records(conn, events, EVENT_COLUMNS)
        stored, duplicates, quarantined = apply_staged_events(conn, label, replace=True)
        summary.events += stored
        summary.duplicate_events_dropped += duplicates
        summary.quarantined += quarantined
    _record_missing(conn, missing, summary)
    found = [record["profile_id"] for record in profiles]
    if found:
        conn.execute(
            "DELETE FROM segment_missing_profiles WHERE source = ? AND list_contains(?, profile_id)",
            [summary.source, found],
        )


def _record_missing(conn: duckdb.DuckDBPyConnection, missing: list[str],
                    summary: SyncSummary) -> None:
    if not missing:
        return
    conn.executemany(
        "INSERT INTO segment_missing_profiles (source, profile_id) VALUES (?, ?) "
        "ON CONFLICT (source, profile_id) DO UPDATE SET checked_at = now()",
        [[summary.source, profile_id] for profile_id in missing],
    )
    summary.missing_profiles += len(missing)
    log.info("Segment has no profile for %d known ids", len(missing))
