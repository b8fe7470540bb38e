"""CSV and NDJSON exports saved as UTF-16: one error naming the file and encoding."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from carepost.connectors.files import SourceError, load_export
from carepost.connectors.files_sync import sync_files
from carepost.core.sources import FileSource

from .exports import HEADER, profile_line

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "data" / "sample" / "events.parquet"
ROWS = "\n".join([HEADER, profile_line("p1", "a@example.org")]) + "\n"


def _tables(conn: duckdb.DuckDBPyConnection) -> set[str]:
    return {name for (name,) in conn.execute("SHOW TABLES").fetchall()}


@pytest.mark.parametrize(("encoding", "found"), [
    ("utf-16", "byte 0xff at offset 0, a UTF-16 byte order mark"),
    ("utf-16-be", "byte 0x00 at offset 0, as in UTF-16 text"),
    ("utf-16-le", "byte 0x00 at offset 1, as in UTF-16 text"),
    ("utf-32", "byte 0xff at offset 0, a UTF-32 byte order mark"),
])
def test_utf16_csv_names_encoding(tmp_path: Path, encoding: str, found: str) -> None:
    path = tmp_path / "profiles.csv"
    path.write_bytes(ROWS.encode(encoding))
    conn = duckdb.connect()

    with pytest.raises(SourceError) as caught:
        load_export(conn, path, EVENTS)

    message = str(caught.value)
    assert message == (f"profiles.csv: not UTF-8 text ({found}); save it as UTF-8, or "
                       "as Latin-1 with encoding: latin-1 on the source in carepost.yaml")
    assert "a@example.org" not in message
    assert conn.execute("SELECT count(*) FROM profiles").fetchone() == (0,)


def test_utf16_ndjson_names_encoding(tmp_path: Path) -> None:
    path = tmp_path / "profiles.ndjson"
    path.write_bytes((json.dumps({"profile_id": "p1"}) + "\n").encode("utf-16"))

    with pytest.raises(SourceError, match=r"^profiles\.ndjson: not UTF-8 text \(byte 0xff"):
        load_export(duckdb.connect(), path, EVENTS)


def test_sync_names_declared_encoding(tmp_path: Path) -> None:
    (tmp_path / "profiles.csv").write_bytes(ROWS.encode("utf-16"))
    spec = FileSource(profiles="profiles.csv", encoding="latin-1")
    conn = duckdb.connect()

    with pytest.raises(SourceError, match=r"^profiles\.csv: not Latin-1 text \(byte 0xff "
                       r"at offset 0, a UTF-16 byte order mark\); save it as UTF-8"):
        sync_files(conn, "crm", spec, tmp_path)

    assert "_carepost_csv" not in _tables(conn)


def test_utf8_bom_csv_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "profiles.csv"
    path.write_bytes(ROWS.encode("utf-8-sig"))
    conn = duckdb.connect()

    summary = load_export(conn, path, EVENTS)

    assert summary.profiles == 1
