"""The shipped demo export loads completely and reloads without changes.

Expected counts are computed here from the CSV and Parquet files with the
csv module and pyarrow, independently of the loader.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from carepost.connectors.files import LoadSummary, load_export

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
RAW = REPO / "data" / "raw"
PROFILES = SAMPLE / "profiles.csv"
EVENTS = SAMPLE / "events.parquet"


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def raw_patients() -> list[dict[str, str]]:
    return read_csv_rows(RAW / "synthea" / "patients.csv")


def test_shipped_export_counts(conn, raw_patients) -> None:
    profile_rows = read_csv_rows(PROFILES)
    event_ids = pq.read_table(EVENTS, columns=["event_id"]).column("event_id").to_pylist()

    summary = load_export(conn, PROFILES, EVENTS)

    assert summary == LoadSummary(
        profiles=len({row["profile_id"] for row in profile_rows}),
        events=len(set(event_ids)),
        duplicate_events_dropped=len(event_ids) - len(set(event_ids)),
        quarantined=0,
    )
    assert conn.execute("SELECT count(*) FROM profiles").fetchone()[0] == len(raw_patients)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == len(event_ids)
    assert conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0


def test_shipped_export_matches_raw_data(conn, raw_patients) -> None:
    load_export(conn, PROFILES, EVENTS)
    by_type = dict(conn.execute("SELECT type, count(*) FROM events GROUP BY type").fetchall())
    medications = read_csv_rows(RAW / "synthea" / "medications.csv")
    appointments = read_csv_rows(RAW / "medscheduler" / "appointments.csv")
    deceased = sum(1 for row in raw_patients if row["DEATHDATE"])

    assert by_type["encounter"] == len(read_csv_rows(RAW / "synthea" / "encounters.csv"))
    assert by_type["condition_diagnosed"] == len(read_csv_rows(RAW / "synthea" / "conditions.csv"))
    assert by_type["prescription_written"] == len(medications)
    assert by_type["prescription_filled"] == sum(int(row["DISPENSES"]) for row in medications)
    statuses = Counter(row["status"] for row in appointments)
    assert 0 < by_type["appointment_no_show"] <= statuses["did not attend"]
    assert by_type["appointment_booked"] <= len(appointments)
    loaded_deceased = conn.execute(
        "SELECT count(*) FROM profiles WHERE deceased_at IS NOT NULL"
    ).fetchone()[0]
    assert loaded_deceased == deceased


def _plain(name: str) -> str:
    return re.sub(r"\d+$", "", name)


def test_shipped_names_and_types_survive(conn, raw_patients) -> None:
    load_export(conn, PROFILES, EVENTS)
    # The build script drops Synthea's number suffixes ("Treva754" -> "Treva").
    raw_names = {(row["Id"], _plain(row["FIRST"]), _plain(row["LAST"]))
                 for row in raw_patients}
    loaded_names = set(
        conn.execute("SELECT profile_id, first_name, last_name FROM profiles").fetchall()
    )
    column_types = dict(
        conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'events'"
        ).fetchall()
    )

    assert loaded_names == raw_names
    assert column_types["occurred_at"] == "TIMESTAMP WITH TIME ZONE"
    assert column_types["event_id"] == "VARCHAR"


def test_reload_is_idempotent(conn) -> None:
    first = load_export(conn, PROFILES, EVENTS)
    profiles_before = conn.execute("SELECT * FROM profiles ORDER BY profile_id").fetchall()
    events_before = conn.execute("SELECT * FROM events ORDER BY event_id").fetchall()

    second = load_export(conn, PROFILES, EVENTS)

    assert second.profiles == first.profiles
    assert second.events == 0
    assert second.duplicate_events_dropped == first.events
    assert conn.execute("SELECT * FROM profiles ORDER BY profile_id").fetchall() == profiles_before
    assert conn.execute("SELECT * FROM events ORDER BY event_id").fetchall() == events_before


def test_load_logs_no_names_or_addresses(conn, raw_patients, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="carepost.connectors.files")

    load_export(conn, PROFILES, EVENTS)

    text = caplog.text
    assert "loaded export" in text
    assert "@" not in text
    for row in raw_patients:
        assert _plain(row["FIRST"]) not in text
        assert _plain(row["LAST"]) not in text
