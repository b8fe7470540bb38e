"""Helpers that write small CDP exports for the file connector tests."""

from __future__ import annotations

import json
from pathlib import Path

HEADER = (
    "profile_id,email,first_name,last_name,birth_date,sex,postal_code,state,"
    "timezone,language,deceased_at,consent_marketing,consent_contact,traits"
)


def profile_line(profile_id: str, email: str = "", first_name: str = "Ana") -> str:
    """Return one CSV line of a profile with plain values for the other columns."""
    return (
        f"{profile_id},{email},{first_name},Test,1980-01-02,female,68001,Nebraska,"
        'America/Chicago,en,,true,true,"{""conditions"": []}"'
    )


def write_ndjson(path: Path, rows: list[dict]) -> Path:
    """Write rows as NDJSON, one object per line."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def event(event_id: str, profile_id: str = "p1", **fields: object) -> dict:
    row = {
        "event_id": event_id,
        "profile_id": profile_id,
        "type": "encounter",
        "occurred_at": "2024-01-02T03:04:05Z",
        "properties": {"class": "wellness"},
    }
    row.update(fields)
    return row
