"""What a segment selects on a run date: counts, breakdowns and a sample.

The breakdowns (lifecycle stage, state, age band) are counts only. The
sample shows up to ``SAMPLE_SIZE`` members by profile id; their name,
email address and postal code are read from the database only when the
caller asks for them (``reveal_phi=True``), and are masked otherwise. The
caller that reveals them must record that in the audit log first: the
``carepost segments preview --show-phi`` command does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from itertools import pairwise
from typing import Any

import duckdb
from carepost.core.phi import MASK
from carepost.core.states import SegmentKind
from carepost.segments.compiler import AGE_SQL
from carepost.segments.library import SegmentLibrary

SAMPLE_SIZE = 5
# Lower bounds of the age bands, in years; the last band is open-ended.
AGE_BAND_STARTS = (0, 18, 35, 50, 65, 80)
UNKNOWN = "(unknown)"
PHI_COLUMNS = ("first_name", "last_name", "email", "postal_code")


@dataclass(frozen=True)
class SegmentPreview:
    """Counts and a sample of one segment (or stage) on one run date."""

    segment: str
    kind: str
    as_of: str
    stage: str | None
    count: int
    by_stage: dict[str, int] | None
    by_state: dict[str, int]
    by_age_band: dict[str, int]
    sample: list[dict[str, Any]] = field(default_factory=list)
    phi_shown: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def age_band_sql() -> str:
    """Return SQL that names the age band of ``p`` on the run date."""
    starts = AGE_BAND_STARTS
    branches = [
        f"WHEN {AGE_SQL} < {upper} THEN '{lower}-{upper - 1}'"
        for lower, upper in pairwise(starts)
    ]
    return (
        f"CASE WHEN p.birth_date IS NULL THEN '{UNKNOWN}' "
        + " ".join(branches)
        + f" ELSE '{starts[-1]}+' END"
    )


def age_band_names() -> list[str]:
    """Return the band names in order, as ``age_band_sql`` spells them."""
    starts = AGE_BAND_STARTS
    names = [f"{low}-{high - 1}" for low, high in pairwise(starts)]
    return [*names, f"{starts[-1]}+", UNKNOWN]


def preview_segment(
    conn: duckdb.DuckDBPyConnection,
    library: SegmentLibrary,
    name: str,
    *,
    as_of: date,
    stage: str | None = None,
    reveal_phi: bool = False,
) -> SegmentPreview:
    """Count a segment's members by stage, state and age band; take a sample."""
    spec = library.get(name)
    compiled = library.compile(name, stage)
    params = compiled.bind(as_of)
    plain = _members_sql(compiled.sql, "")
    by_state = _counts(conn, plain, params, "coalesce(state, $unknown)")
    by_band = _counts(conn, plain, params, "age_band")
    count = sum(by_state.values())

    by_stage = None
    if spec.kind is SegmentKind.LIFECYCLE:
        by_stage = (
            library.stage_counts(conn, name, as_of=as_of)
            if stage is None
            else {stage: count}
        )

    phi = "".join(f", p.{column}" for column in PHI_COLUMNS) if reveal_phi else ""
    sample = _sample(conn, _members_sql(compiled.sql, phi), params)
    return SegmentPreview(
        segment=name,
        kind=str(spec.kind),
        as_of=as_of.isoformat(),
        stage=stage,
        count=count,
        by_stage=by_stage,
        by_state=by_state,
        by_age_band={
            band: by_band[band] for band in age_band_names() if band in by_band
        },
        sample=sample,
        phi_shown=reveal_phi,
    )


def _members_sql(segment_sql: str, extra_columns: str) -> str:
    return (
        f"WITH segment AS (\n{segment_sql}\n)\n"
        f"SELECT s.*, p.state, {age_band_sql()} AS age_band{extra_columns}\n"
        "FROM segment AS s JOIN profiles AS p ON p.profile_id = s.profile_id"
    )


def _counts(
    conn: duckdb.DuckDBPyConnection, members: str, params: dict[str, Any], key: str
) -> dict[str, int]:
    sql = (
        f"SELECT {key} AS key, count(*) FROM ({members}) AS m "
        "GROUP BY key ORDER BY count(*) DESC, key"
    )
    bound = {**params, "unknown": UNKNOWN} if "$unknown" in key else params
    return {str(key): int(total) for key, total in conn.execute(sql, bound).fetchall()}


def _sample(
    conn: duckdb.DuckDBPyConnection, members: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Take a stable sample: the members with the smallest md5 of their id."""
    cursor = conn.cursor()
    try:
        cursor.execute(
            f"SELECT * FROM ({members}) AS m "
            f"ORDER BY md5(m.profile_id) LIMIT {SAMPLE_SIZE}",
            params,
        )
        columns = [item[0] for item in cursor.description]
        rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    finally:
        cursor.close()
    for row in rows:
        for column in PHI_COLUMNS:
            row.setdefault(column, MASK)
    return rows
