"""Syncing a configured files source: mapping, encodings, zones, re-runs."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from carepost.connectors.files import SourceError
from carepost.connectors.files_mapping import MappingError
from carepost.connectors.files_sync import sync_files
from carepost.connectors.sync import get_watermark
from carepost.core.sources import FileSource

from .exports import HEADER, event, profile_line, write_ndjson

REPO = Path(__file__).resolve().parents[2]
SYNTHEA = REPO / "data" / "raw" / "synthea"
SYNTHEA_MAPPING = REPO / "connectors" / "mappings" / "synthea.yaml"


def write_profiles(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return path


def touch_later(path: Path) -> None:
    """Move the modification time forward, as a new export would."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_synthea_tables_load_through_mapping(conn) -> None:
    spec = FileSource(
        profiles=str(SYNTHEA / "patients.csv"),
        events=str(SYNTHEA / "encounters.csv"),
        mapping=str(SYNTHEA_MAPPING),
    )
    with (SYNTHEA / "patients.csv").open(encoding="utf-8", newline="") as handle:
        patients = list(csv.DictReader(handle))
    with (SYNTHEA / "encounters.csv").open(encoding="utf-8", newline="") as handle:
        classes = Counter(row["ENCOUNTERCLASS"] for row in csv.DictReader(handle))

    summary = sync_files(conn, "synthea", spec, REPO)

    assert summary.profiles == len(patients)
    assert summary.events == sum(classes.values())
    assert summary.quarantined == 0
    stored = dict(conn.execute("SELECT profile_id, sex FROM profiles").fetchall())
    expected = {"F": "female", "M": "male"}
    assert stored == {row["Id"]: expected[row["GENDER"]] for row in patients}
    deceased = conn.execute("SELECT count(*) FROM profiles WHERE deceased_at IS NOT NULL")
    assert deceased.fetchone()[0] == sum(1 for row in patients if row["DEATHDATE"])
    by_class = conn.execute(
        "SELECT properties ->> '$.class', count(*) FROM events GROUP BY 1"
    ).fetchall()
    assert dict(by_class) == dict(classes)


def test_mapping_naming_absent_column_fails(conn, tmp_path) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("profiles:\n  profile_id: PatientKey\n", encoding="utf-8")
    spec = FileSource(profiles=str(SYNTHEA / "patients.csv"), mapping=str(mapping))

    with pytest.raises(MappingError, match="no column 'PatientKey'"):
        sync_files(conn, "synthea", spec, REPO)


def test_mapping_with_unknown_canonical_name_fails(conn, tmp_path) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("profiles:\n  given_name: FIRST\n", encoding="utf-8")
    spec = FileSource(profiles=str(SYNTHEA / "patients.csv"), mapping=str(mapping))

    with pytest.raises(MappingError, match="given_name is not a canonical column"):
        sync_files(conn, "synthea", spec, REPO)


def test_declared_latin1_csv_is_read(conn, tmp_path) -> None:
    path = tmp_path / "profiles.csv"
    text = "\n".join([HEADER, profile_line("p1", first_name="Ren\u00e9e")]) + "\n"
    path.write_bytes(text.encode("latin-1"))

    summary = sync_files(conn, "crm", FileSource(profiles=str(path), encoding="latin-1"), tmp_path)

    assert summary.quarantined == 0
    assert conn.execute("SELECT first_name FROM profiles").fetchall() == [("Ren\u00e9e",)]


def test_mixed_line_ends_bom_and_quoted_newline(conn, tmp_path) -> None:
    traits = '"{""a"": 1,\r\n""b"": 2}"'
    line = profile_line("p2", "bo@example.org").rsplit(",", 1)[0] + "," + traits
    data = (
        "\ufeff" + HEADER + "\r\n" + profile_line("p1", "ana@example.org") + "\n"
        + line + "\r\n" + profile_line("p3", "cy@example.org") + "\n"
    ).encode("utf-8")
    path = tmp_path / "profiles.csv"
    path.write_bytes(data)

    summary = sync_files(conn, "crm", FileSource(profiles=str(path)), tmp_path)

    assert summary.quarantined == 0
    assert summary.profiles == 3
    rows = dict(conn.execute("SELECT profile_id, email FROM profiles").fetchall())
    assert rows == {"p1": "ana@example.org", "p2": "bo@example.org", "p3": "cy@example.org"}
    traits = conn.execute("SELECT traits FROM profiles WHERE profile_id = 'p2'").fetchone()
    assert json.loads(traits[0]) == {"a": 1, "b": 2}


