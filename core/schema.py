"""Canonical tables that every connector maps into (DuckDB).

``profiles`` holds one row per CDP profile; consent is explicit columns so
the send-time checks never read JSON. ``events`` holds one row per event;
``event_id`` is unique and a duplicate is dropped on load. All timestamps
are UTC ``TIMESTAMPTZ``.
"""

from __future__ import annotations

import duckdb

PROFILE_COLUMNS: dict[str, str] = {
    "profile_id": "VARCHAR PRIMARY KEY",
    "email": "VARCHAR",
    "first_name": "VARCHAR",
    "last_name": "VARCHAR",
    "birth_date": "DATE",
    "sex": "VARCHAR",
    "postal_code": "VARCHAR",
    "state": "VARCHAR",
    "timezone": "VARCHAR",
    "language": "VARCHAR",
    "deceased_at": "TIMESTAMPTZ",
    "consent_marketing": "BOOLEAN",
    "consent_contact": "BOOLEAN",
    "traits": "JSON",
}

EVENT_COLUMNS: dict[str, str] = {
    "event_id": "VARCHAR PRIMARY KEY",
    "profile_id": "VARCHAR NOT NULL",
    "type": "VARCHAR NOT NULL",
    "occurred_at": "TIMESTAMPTZ NOT NULL",
    "properties": "JSON",
}

EVENT_TYPES: frozenset[str] = frozenset({
    "appointment_booked",
    "appointment_attended",
    "appointment_cancelled",
    "appointment_no_show",
    "prescription_written",
    "prescription_filled",
    "portal_login",
    "form_submitted",
    "encounter",
    "condition_diagnosed",
})


def _ddl(table: str, columns: dict[str, str]) -> str:
    body = ",\n    ".join(f"{name} {kind}" for name, kind in columns.items())
    return f"CREATE TABLE IF NOT EXISTS {table} (\n    {body}\n)"


def create_tables(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the canonical tables if they do not exist yet."""
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute(_ddl("profiles", PROFILE_COLUMNS))
    conn.execute(_ddl("events", EVENT_COLUMNS))
    conn.execute(
        "CREATE INDEX IF NOT EXISTS events_profile ON events (profile_id, type)"
    )
