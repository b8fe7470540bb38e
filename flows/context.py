"""Per-recipient data for one batch, read from DuckDB and wrapped as PHI.

One query per batch loads the profile columns the send-time checks need
and the derived facts templates may declare (``age``,
``last_checkup_date``, ``missed_appointment_at``). Everything that came
from the profile is wrapped in ``PHI`` so it cannot reach a log by
accident; the template keeps only the fields it declares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import duckdb

from carepost.core.phi import PHI

_BATCH_QUERY = """
WITH batch AS (SELECT unnest($ids::VARCHAR[]) AS profile_id)
SELECT
    p.profile_id, p.email, p.first_name, p.last_name, p.birth_date,
    p.timezone, p.language, p.deceased_at,
    p.consent_marketing, p.consent_contact,
    CASE WHEN p.birth_date IS NULL THEN NULL
         ELSE datepart('year', age($as_of::TIMESTAMP, p.birth_date::TIMESTAMP))
    END AS age,
    (SELECT max(e.occurred_at) FROM events e
      WHERE e.profile_id = p.profile_id AND e.type = 'encounter'
        AND json_extract_string(e.properties, '$.class') = 'wellness'
        AND e.occurred_at < $cutoff) AS last_checkup_at,
    (SELECT max(e.occurred_at) FROM events e
      WHERE e.profile_id = p.profile_id AND e.type = 'appointment_no_show'
        AND e.occurred_at < $cutoff) AS missed_appointment_at
FROM batch JOIN profiles p USING (profile_id)
ORDER BY p.profile_id
"""


@dataclass(frozen=True)
class Recipient:
    """Send-time facts (plain) plus the template context (PHI-wrapped)."""

    profile_id: str
    address: PHI[str] | None
    deceased: bool
    consent_marketing: bool
    consent_contact: bool
    context: dict[str, PHI[Any]]


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _wrap(value: Any) -> PHI[Any] | None:
    return None if _missing(value) else PHI(value)


def load_recipients(conn: duckdb.DuckDBPyConnection, profile_ids: list[str],
                    as_of: date) -> list[Recipient]:
    """Load the batch's recipients; ids not in ``profiles`` are skipped."""
    cutoff = datetime.combine(as_of + timedelta(days=1), datetime.min.time())
    cursor = conn.cursor()
    try:
        rows = cursor.execute(
            _BATCH_QUERY, {"ids": profile_ids, "as_of": as_of, "cutoff": cutoff}
        ).fetchall()
        columns = [item[0] for item in cursor.description]
    finally:
        cursor.close()
    return [_recipient(dict(zip(columns, row))) for row in rows]


def _recipient(row: dict[str, Any]) -> Recipient:
    checkup = row["last_checkup_at"]
    context = {
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "timezone": row["timezone"] or None,
        "language": row["language"] or None,
        "age": row["age"],
        "last_checkup_date": checkup.date() if checkup is not None else None,
        "missed_appointment_at": row["missed_appointment_at"],
    }
    return Recipient(
        profile_id=row["profile_id"],
        address=_wrap(row["email"]),
        deceased=row["deceased_at"] is not None,
        consent_marketing=bool(row["consent_marketing"]),
        consent_contact=bool(row["consent_contact"]),
        context={key: PHI(value) for key, value in context.items()
                 if not _missing(value)},
    )