def test_naive_times_take_declared_zone(conn, tmp_path) -> None:
    events = write_ndjson(tmp_path / "events.ndjson", [
        event("naive", occurred_at="2024-01-15 09:30:00"),
        event("zoned", occurred_at="2024-01-15T09:30:00+01:00"),
        event("summer", occurred_at="2024-07-15 09:30:00"),
    ])
    spec = FileSource(events=str(events), timezone="America/Chicago")

    sync_files(conn, "ehr", spec, tmp_path)

    stored = dict(conn.execute("SELECT event_id, occurred_at FROM events").fetchall())
    assert stored["naive"] == datetime(2024, 1, 15, 15, 30, tzinfo=timezone.utc)
    assert stored["zoned"] == datetime(2024, 1, 15, 8, 30, tzinfo=timezone.utc)
    assert stored["summer"] == datetime(2024, 7, 15, 14, 30, tzinfo=timezone.utc)
    zone = conn.execute("SELECT current_setting('TimeZone')").fetchone()[0]
    assert zone == "UTC"


def test_rerun_loads_only_changed_files(conn, tmp_path) -> None:
    first = write_ndjson(tmp_path / "events-1.ndjson", [event("e1"), event("e2")])
    second = write_ndjson(tmp_path / "events-2.ndjson", [event("e3")])
    spec = FileSource(events=str(tmp_path / "events-*.ndjson"))
    initial = sync_files(conn, "app", spec, tmp_path)

    write_ndjson(second, [event("e3"), event("e4")])
    touch_later(second)
    rerun = sync_files(conn, "app", spec, tmp_path)
    unchanged = sync_files(conn, "app", spec, tmp_path)

    assert initial.events == 3
    assert rerun.skipped_files == 1
    assert rerun.events == 1
    assert rerun.duplicate_events_dropped == 1
    assert unchanged.skipped_files == 2
    assert unchanged.events == 0
    assert first.exists()
    stored = json.loads(get_watermark(conn, "app"))["files"]
    assert sorted(Path(name).name for name in stored) == ["events-1.ndjson", "events-2.ndjson"]


def test_since_reloads_files_modified_after(conn, tmp_path) -> None:
    path = write_ndjson(tmp_path / "events.ndjson", [event("e1")])
    spec = FileSource(events=str(path))
    sync_files(conn, "app", spec, tmp_path)

    forced = sync_files(conn, "app", spec, tmp_path, since=datetime(2000, 1, 1, tzinfo=timezone.utc))
    later = sync_files(conn, "app", spec, tmp_path, since=datetime(2999, 1, 1, tzinfo=timezone.utc))

    assert forced.skipped_files == 0
    assert forced.duplicate_events_dropped == 1
    assert later.skipped_files == 1


def test_full_export_deletes_missing_rows(conn, tmp_path) -> None:
    profiles = write_profiles(tmp_path / "profiles.csv", [
        profile_line("p1", "a@example.org"), profile_line("p2", "b@example.org"),
    ])
    events = write_ndjson(tmp_path / "events.ndjson", [event("e1", "p1"), event("e2", "p2")])
    spec = FileSource(profiles=str(profiles), events=str(events), full=True)
    sync_files(conn, "crm", spec, tmp_path)

    write_profiles(profiles, [profile_line("p1", "a@example.org")])
    write_ndjson(events, [event("e1", "p1")])
    touch_later(profiles)
    touch_later(events)
    summary = sync_files(conn, "crm", spec, tmp_path)

    assert summary.deleted_profiles == 1
    assert summary.deleted_events == 1
    assert conn.execute("SELECT profile_id FROM profiles").fetchall() == [("p1",)]
    assert conn.execute("SELECT event_id FROM events").fetchall() == [("e1",)]


