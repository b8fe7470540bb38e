"""Row checks shared by every source: the staging table and the quarantine.

A source stages its rows in the temporary table ``STAGE``: ``source_row``,
``row_problem`` (set when the reader could not split the row) and every
canonical column as text. The SQL built here checks each staged row and
moves the rows with a reason into ``quarantine``. Reasons name the column
and the problem (``email: invalid address``), never the value, so they are
safe to log and to print.
"""

from __future__ import annotations

import logging

import duckdb
import pyarrow as pa
from email_validator import EmailNotValidError, validate_email

from carepost.core.schema import EVENT_COLUMNS, EVENT_TYPES, PROFILE_COLUMNS

log = logging.getLogger("carepost.connectors.sync")

# The demo's addresses are on this domain. email-validator rejects the
# special-use "test" TLD unless test_environment=True, and that flag admits
# every *.test domain, so it is passed only for this exact domain.
DEMO_EMAIL_DOMAIN = "example.test"

PROFILE_REQUIRED = ("profile_id",)
EVENT_REQUIRED = ("event_id", "profile_id", "type", "occurred_at")
# Columns that may contain line breaks: JSON documents, which are validated
# as JSON instead. A CR or LF in any other column quarantines the row,
# because names, ids and addresses reach e-mail headers and logs.
JSON_COLUMNS = frozenset({"traits", "properties"})

QUARANTINE_DDL = """
CREATE TABLE IF NOT EXISTS quarantine (
    source_file VARCHAR NOT NULL,
    source_row BIGINT NOT NULL,
    reason VARCHAR NOT NULL,
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (source_file, source_row)
)
"""

STAGE = "_carepost_stage"
EMAILS = "_carepost_emails"
REASONS = "_carepost_reasons"


def clean(column: str) -> str:
    """Return SQL for a staged value with spaces and tabs trimmed, '' as NULL."""
    return f"NULLIF(trim({column}, ' ' || chr(9)), '')"


def line_break_checks(columns: list[str]) -> list[str]:
    return [
        f"CASE WHEN regexp_matches({name}, '[\\r\\n]') "
        f"THEN '{name}: contains CR or LF' END"
        for name in columns
        if name not in JSON_COLUMNS
    ]


def reasons_sql(checks: list[str]) -> str:
    """Return SQL for the '; '-joined reasons of a staged row, or NULL."""
    listed = ", ".join(checks)
    return (
        "CASE WHEN row_problem IS NOT NULL THEN row_problem ELSE "
        f"NULLIF(array_to_string(list_filter([{listed}], lambda r: r IS NOT NULL), '; '), '') END"
    )


def parse_check(column: str, sql_type: str, words: str) -> str:
    value = clean(column)
    return (
        f"CASE WHEN {value} IS NOT NULL AND TRY_CAST({value} AS {sql_type}) IS NULL "
        f"THEN '{column}: {words}' END"
    )


def json_object_check(column: str) -> str:
    value = clean(column)
    return (
        f"CASE WHEN {value} IS NOT NULL AND coalesce(json_type(TRY_CAST({value} AS JSON)) "
        f"<> 'OBJECT', true) THEN '{column}: not a JSON object' END"
    )


def email_problem(raw: str) -> tuple[str | None, str | None]:
    """Validate one address; return (normalised address, None) or (None, reason)."""
    address = raw.strip(" \t")
    if not address:
        return None, None
    domain = address.rpartition("@")[2].lower()
    try:
        result = validate_email(
            address,
            check_deliverability=False,
            test_environment=domain == DEMO_EMAIL_DOMAIN,
        )
    except EmailNotValidError:
        return None, "email: invalid address"
    # email-validator lower-cases the domain and keeps the local part.
    return result.normalized, None


def check_emails(conn: duckdb.DuckDBPyConnection) -> None:
    """Validate the staged addresses into a table (source_row, email, problem).

    Rows with a CR or LF are skipped here, because the line-break check
    already quarantines them.
    """
    rows = conn.execute(
        f"SELECT source_row, email FROM {STAGE} "
        "WHERE email IS NOT NULL AND NOT regexp_matches(email, '[\\r\\n]')"
    ).fetchall()
    numbers, addresses, problems = [], [], []
    for source_row, raw in rows:
        address, problem = email_problem(raw)
        numbers.append(source_row)
        addresses.append(address)
        problems.append(problem)
    checked = pa.table({
        "source_row": pa.array(numbers, pa.int64()),
        "email": pa.array(addresses, pa.string()),
        "problem": pa.array(problems, pa.string()),
    })
    conn.register("_carepost_checked_emails", checked)
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {EMAILS} AS SELECT * FROM _carepost_checked_emails"
    )
    conn.unregister("_carepost_checked_emails")


def clear_quarantine(conn: duckdb.DuckDBPyConnection, source_file: str) -> None:
    """Delete the quarantine rows of an earlier load of ``source_file``."""
    conn.execute(QUARANTINE_DDL)
    conn.execute("DELETE FROM quarantine WHERE source_file = ?", [source_file])


