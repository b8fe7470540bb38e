"""The ``sync`` Prefect flow: pull one configured source into the warehouse.

``sync_named_source`` dispatches on the source's kind and is shared by the
flow, the campaign flow (which syncs every source before selecting) and
the command line. Parameters and results carry source names, dates,
counts and profile ids only. An exception that is not a ``CarepostError``
(whose messages carry no values) is replaced by one that names its type.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timezone
from typing import Any

import duckdb
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from carepost.connectors.fhir import sync_fhir
from carepost.connectors.files_sync import Progress, sync_files
from carepost.connectors.segment_profiles import sync_segment
from carepost.connectors.sync import SyncSummary
from carepost.core.errors import CarepostError, ConfigError
from carepost.core.settings import Settings, load_settings
from carepost.core.sources import FhirSource, FileSource, SegmentSource
from carepost.flows.warehouse import connect_for_writing

__all__ = [
    "SyncFailed", "forget_progress", "parse_since", "register_progress", "sync_flow",
    "sync_named_source",
]

# Progress callbacks of runs in this process, by a token passed as a flow
# parameter, because a callable cannot be a Prefect parameter.
_PROGRESS: dict[str, Progress] = {}


class SyncFailed(CarepostError):
    """A sync failed with an unexpected error; the message names its type only."""


def parse_since(text: str | None) -> datetime | None:
    """Return ``--since`` (a date or an ISO time) as an aware UTC time."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"since {text!r} is not a date or time",
            hint="use YYYY-MM-DD or an ISO 8601 time such as 2024-03-01T00:00:00Z",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def source_spec(settings: Settings, name: str) -> FileSource | FhirSource | SegmentSource:
    sources = settings.named_sources()
    if name not in sources:
        known = ", ".join(sorted(sources)) or "none"
        raise ConfigError(f"source {name!r} is not configured",
                          hint=f"configured sources: {known}")
    return sources[name]


async def sync_named_source(
    settings: Settings,
    conn: duckdb.DuckDBPyConnection,
    name: str,
    *,
    since: datetime | None = None,
    progress: Progress | None = None,
) -> SyncSummary:
    """Sync the configured source ``name`` into ``conn`` and return its summary."""
    spec = source_spec(settings, name)
    if isinstance(spec, FileSource):
        return sync_files(conn, name, spec, settings.root, since=since, progress=progress)
    if isinstance(spec, FhirSource):
        return await sync_fhir(conn, name, spec, settings.root, since=since, progress=progress)
    return await sync_segment(conn, name, spec, settings.root, since=since, progress=progress)


def summary_dict(summary: SyncSummary) -> dict[str, Any]:
    """Return the summary as JSON-ready data (counts, codes and profile ids)."""
    return dataclasses.asdict(summary)


@task(name="sync-source", task_run_name="sync-{source}", persist_result=False,
      cache_policy=NO_CACHE)
async def sync_source_task(source: str, since: str | None,
                           progress_token: str | None) -> dict[str, Any]:
    settings = load_settings()
    conn = connect_for_writing(settings.warehouse_path)
    try:
        summary = await sync_named_source(
            settings, conn, source, since=parse_since(since),
            progress=_PROGRESS.get(progress_token or ""),
        )
    except CarepostError:
        raise
    except Exception as exc:
        raise SyncFailed(f"sync of source {source} failed with {type(exc).__name__}",
                         hint="run with CAREPOST_LOG_LEVEL=DEBUG locally to see more") from None
    finally:
        conn.close()
    return summary_dict(summary)


@flow(name="sync", flow_run_name="sync-{source}", persist_result=False)
async def sync_flow(source: str, since: str | None = None,
                    progress_token: str | None = None) -> dict[str, Any]:
    """Sync one configured source and return its summary."""
    logger = get_run_logger()
    result = await sync_source_task(source, since, progress_token)
    logger.info(
        "source %s: %d profiles, %d events, %d quarantined, %d deleted profiles, "
        "%d deleted events", source, result["profiles"], result["events"],
        result["quarantined"], result["deleted_profiles"], result["deleted_events"],
    )
    return result


def register_progress(progress: Progress) -> str:
    """Register a progress callback for a run in this process; return its token."""
    token = uuid.uuid4().hex
    _PROGRESS[token] = progress
    return token


def forget_progress(token: str) -> None:
    _PROGRESS.pop(token, None)
