"""Time every shipped segment on synthetic Parquet, against pandas.

Usage: .venv/bin/python bench/segments.py [--profiles 1000000] [--big]
       [--events 10000000] [--as-of 2024-06-15] [--rounds 3] [--json]
       [--threads 2] [--memory-limit 2GB] [--reuse]

``--big`` sets ``--profiles 10000000``; ``--reuse`` keeps Parquet files
of the same sizes from an earlier run. The script:

1. generates profiles and events with DuckDB (deterministic: every value
   is a hash of the row number) and writes them as Parquet under
   ``bench/out/``: profiles with birth dates, consent, a few deaths and a
   JSON list of SNOMED conditions; events as episodes of encounters,
   appointments (booked, then attended, no-show or cancelled) and
   prescriptions (written, and filled 1-10 days later three times in four);
2. in a child process, runs every shipped segment (and each lifecycle
   stage) through ``SegmentLibrary.select`` on views straight over the
   Parquet files;
3. in a second child, loads the files into the canonical tables of a
   DuckDB warehouse file under ``bench/out/`` (timed), the way a
   carepost warehouse is stored;
4. in a third child, opens that warehouse read-only and runs the same
   queries on the loaded tables;
5. in a fourth child, reads the files with pandas and computes the three
   shipped segments with pandas;

and prints one table: best-of-``--rounds`` seconds per segment, the
profiles selected (pandas must select the same number), each child's peak
resident memory (``VmHWM`` from ``/proc/self/status``), and the
DuckDB/pandas time ratios. Every DuckDB connection runs with
``--threads`` threads and a ``--memory-limit`` buffer pool
(``configure``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
LIBRARY = ROOT / "segments" / "library"
DIABETES_CODES = ("44054006", "15777000")
SNOMED = "http://snomed.info/sct"

# Condition codes drawn for profiles; the first two are the diabetes
# segment's. Weights are per mille of condition entries.
CONDITION_CODES = [
    ("44054006", "Diabetes mellitus type 2", 60),
    ("15777000", "Prediabetes", 90),
    ("59621000", "Essential hypertension", 200),
    ("195662009", "Acute viral pharyngitis", 250),
    ("40055000", "Chronic sinusitis", 200),
    ("10509002", "Acute bronchitis", 200),
]


def main() -> int:
    args = _arguments()
    if args.phase:
        result = PHASES[args.phase](args)
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return 0

    OUT.mkdir(parents=True, exist_ok=True)
    generated = _child(args, "generate")
    load_before = os.getloadavg()[0]
    parquet = _child(args, "duckdb-parquet")
    built = _child(args, "load")
    loaded = _child(args, "duckdb-loaded")
    pandas = _child(args, "pandas")
    report = {
        "machine": (
            f"{platform.node()}, {_cores()} cores, "
            f"Python {platform.python_version()}, DuckDB {_version('duckdb')}, "
            f"pandas {_version('pandas')}"
        ),
        "date": date.today().isoformat(),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "threads": args.threads,
        "memory_limit": args.memory_limit,
        "profiles": args.profiles,
        "events": generated["events"],
        "generate": generated,
        "duckdb_parquet": parquet,
        "load": built,
        "duckdb_loaded": loaded,
        "pandas": pandas,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--big", action="store_true", help="10 million profiles")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--as-of", default="2024-06-15", help="run date")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--memory-limit", default="2GB", help="DuckDB buffer pool (memory_limit)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--reuse", action="store_true", help="keep Parquet files of the same size"
    )
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.big:
        args.profiles = 10_000_000
    return args


def _child(args: argparse.Namespace, phase: str) -> dict[str, Any]:
    """Run one phase in a fresh process, so its peak memory is its own."""
    command = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--profiles",
        str(args.profiles),
        "--events",
        str(args.events),
        "--as-of",
        args.as_of,
        "--rounds",
        str(args.rounds),
        "--threads",
        str(args.threads),
        "--memory-limit",
        args.memory_limit,
        *(["--reuse"] if args.reuse else []),
    ]
    print(f"running {phase} ...", file=sys.stderr, flush=True)
    output = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _cores() -> int:
    return os.cpu_count() or 0


def _version(module: str) -> str:
    from importlib.metadata import version

    return version(module)


def configure(conn: Any, args: argparse.Namespace) -> None:
    """Apply the settings every benchmark connection shares.

    ``threads`` matches the cores; ``memory_limit`` caps DuckDB's buffer
    pool, beyond which it spills to a temporary folder under ``bench/out``
    instead of growing; insertion order is not kept, which lets loads and
    aggregates stream instead of buffering whole tables.
    """
    conn.execute(f"SET threads = {int(args.threads)}")
    if not re.fullmatch(r"[0-9]+(MB|GB)", args.memory_limit):
        raise SystemExit(f"--memory-limit {args.memory_limit!r}: write it as 2GB or 1500MB")
    conn.execute(f"SET memory_limit = '{args.memory_limit}'")
    conn.execute(f"SET temp_directory = '{OUT / 'spill'}'")
    conn.execute("SET preserve_insertion_order = false")
    conn.execute("SET TimeZone = 'UTC'")


def _paths(args: argparse.Namespace) -> tuple[Path, Path]:
    tag = _tag(args)
    return OUT / f"profiles_{tag}.parquet", OUT / f"events_{tag}.parquet"


def _tag(args: argparse.Namespace) -> str:
    return f"{args.profiles}p_{args.events}e"


def _warehouse(args: argparse.Namespace) -> Path:
    return OUT / f"warehouse_{_tag(args)}.duckdb"


def _best(rounds: int, work: Any) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(rounds):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return round(best, 3), result


# --- phase: generate --------------------------------------------------------


def generate(args: argparse.Namespace) -> dict[str, Any]:
    import duckdb

    profiles_path, events_path = _paths(args)
    conn = duckdb.connect()
    configure(conn, args)
    if args.reuse and profiles_path.exists() and events_path.exists():
        return _file_sizes(conn, profiles_path, events_path, reused=True)
    started = time.perf_counter()
    conn.execute(
        f"COPY ({_profiles_sql(args.profiles)}) TO '{profiles_path}' "
        "(FORMAT parquet, ROW_GROUP_SIZE 122880)"
    )
    profile_seconds = time.perf_counter() - started
    episodes = int(args.events / 1.45)
    conn.execute(
        f"COPY ({_events_sql(args.profiles, episodes, args.as_of)}) TO '{events_path}' "
        "(FORMAT parquet, ROW_GROUP_SIZE 122880)"
    )
    return {
        "profiles_seconds": round(profile_seconds, 2),
        "events_seconds": round(time.perf_counter() - started - profile_seconds, 2),
        **_file_sizes(conn, profiles_path, events_path, reused=False),
    }


def _file_sizes(
    conn: Any, profiles_path: Path, events_path: Path, *, reused: bool
) -> dict[str, Any]:
    events = conn.execute(f"SELECT count(*) FROM '{events_path}'").fetchall()[0][0]
    return {
        "reused": reused,
        "events": events,
        "profiles_mb": round(profiles_path.stat().st_size / 2**20, 1),
        "events_mb": round(events_path.stat().st_size / 2**20, 1),
    }


def _profiles_sql(count: int) -> str:
    bounds = [
        sum(weight for _code, _display, weight in CONDITION_CODES[: index + 1])
        for index in range(len(CONDITION_CODES))
    ]
    cases = " ".join(
        f"WHEN hash(i, 10 + n) % 1000 < {bounds[i]} "
        f"THEN {{'system': '{SNOMED}', 'code': '{code}', 'display': '{display}'}}"
        for i, (code, display, _w) in enumerate(CONDITION_CODES)
    )
    return f"""
