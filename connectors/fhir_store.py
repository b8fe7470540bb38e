"""Apply a mapped FHIR batch: canonical rows, condition and observation facts.

Runs inside the caller's transaction. Facts are kept one row per FHIR
resource, so the traits built from them (``traits.conditions`` and the
``OBSERVATION_TRAITS``) are always rebuilt from every resource seen so
far, not only the ones in this batch.
"""

from __future__ import annotations

import logging
from typing import Any

import duckdb
import pyarrow as pa

from carepost.connectors.fhir_mapping import MappedBatch
from carepost.connectors.sync import (
    SyncSummary,
    apply_staged_events,
    apply_staged_profiles,
    delete_events,
    delete_profiles,
    stage_records,
)
from carepost.connectors.sync_checks import clear_quarantine
from carepost.core.schema import EVENT_COLUMNS, PROFILE_COLUMNS

log = logging.getLogger("carepost.connectors.fhir")

__all__ = ["apply_batch", "apply_deletions"]

FACTS_DDL = """
CREATE TABLE IF NOT EXISTS fhir_conditions (
    condition_id VARCHAR PRIMARY KEY,
    profile_id VARCHAR NOT NULL,
    system VARCHAR, code VARCHAR, display VARCHAR, onset VARCHAR,
    active BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS fhir_observations (
    observation_id VARCHAR PRIMARY KEY,
    profile_id VARCHAR NOT NULL,
    trait VARCHAR NOT NULL,
    value DOUBLE, unit VARCHAR,
    effective_at TIMESTAMPTZ
);
"""
CONDITION_FIELDS = ("condition_id", "profile_id", "system", "code", "display", "onset")
OBSERVATION_FIELDS = ("observation_id", "profile_id", "trait", "unit", "effective_at")


def apply_batch(
    conn: duckdb.DuckDBPyConnection, label: str, batch: MappedBatch, summary: SyncSummary
) -> None:
    """Load one mapped batch; quarantine rows are recorded under ``label``."""
    conn.execute(FACTS_DDL)
    clear_quarantine(conn, label)
    touched: set[str] = set()
    if batch.profiles:
        stage_records(conn, batch.profiles, PROFILE_COLUMNS)
        loaded, quarantined, merged = apply_staged_profiles(conn, label)
        summary.profiles += loaded
        summary.quarantined += quarantined
        summary.merged_profiles += merged
        touched.update(str(row["profile_id"]) for row in batch.profiles if row.get("profile_id"))
    if batch.events:
        stage_records(conn, batch.events, EVENT_COLUMNS)
        stored, duplicates, quarantined = apply_staged_events(conn, label, replace=True)
        summary.events += stored
        summary.duplicate_events_dropped += duplicates
        summary.quarantined += quarantined
    touched.update(_store_conditions(conn, batch.conditions))
    touched.update(_store_observations(conn, batch.observations))
    rebuild_traits(conn, touched)


