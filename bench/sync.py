"""Measure the files connector on a large generated export.

    .venv/bin/python bench/sync.py [--profiles 1000000] [--events 10000000]

It writes a synthetic export under ``bench/out/sync/``: profiles as CSV with
an address per row and events as Parquet, regenerated only when the counts
change. It syncs the export into a new DuckDB file, runs the sync again
unchanged, and once more after the events file is touched. It prints one
JSON object: seconds and rows per second for each step, and the peak
resident memory of the process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import duckdb

from carepost.connectors.files_sync import sync_files
from carepost.core.sources import FileSource

OUT = Path(__file__).resolve().parent / "out" / "sync"
EVENT_TYPES = ["encounter", "prescription_written", "prescription_filled",
               "appointment_booked", "appointment_attended", "appointment_no_show"]


def generate(out: Path, profiles: int, events: int) -> tuple[Path, Path]:
    """Write the export with DuckDB unless files of these sizes exist."""
    out.mkdir(parents=True, exist_ok=True)
    profiles_path = out / f"profiles-{profiles}.csv"
    events_path = out / f"events-{events}.parquet"
    conn = duckdb.connect()
    if not profiles_path.exists():
        conn.execute(f"""
            COPY (
                SELECT 'p' || lpad(i::VARCHAR, 8, '0') AS profile_id,
                       'patient' || i || '@example.org' AS email,
                       'First' || (i % 997) AS first_name, 'Last' || (i % 991) AS last_name,
                       DATE '1940-01-01' + (i % 25000)::INTEGER AS birth_date,
                       CASE WHEN i % 2 = 0 THEN 'female' ELSE 'male' END AS sex,
                       lpad((68000 + i % 999)::VARCHAR, 5, '0') AS postal_code,
                       'Nebraska' AS state, 'America/Chicago' AS timezone, 'en' AS language,
                       NULL AS deceased_at, true AS consent_marketing, true AS consent_contact,
                       '{{"conditions": []}}' AS traits
                FROM range({profiles}) AS t(i)
            ) TO '{profiles_path}' (HEADER, DELIMITER ',')
        """)
    if not events_path.exists():
        types = "[" + ", ".join(f"'{name}'" for name in EVENT_TYPES) + "]"
        conn.execute(f"""
            COPY (
                SELECT 'e' || i AS event_id,
                       'p' || lpad((i % {profiles})::VARCHAR, 8, '0') AS profile_id,
                       {types}[1 + i % {len(EVENT_TYPES)}] AS type,
                       TIMESTAMPTZ '2020-01-01 00:00:00+00' + to_seconds(i * 13) AS occurred_at,
                       '{{"class": "ambulatory"}}' AS properties
                FROM range({events}) AS t(i)
            ) TO '{events_path}' (FORMAT parquet, ROW_GROUP_SIZE 122880)
        """)
    conn.close()
    return profiles_path, events_path


def timed_sync(conn: duckdb.DuckDBPyConnection, spec: FileSource, root: Path) -> dict[str, Any]:
    started = time.perf_counter()
    summary = sync_files(conn, "bench", spec, root)
    seconds = time.perf_counter() - started
    rows = summary.profiles + summary.events + summary.duplicate_events_dropped
    return {"seconds": round(seconds, 1), "profiles": summary.profiles,
            "events": summary.events, "duplicates": summary.duplicate_events_dropped,
            "skipped_files": summary.skipped_files,
            "rows_per_second": round(rows / seconds) if rows else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    args = parser.parse_args()

    started = time.perf_counter()
    profiles_path, events_path = generate(OUT, args.profiles, args.events)
    generated = round(time.perf_counter() - started, 1)
    warehouse = OUT / "warehouse.duckdb"
    for stale in (warehouse, warehouse.with_suffix(".duckdb.wal")):
        stale.unlink(missing_ok=True)
    conn = duckdb.connect(str(warehouse))
    spec = FileSource(profiles=str(profiles_path), events=str(events_path))

    first = timed_sync(conn, spec, OUT)
    unchanged = timed_sync(conn, spec, OUT)
    os.utime(events_path)  # the same rows again: every event is a duplicate
    touched = timed_sync(conn, spec, OUT)
    conn.close()

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "duckdb": duckdb.__version__,
        "generate_seconds": generated,
        "first_sync": first,
        "unchanged_rerun": unchanged,
        "events_file_touched": touched,
        "peak_rss_mib": round(peak_kib / 1024),
    }, indent=2))


if __name__ == "__main__":
    main()