WITH base AS (SELECT range AS i FROM range({count}))
SELECT
    'p' || lpad(i::VARCHAR, 9, '0') AS profile_id,
    'patient' || i || '@example.test' AS email,
    'First' || (i % 5000) AS first_name,
    'Last' || (i % 7919) AS last_name,
    DATE '1930-01-01' + CAST(hash(i, 1) % 33000 AS INTEGER) AS birth_date,
    CASE WHEN hash(i, 2) % 2 = 0 THEN 'F' ELSE 'M' END AS sex,
    lpad(CAST(68000 + hash(i, 3) % 999 AS VARCHAR), 5, '0') AS postal_code,
    ['NE', 'IA', 'KS', 'SD', 'MO'][1 + CAST(hash(i, 4) % 5 AS BIGINT)] AS state,
    'America/Chicago' AS timezone,
    'en' AS language,
    CASE WHEN hash(i, 5) % 100 = 0
         THEN TIMESTAMPTZ '2020-01-01 00:00:00+00'
              + to_days(CAST(hash(i, 6) % 1800 AS INTEGER))
    END AS deceased_at,
    hash(i, 7) % 10 < 7 AS consent_marketing,
    hash(i, 8) % 10 < 9 AS consent_contact,
    to_json({{'conditions': list_transform(
        range(CAST(hash(i, 9) % 4 AS BIGINT)),
        lambda n: CASE {cases} END)
    }}) AS traits
