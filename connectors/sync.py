"""What every source shares: upserts, watermarks, deletions, identity rules.

A source stages its rows (see ``sync_checks``) and calls
``apply_staged_profiles`` or ``apply_staged_events`` inside
``transaction(conn)``, one transaction per file or page batch. It stores
its watermark with ``set_watermark`` only in its last transaction. So a
sync that fails halfway keeps what it committed, and the next run starts
again from the old watermark. Upserts are idempotent, so reloading a
batch that was already committed changes nothing.

Identity rules:

- Profiles with the same ``profile_id`` are merged: within a batch, the
  last non-empty value of each column wins and ``traits`` objects are
  merged key by key (RFC 7396 merge patch). Against the stored row, a
  merge keeps stored values that the batch leaves empty, unless the source
  is a full export, which replaces the row.
- Addresses are trimmed, validated and stored with the domain lower-cased
  (``sync_checks.email_problem``). Profiles that share an address are
  reported by ``shared_addresses``, never merged.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from carepost.connectors.sync_checks import (
    EMAILS,
    STAGE,
    check_emails,
    clean,
    event_checks,
    profile_checks,
    profile_values,
    quarantine_staged,
    reasons_sql,
)
from carepost.core.schema import EVENT_COLUMNS, PROFILE_COLUMNS

log = logging.getLogger("carepost.connectors.sync")

__all__ = [
    "SyncSummary",
    "apply_staged_events",
    "apply_staged_profiles",
    "delete_events",
    "delete_profiles",
    "get_watermark",
    "session_zone",
    "set_watermark",
    "shared_addresses",
    "stage_records",
    "transaction",
]

WATERMARK_DDL = """
CREATE TABLE IF NOT EXISTS sync_watermarks (
    source VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    watermark VARCHAR NOT NULL,
    synced_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
)
"""
# How many groups of profiles sharing an address a summary lists by id.
SHARED_ADDRESS_GROUPS_LISTED = 20


@dataclass
class SyncSummary:
    """Counts of one sync of one source; ids and counts only, never values.

    ``profiles`` counts rows inserted or updated, ``events`` new or changed
    events, ``deleted_*`` rows removed because the source deleted them, and
    ``quarantined`` source records moved to the ``quarantine`` table.
    ``source_errors`` counts the issues the source itself reported (a FHIR
    export's error file) by issue code. ``shared_address_groups`` lists
    profile ids that share one address.
    """

    source: str
    kind: str
    profiles: int = 0
    events: int = 0
    duplicate_events_dropped: int = 0
    deleted_profiles: int = 0
    deleted_events: int = 0
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    merged_profiles: int = 0
    missing_profiles: int = 0
    unmapped_records: int = 0
    source_errors: dict[str, int] = field(default_factory=dict)
    shared_address_count: int = 0
    shared_address_groups: list[list[str]] = field(default_factory=list)
    batches: int = 0
    skipped_files: int = 0
    watermark: str | None = None
    elapsed_seconds: float = 0.0

    def add_reasons(self, reasons: Mapping[str, int]) -> None:
        for reason, count in reasons.items():
            self.quarantine_reasons[reason] = self.quarantine_reasons.get(reason, 0) + count


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run the block in one DuckDB transaction, rolled back on any exception."""
    conn.begin()
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


@contextmanager
def session_zone(conn: duckdb.DuckDBPyConnection, zone: str) -> Iterator[None]:
    """Read times without a UTC offset in ``zone`` for the block, then UTC again.

    DuckDB casts a text time without an offset to TIMESTAMPTZ in the
    session's ``TimeZone``; the stored value is an instant either way.
    """
    conn.execute(f"SET TimeZone = '{_zone_literal(zone)}'")
    try:
        yield
    finally:
        conn.execute("SET TimeZone = 'UTC'")


def _zone_literal(zone: str) -> str:
    # Zones come from validated settings; this guards the SQL literal anyway,
    # because SET takes no parameters.
    if not re.fullmatch(r"[A-Za-z0-9_+/-]+", zone):
        raise ValueError(f"invalid time zone name {zone!r}")
    return zone


# --- watermarks -------------------------------------------------------------


def get_watermark(conn: duckdb.DuckDBPyConnection, source: str) -> str | None:
    """Return the watermark stored by the last complete sync of ``source``."""
    conn.execute(WATERMARK_DDL)
    row = conn.execute(
        "SELECT watermark FROM sync_watermarks WHERE source = ?", [source]
    ).fetchone()
    return row[0] if row else None


def set_watermark(
    conn: duckdb.DuckDBPyConnection, source: str, kind: str, watermark: str
) -> None:
    """Store the watermark; call it inside the sync's last transaction."""
    conn.execute(WATERMARK_DDL)
    conn.execute(
        "INSERT INTO sync_watermarks (source, kind, watermark) VALUES (?, ?, ?) "
        "ON CONFLICT (source) DO UPDATE SET kind = excluded.kind, "
        "watermark = excluded.watermark, synced_at = now()",
        [source, kind, watermark],
    )


# --- staging records produced in Python ---------------------------------------


def stage_records(
    conn: duckdb.DuckDBPyConnection,
    records: Iterable[Mapping[str, object]],
    columns: Iterable[str],
) -> None:
    """Create the staging table from records of an HTTP source.

    Each record carries ``source_row``, an optional ``row_problem`` and
    canonical columns. Values are staged as text; a dict or list value
    (``traits``, ``properties``) is staged as its JSON text.
    """
    names = list(columns)
    data: dict[str, list] = {"source_row": [], "row_problem": []}
    data.update({name: [] for name in names})
    for record in records:
        data["source_row"].append(int(record["source_row"]))
        data["row_problem"].append(record.get("row_problem"))
        for name in names:
            data[name].append(_as_text(record.get(name)))
    arrays = {"source_row": pa.array(data.pop("source_row"), pa.int64())}
    arrays.update({name: pa.array(values, pa.string()) for name, values in data.items()})
    conn.register("_carepost_records", pa.table(arrays))
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {STAGE} AS SELECT * FROM _carepost_records")
    conn.unregister("_carepost_records")


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- applying the staging table -----------------------------------------------


def apply_staged_profiles(
    conn: duckdb.DuckDBPyConnection, source_file: str, *, replace: bool = False
) -> tuple[int, int, int]:
    """Quarantine bad staged profiles and upsert the rest.

    Returns (profiles inserted or updated, rows quarantined, ids merged
    from several rows). ``replace`` makes each stored row equal to the
    staged one; otherwise empty staged values keep the stored ones.
    """
    check_emails(conn)
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {STAGE} AS SELECT s.*, e.email AS checked_email, "
        f"e.problem AS email_problem FROM {STAGE} AS s "
        f"LEFT JOIN {EMAILS} AS e USING (source_row)"
    )
    quarantined = quarantine_staged(conn, source_file, reasons_sql(profile_checks()))
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE _carepost_typed AS "
        f"SELECT source_row, {profile_values()} FROM {STAGE}"
    )
    merged = conn.execute(
        "SELECT count(*) FROM (SELECT profile_id FROM _carepost_typed "
        "GROUP BY profile_id HAVING count(*) > 1)"
    ).fetchone()[0]
    loaded = conn.execute(_profile_upsert_sql(replace)).fetchone()[0]
    for table in (STAGE, EMAILS, "_carepost_typed"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    if merged:
        log.info("%s: merged %d profile ids given by several rows", source_file, merged)
    return loaded, quarantined, merged


def _profile_upsert_sql(replace: bool) -> str:
    merged_columns = []
    for name in PROFILE_COLUMNS:
        if name == "profile_id":
            continue
        if name == "traits":
            merged_columns.append(
                "list_reduce(list(traits ORDER BY source_row) FILTER (WHERE traits IS NOT NULL), "
                "lambda a, b: json_merge_patch(a, b)) AS traits"
            )
        else:
            merged_columns.append(
                f"arg_max({name}, source_row) FILTER (WHERE {name} IS NOT NULL) AS {name}"
            )
    updates = []
    for name in PROFILE_COLUMNS:
        if name == "profile_id":
            continue
        if replace:
            updates.append(f"{name} = excluded.{name}")
        elif name == "traits":
            updates.append(
                "traits = CASE WHEN excluded.traits IS NULL THEN traits "
                "WHEN traits IS NULL THEN excluded.traits "
                "ELSE json_merge_patch(traits, excluded.traits) END"
            )
        else:
            updates.append(f"{name} = coalesce(excluded.{name}, {name})")
    columns = ", ".join(PROFILE_COLUMNS)
    return f"""
        INSERT INTO profiles ({columns})
        SELECT profile_id, {', '.join(merged_columns)}
        FROM _carepost_typed GROUP BY profile_id
        ON CONFLICT (profile_id) DO UPDATE SET {', '.join(updates)}
    """


def apply_staged_events(
    conn: duckdb.DuckDBPyConnection, source_file: str, *, replace: bool = False
) -> tuple[int, int, int]:
    """Quarantine bad staged events and store the rest.

    Returns (events stored, duplicates dropped, rows quarantined). Without
    ``replace``, an event id already stored or repeated later in the batch
    is dropped. With it, the last staged row of an id replaces the stored
    event, because the records of such a source (FHIR) change.
    """
    quarantined = quarantine_staged(conn, source_file, reasons_sql(event_checks()))
    valid = conn.execute(f"SELECT count(*) FROM {STAGE}").fetchone()[0]
    order = "source_row DESC" if replace else "source_row"
    conflict = (
        "DO UPDATE SET profile_id = excluded.profile_id, type = excluded.type, "
        "occurred_at = excluded.occurred_at, properties = excluded.properties"
        if replace
        else "DO NOTHING"
    )
    stored = conn.execute(
        f"""
        INSERT INTO events ({', '.join(EVENT_COLUMNS)})
        SELECT {clean('event_id')}, {clean('profile_id')}, {clean('type')},
               CAST({clean('occurred_at')} AS TIMESTAMPTZ),
               CAST({clean('properties')} AS JSON)
        FROM {STAGE}
        QUALIFY row_number() OVER (PARTITION BY {clean('event_id')} ORDER BY {order}) = 1
        ON CONFLICT (event_id) {conflict}
        """
    ).fetchone()[0]
    conn.execute(f"DROP TABLE {STAGE}")
    return stored, valid - stored, quarantined


# --- deletions and identity reports --------------------------------------------


def _register_ids(conn: duckdb.DuckDBPyConnection, ids: Iterable[str]) -> None:
    table = pa.table({"id": pa.array(sorted(set(ids)), pa.string())})
    conn.register("_carepost_ids", table)


def delete_profiles(conn: duckdb.DuckDBPyConnection, ids: Iterable[str]) -> tuple[int, int]:
    """Delete profiles and their events; return (profiles, events) deleted."""
    _register_ids(conn, ids)
    try:
        events = conn.execute(
            "DELETE FROM events WHERE profile_id IN (SELECT id FROM _carepost_ids)"
        ).fetchone()[0]
        profiles = conn.execute(
            "DELETE FROM profiles WHERE profile_id IN (SELECT id FROM _carepost_ids)"
        ).fetchone()[0]
    finally:
        conn.unregister("_carepost_ids")
    return profiles, events


def delete_events(conn: duckdb.DuckDBPyConnection, ids: Iterable[str]) -> int:
    """Delete events by id, and events derived from one record (``id#part``)."""
    _register_ids(conn, ids)
    try:
        return conn.execute(
            "DELETE FROM events WHERE event_id IN (SELECT id FROM _carepost_ids) "
            "OR split_part(event_id, '#', 1) IN (SELECT id FROM _carepost_ids)"
        ).fetchone()[0]
    finally:
        conn.unregister("_carepost_ids")


def shared_addresses(conn: duckdb.DuckDBPyConnection) -> tuple[int, list[list[str]]]:
    """Return how many addresses several profiles share, and some id groups.

    The groups list profile ids only (never the address), at most
    ``SHARED_ADDRESS_GROUPS_LISTED`` of them. Such profiles are not merged,
    because family members often share one mailbox.
    """
    rows = conn.execute(
        "SELECT list(profile_id ORDER BY profile_id) AS ids FROM profiles "
        "WHERE email IS NOT NULL GROUP BY email HAVING count(*) > 1 ORDER BY ids"
    ).fetchall()
    groups = [list(row[0]) for row in rows]
    return len(groups), groups[:SHARED_ADDRESS_GROUPS_LISTED]
