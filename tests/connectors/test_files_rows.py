"""Row-level rules of the file connector: encodings, quarantine, duplicates."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from carepost.connectors.files import SourceError, load_export
from carepost.core.schema import PROFILE_COLUMNS

from .exports import HEADER, event, profile_line, write_ndjson

INJECTION = "sam@example.org>\r\nRCPT TO:<leak@evil.example.test"


def quarantine_rows(conn, path: Path) -> dict[int, str]:
    rows = conn.execute(
        "SELECT source_row, reason FROM quarantine WHERE source_file = ? ORDER BY source_row",
        [str(path.resolve())],
    ).fetchall()
    return dict(rows)


def no_events(tmp_path: Path) -> Path:
    return write_ndjson(tmp_path / "events.ndjson", [])


def test_csv_with_bom_crlf_latin1_and_newlines(conn, tmp_path) -> None:
    lines = [
        HEADER,
        profile_line("p1", "ana@example.org"),
        profile_line("p2", "bo@example.org", first_name='"Two\r\nLines"'),
        profile_line("p3", "cy@example.org", first_name="Ren\u00e9e"),
        profile_line("p4", "di@example.org", first_name="Mar\u00eda O'Brien"),
    ]
    text = "\r\n".join(lines) + "\r\n"
    data = "\ufeff".encode() + text.encode("utf-8")
    # Row p3 is re-encoded as Latin-1, so its name is one invalid UTF-8 byte.
    data = data.replace("Ren\u00e9e".encode(), "Ren\u00e9e".encode("latin-1"))
    path = tmp_path / "profiles.csv"
    path.write_bytes(data)

    summary = load_export(conn, path, no_events(tmp_path))

    loaded = dict(conn.execute("SELECT profile_id, first_name FROM profiles").fetchall())
    emails = dict(conn.execute("SELECT profile_id, email FROM profiles").fetchall())
    assert summary.profiles == 2
    assert summary.quarantined == 2
    assert loaded == {"p1": "Ana", "p4": "Mar\u00eda O'Brien"}
    assert emails["p1"] == "ana@example.org"  # no CR left from the CRLF line end
    assert quarantine_rows(conn, path) == {
        2: "first_name: contains CR or LF",
        3: "first_name: not valid UTF-8 (for a Latin-1 file set encoding: latin-1 on the source)",
    }


def test_smtp_injection_address_is_quarantined(conn, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="carepost.connectors.files")
    path = tmp_path / "profiles.csv"
    quoted = '"' + INJECTION + '"'
    path.write_text(
        "\n".join([HEADER, profile_line("p1", quoted), profile_line("p2", "ok@example.org")]),
        encoding="utf-8",
    )

    summary = load_export(conn, path, no_events(tmp_path))

    reasons = quarantine_rows(conn, path)
    stored = conn.execute("SELECT * FROM quarantine").fetchall()
    assert summary.profiles == 1
    assert reasons == {1: "email: contains CR or LF"}
    for fragment in ("sam@", "RCPT", "leak", "evil"):
        assert fragment not in repr(stored)
        assert fragment not in caplog.text
    assert conn.execute("SELECT profile_id FROM profiles").fetchall() == [("p2",)]


@pytest.mark.parametrize(
    ("address", "stored"),
    [
        ("  Sam@Example.ORG \t", "Sam@example.org"),
        ("patient-1@example.test", "patient-1@example.test"),
        ("patient-1@EXAMPLE.TEST", "patient-1@example.test"),
        ("", None),
    ],
)
def test_valid_address_is_normalised(conn, tmp_path, address, stored) -> None:
    path = tmp_path / "profiles.csv"
    path.write_text("\n".join([HEADER, profile_line("p1", f'"{address}"')]), encoding="utf-8")

    summary = load_export(conn, path, no_events(tmp_path))

    assert summary.quarantined == 0
    assert conn.execute("SELECT email FROM profiles").fetchone()[0] == stored


@pytest.mark.parametrize(
    "address",
    [
        "leak@evil.example.test",
        "someone@localhost",
        "no-at-sign.example.org",
        "Sam <sam@example.org>",
        "a@b@example.org",
    ],
)
def test_invalid_address_is_quarantined(conn, tmp_path, address) -> None:
    path = tmp_path / "profiles.csv"
    path.write_text("\n".join([HEADER, profile_line("p1", f'"{address}"')]), encoding="utf-8")

    summary = load_export(conn, path, no_events(tmp_path))

    assert summary.profiles == 0
    assert quarantine_rows(conn, path) == {1: "email: invalid address"}


def test_missing_profile_id_is_quarantined(conn, tmp_path) -> None:
    path = tmp_path / "profiles.csv"
    path.write_text(
        "\n".join([HEADER, profile_line("", "a@example.org"), profile_line("p2")]),
        encoding="utf-8",
    )

    summary = load_export(conn, path, no_events(tmp_path))

    assert summary.profiles == 1
    assert quarantine_rows(conn, path) == {1: "profile_id: missing"}


def test_pandas_nan_first_name_is_null(conn, tmp_path) -> None:
    frame = pd.DataFrame({
        "profile_id": ["p1", "p2", "p3"],
        "email": ["a@example.org", None, "c@example.org"],
        "first_name": [float("nan"), "", "Nan"],
    })
    csv_path = tmp_path / "profiles.csv"
    frame.to_csv(csv_path, index=False)

    load_export(conn, csv_path, no_events(tmp_path))

    names = dict(conn.execute("SELECT profile_id, first_name FROM profiles").fetchall())
    assert names == {"p1": None, "p2": None, "p3": "Nan"}


def test_parquet_all_nan_column_is_null(conn, tmp_path) -> None:
    # A column with no value at all is float64 in pandas, so Parquet stores NaN.
    frame = pd.DataFrame({"profile_id": ["00087", "00088"], "first_name": [float("nan")] * 2})
    path = tmp_path / "profiles.parquet"
    frame.to_parquet(path)

    load_export(conn, path, no_events(tmp_path))

    rows = conn.execute("SELECT profile_id, first_name FROM profiles ORDER BY 1").fetchall()
    assert rows == [("00087", None), ("00088", None)]


def test_changed_profile_is_updated(conn, tmp_path) -> None:
    path = tmp_path / "profiles.csv"
    path.write_text("\n".join([HEADER, profile_line("p1", "a@example.org")]), encoding="utf-8")
    load_export(conn, path, no_events(tmp_path))
    path.write_text(
        "\n".join([HEADER, profile_line("p1", "b@example.org"), profile_line("p1", "c@example.org")]),
        encoding="utf-8",
    )

    summary = load_export(conn, path, no_events(tmp_path))

    assert summary.profiles == 1
    assert conn.execute("SELECT email FROM profiles").fetchall() == [("c@example.org",)]


def test_duplicate_event_ids_are_dropped(conn, tmp_path) -> None:
    profiles = tmp_path / "profiles.csv"
    profiles.write_text("\n".join([HEADER, profile_line("p1")]), encoding="utf-8")
    events = write_ndjson(
        tmp_path / "events.ndjson",
        [
            event("e1", occurred_at="2024-01-01T00:00:00Z"),
            event("e2"),
            event("e1", occurred_at="2024-03-03T00:00:00Z"),
        ],
    )

    summary = load_export(conn, profiles, events)

    rows = conn.execute("SELECT event_id, occurred_at FROM events ORDER BY 1").fetchall()
    assert summary.events == 2
    assert summary.duplicate_events_dropped == 1
    assert [row[0] for row in rows] == ["e1", "e2"]
    assert rows[0][1] == datetime(2024, 1, 1, tzinfo=timezone.utc)


def test_bad_events_are_quarantined(conn, tmp_path) -> None:
    profiles = tmp_path / "profiles.csv"
    profiles.write_text("\n".join([HEADER, profile_line("p1")]), encoding="utf-8")
    events = tmp_path / "events.ndjson"
    lines = [
        '{"event_id": "e1", "profile_id": "p1", "type": "encounter", '
        '"occurred_at": "2024-01-02T03:04:05-06:00"}',
        '{"event_id": "e2", "profile_id": "p1", "type": "teleport", '
        '"occurred_at": "2024-01-02T03:04:05Z"}',
        "",
        '{"event_id": "e3", "profile_id": "p1", "type": "encounter", "occurred_at": "soon"}',
        "not json",
        '{"event_id": "e4", "type": "encounter", "occurred_at": "2024-01-02"}',
        '{"event_id": "e5", "profile_id": "p1", "type": "encounter", '
        '"occurred_at": "2024-01-02 03:04:05"}',
    ]
    events.write_text("\n".join(lines) + "\n", encoding="utf-8")

    summary = load_export(conn, profiles, events)

    times = dict(conn.execute("SELECT event_id, occurred_at FROM events").fetchall())
    assert summary.events == 2
    assert quarantine_rows(conn, events) == {
        2: "type: unknown event type",
        4: "occurred_at: unparsable time",
        5: "row: invalid JSON",
        6: "profile_id: missing",
    }
    assert times["e1"] == datetime(2024, 1, 2, 9, 4, 5, tzinfo=timezone.utc)
    assert times["e5"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_reload_replaces_quarantine_rows(conn, tmp_path) -> None:
    path = tmp_path / "profiles.csv"
    path.write_text("\n".join([HEADER, profile_line("", "a@example.org")]), encoding="utf-8")
    load_export(conn, path, no_events(tmp_path))
    load_export(conn, path, no_events(tmp_path))

    assert conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 1
    path.write_text("\n".join([HEADER, profile_line("p1", "a@example.org")]), encoding="utf-8")
    load_export(conn, path, no_events(tmp_path))

    assert quarantine_rows(conn, path) == {}


def test_missing_column_rolls_back(conn, tmp_path) -> None:
    profiles = tmp_path / "profiles.csv"
    profiles.write_text("\n".join([HEADER, profile_line("p1")]), encoding="utf-8")
    events = tmp_path / "events.csv"
    events.write_text("event_id,profile_id,type\ne1,p1,encounter\n", encoding="utf-8")

    with pytest.raises(SourceError, match="events.csv has no column occurred_at"):
        load_export(conn, profiles, events)

    assert conn.execute("SELECT count(*) FROM profiles").fetchone()[0] == 0


def test_unsupported_suffix_is_rejected(conn, tmp_path) -> None:
    path = tmp_path / "profiles.xlsx"
    path.write_bytes(b"PK")

    with pytest.raises(SourceError, match="unsupported export file suffix"):
        load_export(conn, path, no_events(tmp_path))


def test_profile_columns_all_typed(conn, tmp_path) -> None:
    path = tmp_path / "profiles.csv"
    line = (
        "00087,a@example.org,Ana,Test,1980-01-02,female,06801,Nebraska,America/Chicago,"
        'es,2023-05-01T10:00:00-05:00,false,true,"{""conditions"": []}"'
    )
    path.write_text("\n".join([HEADER, line]), encoding="utf-8")

    load_export(conn, path, no_events(tmp_path))

    row = dict(zip(PROFILE_COLUMNS, conn.execute("SELECT * FROM profiles").fetchone(), strict=True))
    assert row["profile_id"] == "00087"
    assert row["postal_code"] == "06801"
    assert row["deceased_at"] == datetime(2023, 5, 1, 15, tzinfo=timezone.utc)
    assert row["consent_marketing"] is False
    assert row["consent_contact"] is True


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("consent_marketing", "maybe", "consent_marketing: not true or false"),
        ("deceased_at", "last spring", "deceased_at: unparsable time"),
        ("timezone", "Nebraska/Omaha", "timezone: unknown IANA time zone"),
        ("traits", "[1, 2]", "traits: not a JSON object"),
    ],
)
def test_unusable_profile_value_is_quarantined(conn, tmp_path, column, value, reason) -> None:
    path = tmp_path / "profiles.csv"
    frame = pd.DataFrame([{"profile_id": "p1", column: value}])
    frame.to_csv(path, index=False)

    summary = load_export(conn, path, no_events(tmp_path))

    assert summary.profiles == 0
    assert quarantine_rows(conn, path) == {1: reason}


def test_unreadable_parquet_names_only_file(conn, tmp_path) -> None:
    path = tmp_path / "profiles.parquet"
    path.write_bytes(b"PAR1 Ana Test ana@example.org not really parquet")

    with pytest.raises(SourceError) as raised:
        load_export(conn, path, no_events(tmp_path))

    assert "profiles.parquet" in str(raised.value)
    assert "Ana" not in str(raised.value)
    assert raised.value.__cause__ is None


def test_ndjson_profiles_with_object_traits(conn, tmp_path) -> None:
    path = write_ndjson(
        tmp_path / "profiles.ndjson",
        [
            {"profile_id": 87, "email": "a@example.org", "traits": {"conditions": []}},
            {"profile_id": "p2", "first_name": "Line\nBreak"},
        ],
    )

    summary = load_export(conn, path, no_events(tmp_path))

    rows = conn.execute("SELECT profile_id, traits FROM profiles").fetchall()
    assert summary.profiles == 1
    assert rows == [("87", '{"conditions":[]}')]
    assert quarantine_rows(conn, path) == {2: "first_name: contains CR or LF"}