FROM base
"""


def _events_sql(profiles: int, episodes: int, as_of: str) -> str:
    return f"""
WITH episode AS (
    SELECT range AS j,
        'p' || lpad(CAST(hash(range, 20) % {profiles} AS VARCHAR), 9, '0')
            AS profile_id,
        hash(range, 21) % 100 AS kind,
        TIMESTAMPTZ '{as_of} 00:00:00+00' + INTERVAL 1 DAY
            - to_seconds(CAST(hash(range, 22) % (3 * 365 * 86400) AS BIGINT)) AS moment,
        hash(range, 23) % 100 AS outcome,
        hash(range, 24) % 100 AS fill
    FROM range({episodes})
),
rows AS (
    SELECT 'enc' || j AS event_id, profile_id, 'encounter' AS type,
        moment AS occurred_at,
        to_json({{'class': CASE WHEN outcome < 30 THEN 'wellness' ELSE 'ambulatory' END,
                  'code': '185349003', 'display': 'Encounter'}}) AS properties
    FROM episode WHERE kind < 50
    UNION ALL
    SELECT 'bk' || j, profile_id, 'appointment_booked', moment - to_days(14),
        to_json({{'appointment_id': 'a' || j, 'starts_at': moment}})
    FROM episode WHERE kind >= 50 AND kind < 80
    UNION ALL
    SELECT 'ap' || j, profile_id,
        CASE WHEN outcome < 80 THEN 'appointment_attended'
             WHEN outcome < 92 THEN 'appointment_no_show'
             ELSE 'appointment_cancelled' END,
        moment, to_json({{'appointment_id': 'a' || j}})
    FROM episode WHERE kind >= 50 AND kind < 80
    UNION ALL
    SELECT 'rw' || j, profile_id, 'prescription_written', moment,
        to_json({{'rx_id': 'rx' || j, 'code': '860975', 'display': 'Metformin'}})
    FROM episode WHERE kind >= 80
    UNION ALL
    SELECT 'rf' || j, profile_id, 'prescription_filled',
        moment + to_days(CAST(1 + fill % 10 AS INTEGER)),
        to_json({{'rx_id': 'rx' || j}})
    FROM episode WHERE kind >= 80 AND fill < 75
)
SELECT event_id, profile_id, type, occurred_at, CAST(properties AS JSON) AS properties
FROM rows
"""


# --- phases: DuckDB ---------------------------------------------------------


def _segments() -> list[tuple[str, str | None]]:
    from carepost.segments import SegmentLibrary

    library = SegmentLibrary(LIBRARY)
    runs: list[tuple[str, str | None]] = []
    for name in library.names():
        runs.append((name, None))
        runs.extend((name, stage) for stage in library.stages(name))
    return runs


def _time_segments(conn: Any, args: argparse.Namespace) -> dict[str, Any]:
    from carepost.segments import SegmentLibrary

    library = SegmentLibrary(LIBRARY)
    as_of = date.fromisoformat(args.as_of)
    results = {}
    for name, stage in _segments():
        seconds, ids = _best(
            args.rounds,
            lambda name=name, stage=stage: library.select(
                conn, name, as_of=as_of, stage=stage
            ),
        )
        key = name if stage is None else f"{name}/{stage}"
        results[key] = {"seconds": seconds, "selected": len(ids)}
    return results


def duckdb_parquet(args: argparse.Namespace) -> dict[str, Any]:
    import duckdb

    profiles_path, events_path = _paths(args)
    conn = duckdb.connect()
    configure(conn, args)
    conn.execute(
        f"CREATE VIEW profiles AS SELECT * FROM read_parquet('{profiles_path}')"
    )
    conn.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{events_path}')")
    return {"segments": _time_segments(conn, args)}


def load(args: argparse.Namespace) -> dict[str, Any]:
    """Build the warehouse file: canonical tables, keys and index included."""
    import duckdb
    from carepost.core.schema import create_tables

    profiles_path, events_path = _paths(args)
    warehouse = _warehouse(args)
    for stale in (warehouse, warehouse.with_suffix(".duckdb.wal")):
        stale.unlink(missing_ok=True)
    conn = duckdb.connect(str(warehouse))
    configure(conn, args)
    started = time.perf_counter()
    create_tables(conn)
    conn.execute(f"INSERT INTO profiles SELECT * FROM read_parquet('{profiles_path}')")
    conn.execute(f"INSERT INTO events SELECT * FROM read_parquet('{events_path}')")
    conn.execute("CHECKPOINT")
    conn.close()
    return {
        "load_seconds": round(time.perf_counter() - started, 2),
        "warehouse_mb": round(warehouse.stat().st_size / 2**20, 1),
    }


def duckdb_loaded(args: argparse.Namespace) -> dict[str, Any]:
    import duckdb

    conn = duckdb.connect(str(_warehouse(args)), read_only=True)
    configure(conn, args)
    return {"segments": _time_segments(conn, args)}


PHASES: dict[str, Any] = {
    "generate": generate,
    "duckdb-parquet": duckdb_parquet,
    "load": load,
    "duckdb-loaded": duckdb_loaded,
}


def _pandas_phase(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from segments_pandas import run_pandas

    profiles_path, events_path = _paths(args)
    return run_pandas(
        profiles_path, events_path, date.fromisoformat(args.as_of), args.rounds
    )


PHASES["pandas"] = _pandas_phase


# --- report ---------------------------------------------------------------------


def _print_report(report: dict[str, Any]) -> None:
    generated = report["generate"]
    print(
        f"{report['machine']}; {report['profiles']:,} profiles, "
        f"{report['events']:,} events"
    )
    if generated["reused"]:
        print(
            f"reused Parquet: profiles {generated['profiles_mb']} MB, "
            f"events {generated['events_mb']} MB"
        )
    else:
        print(
            f"generate: profiles {generated['profiles_seconds']} s "
            f"({generated['profiles_mb']} MB), events {generated['events_seconds']} s "
            f"({generated['events_mb']} MB)"
        )
    print(
        f"{report['date']}, load average {report['load_average']}, "
        f"threads {report['threads']}, memory_limit {report['memory_limit']}"
    )
    print(
        f"load into the warehouse file: {report['load']['load_seconds']} s "
        f"({report['load']['warehouse_mb']} MB)"
    )
    pandas = report["pandas"]
    print(f"pandas read: {pandas['read_seconds']} s")
    header = (
        "segment",
        "parquet s",
        "loaded s",
        "pandas s",
        "selected",
        "pandas/parquet",
        "pandas/loaded",
    )
    print(" | ".join(header))
    for key, parquet in report["duckdb_parquet"]["segments"].items():
        loaded = report["duckdb_loaded"]["segments"][key]
        reference = pandas["segments"].get(key)
        row = [key, f"{parquet['seconds']:.3f}", f"{loaded['seconds']:.3f}"]
        if reference is None:
            row += ["-", str(loaded["selected"]), "-", "-"]
        else:
            with_read = reference["seconds"] + pandas["read_seconds"]
            row += [
                f"{reference['seconds']:.3f}",
                f"{loaded['selected']} / pandas {reference['selected']}",
                f"{with_read / parquet['seconds']:.1f}",
                f"{reference['seconds'] / loaded['seconds']:.1f}",
            ]
        print(" | ".join(row))
    print(
        "peak RSS MB: "
        + ", ".join(
            f"{name} {report[key]['peak_rss_mb']}"
            for name, key in (
                ("generate", "generate"),
                ("parquet", "duckdb_parquet"),
                ("load", "load"),
                ("loaded", "duckdb_loaded"),
                ("pandas", "pandas"),
            )
        )
    )


if __name__ == "__main__":
    sys.exit(main())