def test_full_export_keeps_rows_of_other_sources(conn, tmp_path) -> None:
    other = write_profiles(tmp_path / "other.csv", [profile_line("x1")])
    sync_files(conn, "other", FileSource(profiles=str(other)), tmp_path)
    profiles = write_profiles(tmp_path / "profiles.csv", [profile_line("p1")])
    spec = FileSource(profiles=str(profiles), full=True)
    sync_files(conn, "crm", spec, tmp_path)

    write_profiles(profiles, [profile_line("p2")])
    touch_later(profiles)
    summary = sync_files(conn, "crm", spec, tmp_path)

    assert summary.deleted_profiles == 1
    ids = [row[0] for row in conn.execute("SELECT profile_id FROM profiles ORDER BY 1").fetchall()]
    assert ids == ["p2", "x1"]


def test_duplicate_ids_merge_and_shared_addresses_report(conn, tmp_path) -> None:
    path = tmp_path / "profiles.ndjson"
    write_ndjson(path, [
        {"profile_id": "p1", "email": "  Ana@EXAMPLE.org ", "traits": {"a": 1}},
        {"profile_id": "p1", "first_name": "Ana", "traits": {"b": 2}},
        {"profile_id": "p2", "email": "ana@example.org"},
        {"profile_id": "p3", "email": "cy@example.org"},
    ])

    summary = sync_files(conn, "crm", FileSource(profiles=str(path)), tmp_path)

    row = conn.execute(
        "SELECT email, first_name, traits FROM profiles WHERE profile_id = 'p1'"
    ).fetchone()
    assert summary.profiles == 3
    assert summary.merged_profiles == 1
    assert row[0] == "Ana@example.org"
    assert row[1] == "Ana"
    assert json.loads(row[2]) == {"a": 1, "b": 2}
    assert summary.shared_address_count == 0  # the local part keeps its case
    write_ndjson(path, [{"profile_id": "p1", "email": "ana@example.org"}])
    touch_later(path)
    again = sync_files(conn, "crm", FileSource(profiles=str(path)), tmp_path)
    assert again.shared_address_count == 1
    assert again.shared_address_groups == [["p1", "p2"]]
    assert conn.execute("SELECT count(*) FROM profiles").fetchone()[0] == 3


def test_failed_file_loads_nothing_of_the_sync(conn, tmp_path) -> None:
    good = write_ndjson(tmp_path / "events-1.ndjson", [event("e1")])
    bad = tmp_path / "events-2.csv"
    bad.write_text("event_id,type\ne2,encounter\n", encoding="utf-8")
    spec = FileSource(events=str(tmp_path / "events-*"))

    with pytest.raises(SourceError, match="events-2.csv has no column profile_id"):
        sync_files(conn, "app", spec, tmp_path)

    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    assert get_watermark(conn, "app") is None
    bad.unlink()
    assert sync_files(conn, "app", spec, tmp_path).events == 1
    assert good.exists()


def test_no_matching_file_is_an_error(conn, tmp_path) -> None:
    spec = FileSource(events=str(tmp_path / "missing-*.ndjson"))

    with pytest.raises(SourceError, match="no export file matches"):
        sync_files(conn, "app", spec, tmp_path)


def test_quarantine_reasons_are_counted(conn, tmp_path) -> None:
    path = write_ndjson(tmp_path / "events.ndjson", [
        event("e1"), event("e2", type="page_viewed"), event("e3", occurred_at="soon"),
    ])

    summary = sync_files(conn, "app", FileSource(events=str(path)), tmp_path)

    assert summary.quarantined == 2
    assert summary.quarantine_reasons == {
        "occurred_at: unparsable time": 1,
        "type: unknown event type": 1,
    }