def quarantine_staged(
    conn: duckdb.DuckDBPyConnection, source_file: str, reasons: str
) -> int:
    """Move staged rows with a reason into ``quarantine``; return how many.

    Several staged records may share one source position (a FHIR
    Appointment gives two events), so their reasons are joined into one
    quarantine row per position.
    """
    conn.execute(QUARANTINE_DDL)
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {REASONS} AS "
        f"SELECT source_row, {reasons} AS reason FROM {STAGE}"
    )
    conn.execute(
        f"""
        INSERT INTO quarantine (source_file, source_row, reason)
        SELECT ?, source_row, string_agg(DISTINCT reason, '; ' ORDER BY reason)
        FROM {REASONS} WHERE reason IS NOT NULL GROUP BY source_row
        ON CONFLICT (source_file, source_row) DO UPDATE
        SET reason = quarantine.reason || '; ' || excluded.reason
        """,
        [source_file],
    )
    count = conn.execute(
        f"SELECT count(DISTINCT source_row) FROM {REASONS} WHERE reason IS NOT NULL"
    ).fetchone()[0]
    _log_quarantine(conn, source_file, count)
    conn.execute(
        f"DELETE FROM {STAGE} WHERE source_row IN "
        f"(SELECT source_row FROM {REASONS} WHERE reason IS NOT NULL)"
    )
    conn.execute(f"DROP TABLE {REASONS}")
    return count


def _log_quarantine(conn: duckdb.DuckDBPyConnection, source_file: str, count: int) -> None:
    if not count:
        return
    by_reason = conn.execute(
        f"SELECT reason, count(*) FROM {REASONS} WHERE reason IS NOT NULL "
        "GROUP BY reason ORDER BY count(*) DESC, reason"
    ).fetchall()
    summary = ", ".join(f"{reason} ({n})" for reason, n in by_reason)
    # Reasons name columns only, so they are safe to log.
    log.warning("quarantined %d rows of %s: %s", count, source_file, summary)


def quarantine_reasons(conn: duckdb.DuckDBPyConnection, source_files: list[str]) -> dict[str, int]:
    """Count the quarantine rows of ``source_files`` by reason."""
    if not source_files:
        return {}
    conn.execute(QUARANTINE_DDL)
    rows = conn.execute(
        "SELECT reason, count(*) FROM quarantine WHERE list_contains(?, source_file) "
        "GROUP BY reason ORDER BY count(*) DESC, reason",
        [source_files],
    ).fetchall()
    return {reason: count for reason, count in rows}


def profile_checks() -> list[str]:
    columns = list(PROFILE_COLUMNS)
    return [
        f"CASE WHEN {clean('profile_id')} IS NULL THEN 'profile_id: missing' END",
        *line_break_checks(columns),
        "email_problem",
        parse_check("birth_date", "DATE", "unparsable date"),
        parse_check("deceased_at", "TIMESTAMPTZ", "unparsable time"),
        parse_check("consent_marketing", "BOOLEAN", "not true or false"),
        parse_check("consent_contact", "BOOLEAN", "not true or false"),
        f"CASE WHEN {clean('timezone')} IS NOT NULL AND {clean('timezone')} NOT IN "
        "(SELECT name FROM pg_timezone_names()) THEN 'timezone: unknown IANA time zone' END",
        json_object_check("traits"),
    ]


def profile_values() -> str:
    typed = {
        "email": "checked_email",
        "birth_date": f"TRY_CAST({clean('birth_date')} AS DATE)",
        "deceased_at": f"TRY_CAST({clean('deceased_at')} AS TIMESTAMPTZ)",
        "consent_marketing": f"TRY_CAST({clean('consent_marketing')} AS BOOLEAN)",
        "consent_contact": f"TRY_CAST({clean('consent_contact')} AS BOOLEAN)",
        "traits": f"json({clean('traits')})",
    }
    return ", ".join(
        f"{typed.get(name, clean(name))} AS {name}" for name in PROFILE_COLUMNS
    )


def event_checks() -> list[str]:
    known = ", ".join(f"'{event_type}'" for event_type in sorted(EVENT_TYPES))
    return [
        f"CASE WHEN {clean('event_id')} IS NULL THEN 'event_id: missing' END",
        f"CASE WHEN {clean('profile_id')} IS NULL THEN 'profile_id: missing' END",
        *line_break_checks(list(EVENT_COLUMNS)),
        f"CASE WHEN {clean('type')} IS NULL THEN 'type: missing' "
        f"WHEN {clean('type')} NOT IN ({known}) THEN 'type: unknown event type' END",
        f"CASE WHEN {clean('occurred_at')} IS NULL THEN 'occurred_at: missing' END",
        parse_check("occurred_at", "TIMESTAMPTZ", "unparsable time"),
        json_object_check("properties"),
    ]