def _complete(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    # A fact needs its resource id and patient; the event of the same
    # resource is quarantined for the missing value.
    return [row for row in rows if row.get(key) and row.get("profile_id")]


def _store_conditions(conn: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> set[str]:
    rows = _complete(rows, "condition_id")
    if not rows:
        return set()
    table = pa.table({
        **{name: pa.array([_text(row.get(name)) for row in rows], pa.string())
           for name in CONDITION_FIELDS},
        "active": pa.array([bool(row["active"]) for row in rows], pa.bool_()),
    })
    conn.register("_carepost_conditions", table)
    conn.execute(
        "INSERT OR REPLACE INTO fhir_conditions "
        "SELECT * FROM _carepost_conditions "
        "QUALIFY row_number() OVER (PARTITION BY condition_id) = 1"
    )
    conn.unregister("_carepost_conditions")
    return {str(row["profile_id"]) for row in rows}


def _store_observations(
    conn: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]
) -> set[str]:
    rows = [row for row in _complete(rows, "observation_id") if _number(row.get("value"))]
    if not rows:
        return set()
    table = pa.table({
        **{name: pa.array([_text(row.get(name)) for row in rows], pa.string())
           for name in OBSERVATION_FIELDS},
        "value": pa.array([_number(row.get("value")) for row in rows], pa.float64()),
    })
    conn.register("_carepost_observations", table)
    conn.execute(
        "INSERT OR REPLACE INTO fhir_observations "
        "SELECT observation_id, profile_id, trait, value, unit, "
        "TRY_CAST(effective_at AS TIMESTAMPTZ) FROM _carepost_observations "
        "QUALIFY row_number() OVER (PARTITION BY observation_id) = 1"
    )
    conn.unregister("_carepost_observations")
    return {str(row["profile_id"]) for row in rows}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def rebuild_traits(conn: duckdb.DuckDBPyConnection, profile_ids: set[str]) -> None:
    """Rebuild ``conditions`` and observation traits of these profiles from facts."""
    if not profile_ids:
        return
    conn.register("_carepost_touched", pa.table({"id": pa.array(sorted(profile_ids))}))
    conn.execute(
        """
        UPDATE profiles SET traits = json_merge_patch(coalesce(profiles.traits, '{}'), t.patch)
        FROM (
            SELECT id AS profile_id, json_object('conditions', coalesce((
                SELECT to_json(list({'system': system, 'code': code, 'display': display,
                                      'onset': onset} ORDER BY onset, code))
                FROM fhir_conditions c WHERE c.profile_id = id AND active
            ), '[]'::JSON)) AS patch
            FROM _carepost_touched
            WHERE id IN (SELECT profile_id FROM fhir_conditions)
        ) AS t
        WHERE profiles.profile_id = t.profile_id
        """
    )
    conn.execute(
        """
        UPDATE profiles SET traits = json_merge_patch(coalesce(profiles.traits, '{}'), t.patch)
        FROM (
            SELECT profile_id, json_group_object(trait, latest) AS patch
            FROM (
                SELECT profile_id, trait,
                       arg_max(json_object('value', value, 'unit', unit,
                               'at', strftime(effective_at, '%Y-%m-%dT%H:%M:%SZ')),
                               effective_at) AS latest
                FROM fhir_observations
                WHERE profile_id IN (SELECT id FROM _carepost_touched)
                GROUP BY profile_id, trait
            ) GROUP BY profile_id
        ) AS t
        WHERE profiles.profile_id = t.profile_id
        """
    )
    conn.unregister("_carepost_touched")


def apply_deletions(
    conn: duckdb.DuckDBPyConnection, references: list[str], summary: SyncSummary
) -> None:
    """Apply ``Type/id`` deletions from the source."""
    conn.execute(FACTS_DDL)
    patients = [ref.split("/", 1)[1] for ref in references if ref.startswith("Patient/")]
    others = [ref for ref in references if not ref.startswith("Patient/")]
    if patients:
        profiles, events = delete_profiles(conn, patients)
        summary.deleted_profiles += profiles
        summary.deleted_events += events
        for table in ("fhir_conditions", "fhir_observations"):
            conn.execute(f"DELETE FROM {table} WHERE list_contains(?, profile_id)", [patients])
    if others:
        summary.deleted_events += delete_events(conn, others)
        touched = _delete_facts(conn, others)
        rebuild_traits(conn, touched)
    log.info("applied %d deletions from the FHIR source", len(references))


def _delete_facts(conn: duckdb.DuckDBPyConnection, references: list[str]) -> set[str]:
    touched: set[str] = set()
    for table, kind, key in (("fhir_conditions", "Condition", "condition_id"),
                             ("fhir_observations", "Observation", "observation_id")):
        ids = [ref.split("/", 1)[1] for ref in references if ref.startswith(f"{kind}/")]
        if not ids:
            continue
        rows = conn.execute(
            f"DELETE FROM {table} WHERE list_contains(?, {key}) RETURNING profile_id", [ids]
        ).fetchall()
        touched.update(row[0] for row in rows)
    return touched
