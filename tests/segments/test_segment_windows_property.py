"""Property test: the SQL window matches a plain Python reading of it."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from carepost.core.schema import create_tables
from carepost.segments import SegmentLibrary
from hypothesis import given, settings
from hypothesis import strategies as st

RUN_DATE = date(2024, 3, 1)
RUN_END = datetime(2024, 3, 2, tzinfo=UTC)
UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[duckdb.DuckDBPyConnection, Path]]:
    folder = tmp_path_factory.mktemp("window_specs")
    conn = duckdb.connect(str(folder / "windows.duckdb"))
    create_tables(conn)
    conn.execute("INSERT INTO profiles (profile_id) VALUES ('p1')")
    yield conn, folder
    conn.close()


@settings(max_examples=60, deadline=None)
@given(
    amount=st.integers(min_value=1, max_value=400),
    unit=st.sampled_from(sorted(UNITS)),
    offset_seconds=st.integers(min_value=-3 * 86_400, max_value=500 * 86_400),
)
def test_within_matches_python(
    setup: tuple[duckdb.DuckDBPyConnection, Path],
    amount: int,
    unit: str,
    offset_seconds: int,
) -> None:
    conn, folder = setup
    occurred_at = RUN_END - timedelta(seconds=offset_seconds)
    conn.execute("DELETE FROM events")
    conn.execute(
        "INSERT INTO events VALUES ('e1', 'p1', 'portal_login', ?, '{}')",
        [occurred_at],
    )
    (folder / "window.yaml").write_text(
        textwrap.dedent(f"""
        kind: behaviour
        description: probe
        where: {{event: portal_login, within: {amount}{unit}}}
        """)
    )
    selected = SegmentLibrary(folder).select(conn, "window", as_of=RUN_DATE)

    expected = RUN_END - amount * UNITS[unit] <= occurred_at < RUN_END
    assert selected == (["p1"] if expected else [])
