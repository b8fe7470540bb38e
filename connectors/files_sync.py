"""Sync a configured ``files`` source: globs, mapping, re-runs, deletions.

The watermark of a files source is the fingerprint (size and modification
time in nanoseconds) of every file it loaded. A re-run loads only files
whose fingerprint changed or that are new; with ``since`` it loads the
files modified at or after that time instead. A full export
(``full: true``) reloads every file of a table when any of them changed,
and then deletes the profiles and events that an earlier full sync of the
same source loaded and this one no longer contains. The whole sync is one
transaction, watermark included, so a failure loads nothing of it.
"""

from __future__ import annotations

import glob
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import duckdb

from carepost.connectors.files import (
    EXPORT_IDS,
    ReadOptions,
    SourceError,
    insertion_order,
    load_events_file,
    load_profiles_file,
)
from carepost.connectors.files_mapping import load_mapping
from carepost.connectors.sync import (
    SyncSummary,
    delete_events,
    delete_profiles,
    get_watermark,
    session_zone,
    set_watermark,
    shared_addresses,
    transaction,
)
from carepost.connectors.sync_checks import quarantine_reasons
from carepost.core.schema import create_tables
from carepost.core.sources import FileSource

log = logging.getLogger("carepost.connectors.files")

__all__ = ["Progress", "sync_files"]

# Called with a step description and the rows that step loaded.
Progress = Callable[[str, int], None]

SYNC_KEYS_DDL = """
CREATE TABLE IF NOT EXISTS sync_keys (
    source VARCHAR NOT NULL,
    table_name VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    PRIMARY KEY (source, table_name, id)
)
"""


def sync_files(
    conn: duckdb.DuckDBPyConnection,
    name: str,
    spec: FileSource,
    root: Path,
    *,
    since: datetime | None = None,
    progress: Progress | None = None,
) -> SyncSummary:
    """Sync one files source into the canonical tables and return its summary."""
    started = time.monotonic()
    create_tables(conn)
    mapping = load_mapping(_resolve(root, spec.mapping)) if spec.mapping else None
    stored = json.loads(get_watermark(conn, name) or "{}").get("files", {})
    summary = SyncSummary(source=name, kind="files")
    fingerprints: dict[str, str] = {}
    plan: list[tuple[str, list[Path]]] = []
    for table, pattern in (("profiles", spec.profiles), ("events", spec.events)):
        if not pattern:
            continue
        paths = _expand(root, pattern)
        current = {str(path): _fingerprint(path) for path in paths}
        fingerprints.update(current)
        changed = [path for path in paths if _is_changed(path, current, stored, since)]
        if spec.full and changed:
            changed = paths
        summary.skipped_files += len(paths) - len(changed)
        plan.append((table, changed))

    loaded_files: list[str] = []
    with insertion_order(conn), session_zone(conn, spec.timezone), transaction(conn):
        for table, paths in plan:
            rules = mapping.table(table) if mapping else None
            options = ReadOptions(encoding=spec.encoding, rules=rules)
            _load_table(conn, table, paths, options, spec.full, summary, progress)
            if spec.full and paths:
                _delete_missing(conn, name, table, summary)
            loaded_files.extend(str(path.resolve()) for path in paths)
        summary.watermark = json.dumps({"files": fingerprints}, sort_keys=True)
        set_watermark(conn, name, "files", summary.watermark)

    summary.add_reasons(quarantine_reasons(conn, loaded_files))
    summary.shared_address_count, summary.shared_address_groups = shared_addresses(conn)
    summary.elapsed_seconds = round(time.monotonic() - started, 3)
    return summary


def _load_table(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    paths: list[Path],
    options: ReadOptions,
    full: bool,
    summary: SyncSummary,
    progress: Progress | None,
) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {EXPORT_IDS}")
    for path in paths:
        if table == "profiles":
            loaded, quarantined, merged = load_profiles_file(
                conn, path, options, replace=full, collect_ids=full
            )
            summary.profiles += loaded
            summary.merged_profiles += merged
        else:
            loaded, duplicates, quarantined = load_events_file(
                conn, path, options, collect_ids=full
            )
            summary.events += loaded
            summary.duplicate_events_dropped += duplicates
        summary.quarantined += quarantined
        summary.batches += 1
        if progress:
            progress(f"{table}: {path.name}", loaded + quarantined)


def _delete_missing(
    conn: duckdb.DuckDBPyConnection, name: str, table: str, summary: SyncSummary
) -> None:
    """Delete rows an earlier full export of this source had and this one lacks."""
    conn.execute(SYNC_KEYS_DDL)
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {EXPORT_IDS} (id VARCHAR)")
    stale = [
        row[0]
        for row in conn.execute(
            f"SELECT id FROM sync_keys WHERE source = ? AND table_name = ? "
            f"AND id NOT IN (SELECT id FROM {EXPORT_IDS})",
            [name, table],
        ).fetchall()
    ]
    if table == "profiles":
        profiles, events = delete_profiles(conn, stale)
        summary.deleted_profiles += profiles
        summary.deleted_events += events
    else:
        summary.deleted_events += delete_events(conn, stale)
    conn.execute("DELETE FROM sync_keys WHERE source = ? AND table_name = ?", [name, table])
    conn.execute(
        f"INSERT INTO sync_keys SELECT DISTINCT ?, ?, id FROM {EXPORT_IDS}", [name, table]
    )
    conn.execute(f"DROP TABLE {EXPORT_IDS}")
    if stale:
        log.info("source %s: %d %s missing from the full export deleted", name, len(stale), table)


def _resolve(root: Path, relative: str) -> Path:
    candidate = Path(relative)
    return candidate if candidate.is_absolute() else root / candidate


def _expand(root: Path, pattern: str) -> list[Path]:
    """Return the files a path or glob pattern names, sorted; raise if none."""
    full = _resolve(root, pattern)
    if glob.has_magic(str(full)):
        paths = sorted(Path(match) for match in glob.glob(str(full), recursive=True))
        paths = [path for path in paths if path.is_file()]
    else:
        paths = [full] if full.is_file() else []
    if not paths:
        raise SourceError(
            f"no export file matches {pattern!r}",
            hint=f"check the path; patterns are relative to {root}",
        )
    return paths


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _is_changed(
    path: Path, current: dict[str, str], stored: dict[str, str], since: datetime | None
) -> bool:
    if since is not None:
        return path.stat().st_mtime >= since.timestamp()
    return stored.get(str(path)) != current[str(path)]
