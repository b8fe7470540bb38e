"""Fixtures for segment tests: a real DuckDB file and a folder of specs."""

from __future__ import annotations

import itertools
import json
import textwrap
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from carepost.core.schema import create_tables
from carepost.segments import SegmentLibrary

RUN_DATE = date(2024, 6, 15)


class SegmentWorld:
    """Hand-built profiles and events plus specs written to a temporary folder."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, folder: Path) -> None:
        self.conn = conn
        self.folder = folder
        self._event_ids = itertools.count(1)

    def profile(self, profile_id: str, **columns: Any) -> None:
        """Insert one profile; ``traits`` may be a dict and is stored as JSON."""
        columns.setdefault("consent_marketing", True)
        if isinstance(columns.get("traits"), dict | list):
            columns["traits"] = json.dumps(columns["traits"])
        names = ["profile_id", *columns]
        placeholders = ", ".join("?" for _ in names)
        self.conn.execute(
            f"INSERT INTO profiles ({', '.join(names)}) VALUES ({placeholders})",
            [profile_id, *columns.values()],
        )

    def event(
        self,
        profile_id: str,
        event_type: str,
        occurred_at: str | datetime,
        **properties: Any,
    ) -> None:
        """Insert one event; a text time is read as UTC."""
        self.conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, CAST(? AS TIMESTAMPTZ), ?)",
            [
                f"ev{next(self._event_ids)}",
                profile_id,
                event_type,
                f"{occurred_at}+00" if isinstance(occurred_at, str) else occurred_at,
                json.dumps(properties),
            ],
        )

    def write(self, name: str, text: str) -> Path:
        """Write one spec file, dedenting the text."""
        path = self.folder / f"{name}.yaml"
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    def library(self) -> SegmentLibrary:
        return SegmentLibrary(self.folder)

    def select(
        self,
        text: str,
        as_of: date = RUN_DATE,
        name: str = "probe",
        stage: str | None = None,
    ) -> list[str]:
        """Write ``text`` as segment ``name`` and return its profile ids."""
        self.write(name, text)
        return self.library().select(self.conn, name, as_of=as_of, stage=stage)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(tmp_path / "segments.duckdb"))
    create_tables(connection)
    yield connection
    connection.close()


@pytest.fixture
def world(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> SegmentWorld:
    folder = tmp_path / "specs"
    folder.mkdir()
    return SegmentWorld(conn, folder)
