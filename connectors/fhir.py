"""Sync a FHIR R4 source (Bulk Data ``$export`` or search) into the canonical tables.

Each output file of an export, or each page of a search, is one batch and
one transaction. The watermark (the export's ``transactionTime``, or the
time a search run started) is stored in a last transaction after every
batch committed, so a sync that fails halfway keeps its batches and the
next run requests again from the old watermark. Upserts make that
repeat harmless.

Active conditions and observation traits are kept per resource in the
tables ``fhir_conditions`` and ``fhir_observations``, and the profile
traits of the patients a batch touched are rebuilt from them. So an
incremental export that carries one changed Condition updates
``traits.conditions`` without losing the patient's other conditions.

Deletions: an export's ``deleted`` files (Bulk Data 2.0) list Bundles of
``DELETE`` requests; a deleted Patient removes the profile and its events,
any other deleted resource removes the events and facts it produced.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import httpx

from carepost.connectors.fhir_http import FhirClient, FhirError, parse_json_line
from carepost.connectors.fhir_mapping import MappedBatch, map_resource
from carepost.connectors.fhir_store import apply_batch, apply_deletions
from carepost.connectors.sync import (
    SyncSummary,
    get_watermark,
    set_watermark,
    shared_addresses,
    transaction,
)
from carepost.connectors.sync_checks import quarantine_reasons
from carepost.core.schema import create_tables
from carepost.core.sources import FhirSource

log = logging.getLogger("carepost.connectors.fhir")

__all__ = ["FhirError", "sync_fhir"]

Progress = Callable[[str, int], None]

# Patients load first, so the traits of the other resources find their rows.
TYPE_ORDER = {"Patient": 0, "Consent": 1, "Condition": 2, "Observation": 3}


async def sync_fhir(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    spec: FhirSource,
    root: Path,
    *,
    since: datetime | None = None,
    progress: Progress | None = None,
) -> SyncSummary:
    """Sync one FHIR source and return its summary."""
    started = time.monotonic()
    create_tables(conn)
    watermark = _instant(since) if since else get_watermark(conn, name)
    summary = SyncSummary(source=name, kind="fhir")
    labels: list[str] = []
    async with FhirClient(spec, root) as client:
        if spec.mode == "bulk":
            next_mark = await _sync_bulk(conn, client, name, watermark, summary, labels, progress)
        else:
            next_mark = await _sync_search(
                conn, client, name, spec, watermark, summary, labels, progress
            )
    with transaction(conn):
        set_watermark(conn, name, "fhir", next_mark)
    summary.watermark = next_mark
    summary.add_reasons(quarantine_reasons(conn, labels))
    summary.shared_address_count, summary.shared_address_groups = shared_addresses(conn)
    summary.elapsed_seconds = round(time.monotonic() - started, 3)
    return summary


def _instant(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load_batch(
    conn: duckdb.DuckDBPyConnection,
    label: str,
    resources: list[tuple[int, dict[str, Any] | None]],
    summary: SyncSummary,
) -> None:
    """Map and apply one batch of (source position, resource) in one transaction."""
    batch = MappedBatch()
    fallback_time = _instant(datetime.now(timezone.utc))
    for row, resource in resources:
        if resource is None:
            batch.events.append({"source_row": row, "row_problem": "row: not a JSON object"})
        else:
            map_resource(resource, row, batch, fallback_time)
    with transaction(conn):
        apply_batch(conn, label, batch, summary)
    summary.unmapped_records += batch.unmapped
    summary.batches += 1


async def _sync_bulk(
    conn: duckdb.DuckDBPyConnection,
    client: FhirClient,
    name: str,
    since: str | None,
    summary: SyncSummary,
    labels: list[str],
    progress: Progress | None,
) -> str:
    status_url = await client.kick_off(since)
    manifest = await client.wait_for_manifest(status_url)
    transaction_time = manifest.get("transactionTime")
    if not isinstance(transaction_time, str):
        raise FhirError("the export manifest has no transactionTime",
                        hint="the server does not follow the Bulk Data specification")
    with_token = bool(manifest.get("requiresAccessToken"))
    outputs = sorted(
        (item for item in manifest.get("output") or [] if isinstance(item, dict)),
        key=lambda item: TYPE_ORDER.get(str(item.get("type")), len(TYPE_ORDER)),
    )
    for number, item in enumerate(outputs, 1):
        label = f"fhir:{name}:{number}:{_file_name(item)}"
        labels.append(label)
        lines = await client.ndjson_lines(str(item["url"]), with_token)
        _load_batch(conn, label, [(row, parse_json_line(text)) for row, text in lines], summary)
        if progress:
            progress(f"{item.get('type')}: file {number} of {len(outputs)}", len(lines))

    await _apply_deleted_files(conn, client, manifest, with_token, summary)
    summary.source_errors = await _count_error_issues(client, manifest, with_token)
    return transaction_time


def _file_name(item: dict[str, Any]) -> str:
    return httpx.URL(str(item.get("url", ""))).path.rsplit("/", 1)[-1] or "output"


async def _apply_deleted_files(
    conn: duckdb.DuckDBPyConnection,
    client: FhirClient,
    manifest: dict[str, Any],
    with_token: bool,
    summary: SyncSummary,
) -> None:
    for item in manifest.get("deleted") or []:
        references: list[str] = []
        for _, line in await client.ndjson_lines(str(item["url"]), with_token):
            bundle = parse_json_line(line) or {}
            for entry in bundle.get("entry") or []:
                request = entry.get("request") or {}
                if request.get("method") == "DELETE" and request.get("url"):
                    references.append(str(request["url"]).split("/_history")[0])
        with transaction(conn):
            apply_deletions(conn, references, summary)


async def _count_error_issues(
    client: FhirClient, manifest: dict[str, Any], with_token: bool
) -> dict[str, int]:
    """Count the issues of the export's error files by issue code."""
    counts: Counter[str] = Counter()
    for item in manifest.get("error") or []:
        for _, line in await client.ndjson_lines(str(item["url"]), with_token):
            outcome = parse_json_line(line) or {}
            for issue in outcome.get("issue") or [{}]:
                counts[str(issue.get("code", "unknown"))] += 1
    if counts:
        # Issue codes only: diagnostics text may quote resource content.
        log.warning("FHIR export reported errors: %s", dict(counts))
    return dict(counts)


async def _sync_search(
    conn: duckdb.DuckDBPyConnection,
    client: FhirClient,
    name: str,
    spec: FhirSource,
    since: str | None,
    summary: SyncSummary,
    labels: list[str],
    progress: Progress | None,
) -> str:
    # Changes made while this run pages are picked up by the next run,
    # because its _lastUpdated starts before the first request.
    # NOTE: this is the client's clock; a server clock far behind it can
    # make the next run miss changes made in between.
    started_at = _instant(datetime.now(timezone.utc))
    types = sorted(spec.types, key=lambda kind: TYPE_ORDER.get(kind, len(TYPE_ORDER)))
    for resource_type in types:
        async for page, bundle in client.search(resource_type, since):
            label = f"fhir:{name}:{resource_type} search page {page}"
            labels.append(label)
            resources = [
                (position, entry.get("resource"))
                for position, entry in enumerate(bundle.get("entry") or [], 1)
                # _include and _revinclude entries are context, not matches.
                if (entry.get("search") or {}).get("mode", "match") != "include"
            ]
            _load_batch(conn, label, resources, summary)
            if progress:
                progress(f"{resource_type}: page {page}", len(resources))
    return started_at
