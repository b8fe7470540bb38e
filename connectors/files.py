"""Load a CDP file export (CSV, Parquet or NDJSON) into the canonical tables.

Contract of ``load_export(conn, profiles_path, events_path)``:

- It creates the canonical tables, loads the profiles file, then the events
  file, in one transaction, and returns a ``LoadSummary``. The caller must
  not have a transaction open on ``conn``.
- The reader follows the file suffix: ``.csv``, ``.parquet``, ``.ndjson``
  or ``.jsonl``. CSV and NDJSON must be UTF-8 (a byte order mark is
  accepted). Ids are read as text. Times are stored as UTC ``TIMESTAMPTZ``,
  and a time without a UTC offset is read as UTC.
- Profiles are upserted by ``profile_id``: the last row of the file wins,
  so loading the same export twice leaves the same rows. Events are
  inserted once per ``event_id``. A later row with the same id, in the
  file or already in the table, is dropped and counted.
- A row that cannot be loaded goes to the ``quarantine`` table with the
  source file, its row number and reasons that name the column, never the
  value, and the other rows load. Reloading a file replaces its earlier
  quarantine rows.
- Logs carry file names, profile ids and counts, never a name or address.

Errors:

    CarepostError (carepost.core.errors)
    └── SourceError   a whole file is unusable: missing, unsupported suffix,
                      unreadable, not UTF-8 (NDJSON), or a required column
                      is absent. The transaction is rolled back, so nothing
                      from either file is loaded.

Any other duckdb.Error is a bug in this module and propagates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
from email_validator import EmailNotValidError, validate_email

from carepost.core.errors import CarepostError
from carepost.core.schema import EVENT_COLUMNS, EVENT_TYPES, PROFILE_COLUMNS, create_tables

log = logging.getLogger("carepost.connectors.files")

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
REJECTS = "_carepost_csv_rejects"
REJECT_SCANS = "_carepost_csv_reject_scans"

# Plain words for the errors DuckDB's CSV reader stores in its rejects table.
CSV_ERROR_WORDS = {
    "INVALID ENCODING": "not valid UTF-8",
    "TOO MANY COLUMNS": "too many columns",
    "MISSING COLUMNS": "missing columns",
    "UNQUOTED VALUE": "quote character inside an unquoted value",
    "LINE SIZE OVER MAXIMUM": "line too long",
}


class SourceError(CarepostError):
    """A source file cannot be loaded at all; the message names the file."""


@dataclass(frozen=True)
class LoadSummary:
    """Counts of one ``load_export`` call.

    ``profiles`` is the number of profile rows inserted or updated,
    ``events`` the number of new events, ``duplicate_events_dropped`` the
    valid event rows whose id was already loaded, and ``quarantined`` the
    rows of both files written to the ``quarantine`` table.
    """

    profiles: int
    events: int
    duplicate_events_dropped: int
    quarantined: int


def load_export(
    conn: duckdb.DuckDBPyConnection, profiles_path: Path, events_path: Path
) -> LoadSummary:
    """Load one profiles file and one events file into the canonical tables."""
    profiles_path, events_path = Path(profiles_path), Path(events_path)
    create_tables(conn)
    conn.execute(QUARANTINE_DDL)

    previous_order = conn.execute(
        "SELECT current_setting('preserve_insertion_order')"
    ).fetchone()[0]
    # Row numbers of CSV rows come from the order of rowid in a staging
    # table, which follows file order only while insertion order is preserved.
    conn.execute("SET preserve_insertion_order = true")

    conn.begin()
    try:
        profiles, bad_profiles = _load_profiles(conn, profiles_path)
        events, duplicates, bad_events = _load_events(conn, events_path)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.execute(f"SET preserve_insertion_order = {bool(previous_order)}")

    summary = LoadSummary(profiles, events, duplicates, bad_profiles + bad_events)
    log.info(
        "loaded export: %d profiles, %d events, %d duplicate events dropped, "
        "%d rows quarantined",
        summary.profiles,
        summary.events,
        summary.duplicate_events_dropped,
        summary.quarantined,
    )
    return summary


# --- staging: every reader gives (source_row, row_problem, columns as text)


def _stage(
    conn: duckdb.DuckDBPyConnection, path: Path, columns: list[str], required: tuple[str, ...]
) -> None:
    """Create the staging table from one file, all canonical columns as text.

    ``row_problem`` is set for a row the reader could not split into
    columns; its column values are then NULL.
    """
    if not path.is_file():
        raise SourceError(f"export file not found: {path}", hint="check the path")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            _stage_csv(conn, path, columns, required)
        elif suffix == ".parquet":
            _stage_parquet(conn, path, columns, required)
        elif suffix in (".ndjson", ".jsonl"):
            _stage_ndjson(conn, path, columns)
        else:
            raise SourceError(
                f"unsupported export file suffix {suffix!r}: {path.name}",
                hint="use .csv, .parquet, .ndjson or .jsonl",
            )
    except (duckdb.InvalidInputException, duckdb.IOException, duckdb.ConversionException) as error:
        # DuckDB's reader messages quote the offending line, which may hold
        # PHI, so only the error class is passed on. Other duckdb.Error
        # classes (parser, binder) mean a bug here and propagate.
        raise SourceError(
            f"cannot read {path.name}: {type(error).__name__}",
            hint="check that the file is complete and in the format its suffix names",
        ) from None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _source_columns(
    conn: duckdb.DuckDBPyConnection, relation: str, path: Path, required: tuple[str, ...]
) -> dict[str, tuple[str, str]]:
    """Map lower-cased column names of ``relation`` to (name, DuckDB type)."""
    described = conn.execute(f"DESCRIBE {relation}").fetchall()
    found = {row[0].lower(): (row[0], row[1]) for row in described}
    missing = [name for name in required if name not in found]
    if missing:
        raise SourceError(
            f"{path.name} has no column {', '.join(missing)}",
            hint="export the canonical column names of carepost.core.schema",
        )
    return found


def _as_text(name: str, duckdb_type: str) -> str:
    """Return SQL that turns one source column into text, NaN becoming NULL."""
    column = _quote(name)
    if duckdb_type in ("FLOAT", "DOUBLE"):
        # pandas writes a missing string as NaN; its text would be "nan".
        return f"CASE WHEN isnan({column}) THEN NULL ELSE CAST({column} AS VARCHAR) END"
    if duckdb_type.startswith(("STRUCT", "MAP")) or duckdb_type.endswith("[]"):
        return f"CAST(to_json({column}) AS VARCHAR)"
    return f"CAST({column} AS VARCHAR)"


def _stage_from(
    conn: duckdb.DuckDBPyConnection,
    relation: str,
    found: dict[str, tuple[str, str]],
    columns: list[str],
) -> None:
    selected = [
        f"{_as_text(*found[name])} AS {name}" if name in found else f"NULL::VARCHAR AS {name}"
        for name in columns
    ]
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {STAGE} AS "
        f"SELECT source_row, row_problem, {', '.join(selected)} FROM {relation}"
    )


def _stage_parquet(
    conn: duckdb.DuckDBPyConnection, path: Path, columns: list[str], required: tuple[str, ...]
) -> None:
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE _carepost_source AS "
        "SELECT file_row_number + 1 AS source_row, NULL::VARCHAR AS row_problem, * "
        "FROM read_parquet(?, file_row_number = true)",
        [str(path)],
    )
    found = _source_columns(conn, "_carepost_source", path, required)
    _stage_from(conn, "_carepost_source", found, columns)
    conn.execute("DROP TABLE _carepost_source")


def _stage_ndjson(conn: duckdb.DuckDBPyConnection, path: Path, columns: list[str]) -> None:
    """Stage NDJSON line by line, so a bad line is quarantined by its number.

    NOTE: read_text loads the whole file into memory as one string.
    """
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _carepost_lines AS
        SELECT n AS source_row, TRY_CAST(line AS JSON) AS doc
        FROM (
            SELECT unnest(lines) AS line, generate_subscripts(lines, 1) AS n
            FROM (SELECT string_split(content, chr(10)) AS lines FROM read_text(?))
        )
        WHERE trim(line, ' ' || chr(9) || chr(13)) <> ''
        """,
        [str(path)],
    )
    selected = [f"doc ->> '$.{name}' AS {name}" for name in columns]
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {STAGE} AS
        SELECT source_row,
               CASE WHEN doc IS NULL THEN 'row: invalid JSON'
                    WHEN json_type(doc) <> 'OBJECT' THEN 'row: not a JSON object'
               END AS row_problem,
               {', '.join(selected)}
        FROM _carepost_lines
        """
    )
    conn.execute("DROP TABLE _carepost_lines")


def _stage_csv(
    conn: duckdb.DuckDBPyConnection, path: Path, columns: list[str], required: tuple[str, ...]
) -> None:
    """Stage a CSV file, keeping the rows DuckDB's reader rejects.

    Rejected rows (invalid UTF-8, wrong number of columns) are numbered by
    the reader's line number. Accepted rows are numbered by counting the
    record numbers that were not rejected, in file order.
    NOTE: blank lines count in the reader's line numbers but are not
    records, so after a blank line the row numbers of a file that also has
    rejected rows can be off by the number of blank lines.
    """
    conn.execute(f"DROP TABLE IF EXISTS {REJECTS}")
    conn.execute(f"DROP TABLE IF EXISTS {REJECT_SCANS}")
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE _carepost_csv AS SELECT * FROM read_csv(?, "
        "header = true, all_varchar = true, delim = ',', quote = '\"', escape = '\"', "
        f"encoding = 'utf-8', store_rejects = true, rejects_table = '{REJECTS}', "
        f"rejects_scan = '{REJECT_SCANS}')",
        [str(path)],
    )
    found = _source_columns(conn, "_carepost_csv", path, required)
    conn.execute(_csv_numbering_sql())
    _stage_from(conn, "_carepost_csv_numbered", found, columns)
    for table in ("_carepost_csv_numbered", "_carepost_csv", REJECTS, REJECT_SCANS):
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def _csv_numbering_sql() -> str:
    words = " ".join(
        f"WHEN '{kind}' THEN '{text}'" for kind, text in CSV_ERROR_WORDS.items()
    )
    return f"""
        CREATE OR REPLACE TEMP TABLE _carepost_csv_numbered AS
        WITH rejected AS (
            SELECT line - 1 AS source_row,
                   string_agg(DISTINCT coalesce(column_name, 'row') || ': ' ||
                              CASE error_type {words} ELSE lower(error_type) END,
                              '; ') AS row_problem
            FROM {REJECTS} GROUP BY line
        ),
        record_numbers AS (
            SELECT range + 1 AS source_row
            FROM range((SELECT count(*) FROM _carepost_csv) + (SELECT count(*) FROM rejected))
        ),
        accepted_numbers AS (
            SELECT source_row, row_number() OVER (ORDER BY source_row) - 1 AS position
            FROM record_numbers
            WHERE source_row NOT IN (SELECT source_row FROM rejected)
        ),
        accepted_rows AS (
            SELECT row_number() OVER (ORDER BY rowid) - 1 AS position, *
            FROM _carepost_csv
        )
        SELECT n.source_row, NULL::VARCHAR AS row_problem, c.* EXCLUDE (position)
        FROM accepted_rows AS c JOIN accepted_numbers AS n USING (position)
        UNION ALL BY NAME
        SELECT source_row, row_problem FROM rejected
    """


# --- validation -------------------------------------------------------------


def _clean(column: str) -> str:
    """Return SQL for a staged value with spaces and tabs trimmed, '' as NULL."""
    return f"NULLIF(trim({column}, ' ' || chr(9)), '')"


def _line_break_checks(columns: list[str]) -> list[str]:
    return [
        f"CASE WHEN regexp_matches({name}, '[\\r\\n]') "
        f"THEN '{name}: contains CR or LF' END"
        for name in columns
        if name not in JSON_COLUMNS
    ]


def _reasons_sql(checks: list[str]) -> str:
    """Return SQL for the '; '-joined reasons of a staged row, or NULL."""
    listed = ", ".join(checks)
    return (
        "CASE WHEN row_problem IS NOT NULL THEN row_problem ELSE "
        f"NULLIF(array_to_string(list_filter([{listed}], lambda r: r IS NOT NULL), '; '), '') END"
    )


def _parse_check(column: str, sql_type: str, words: str) -> str:
    value = _clean(column)
    return (
        f"CASE WHEN {value} IS NOT NULL AND TRY_CAST({value} AS {sql_type}) IS NULL "
        f"THEN '{column}: {words}' END"
    )


def _json_object_check(column: str) -> str:
    value = _clean(column)
    return (
        f"CASE WHEN {value} IS NOT NULL AND coalesce(json_type(TRY_CAST({value} AS JSON)) "
        f"<> 'OBJECT', true) THEN '{column}: not a JSON object' END"
    )


def _email_problem(raw: str) -> tuple[str | None, str | None]:
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


def _check_emails(conn: duckdb.DuckDBPyConnection) -> None:
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
        address, problem = _email_problem(raw)
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


def _quarantine(conn: duckdb.DuckDBPyConnection, path: Path, reasons_sql: str) -> int:
    """Move staged rows with a reason into ``quarantine``; return how many."""
    source_file = str(path.resolve())
    conn.execute("DELETE FROM quarantine WHERE source_file = ?", [source_file])
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE _carepost_reasons AS "
        f"SELECT source_row, {reasons_sql} AS reason FROM {STAGE}"
    )
    conn.execute(
        "INSERT INTO quarantine (source_file, source_row, reason) "
        "SELECT ?, source_row, reason FROM _carepost_reasons WHERE reason IS NOT NULL",
        [source_file],
    )
    count = conn.execute(
        "SELECT count(*) FROM _carepost_reasons WHERE reason IS NOT NULL"
    ).fetchone()[0]
    _log_quarantine(conn, path, count)
    conn.execute(
        f"DELETE FROM {STAGE} WHERE source_row IN "
        "(SELECT source_row FROM _carepost_reasons WHERE reason IS NOT NULL)"
    )
    conn.execute("DROP TABLE _carepost_reasons")
    return count


def _log_quarantine(conn: duckdb.DuckDBPyConnection, path: Path, count: int) -> None:
    if not count:
        return
    by_reason = conn.execute(
        "SELECT reason, count(*) FROM _carepost_reasons WHERE reason IS NOT NULL "
        "GROUP BY reason ORDER BY count(*) DESC, reason"
    ).fetchall()
    summary = ", ".join(f"{reason} ({n})" for reason, n in by_reason)
    # Reasons name columns only, so they are safe to log.
    log.warning("quarantined %d rows of %s: %s", count, path.name, summary)


# --- profiles ---------------------------------------------------------------


def _profile_checks() -> list[str]:
    columns = list(PROFILE_COLUMNS)
    return [
        f"CASE WHEN {_clean('profile_id')} IS NULL THEN 'profile_id: missing' END",
        *_line_break_checks(columns),
        "email_problem",
        _parse_check("birth_date", "DATE", "unparsable date"),
        _parse_check("deceased_at", "TIMESTAMPTZ", "unparsable time"),
        _parse_check("consent_marketing", "BOOLEAN", "not true or false"),
        _parse_check("consent_contact", "BOOLEAN", "not true or false"),
        f"CASE WHEN {_clean('timezone')} IS NOT NULL AND {_clean('timezone')} NOT IN "
        "(SELECT name FROM pg_timezone_names()) THEN 'timezone: unknown IANA time zone' END",
        _json_object_check("traits"),
    ]


def _profile_values() -> str:
    typed = {
        "email": "checked_email",
        "birth_date": f"TRY_CAST({_clean('birth_date')} AS DATE)",
        "deceased_at": f"TRY_CAST({_clean('deceased_at')} AS TIMESTAMPTZ)",
        "consent_marketing": f"TRY_CAST({_clean('consent_marketing')} AS BOOLEAN)",
        "consent_contact": f"TRY_CAST({_clean('consent_contact')} AS BOOLEAN)",
        "traits": f"CAST({_clean('traits')} AS JSON)",
    }
    return ", ".join(
        f"{typed.get(name, _clean(name))} AS {name}" for name in PROFILE_COLUMNS
    )


def _load_profiles(conn: duckdb.DuckDBPyConnection, path: Path) -> tuple[int, int]:
    """Upsert the valid profile rows; return (profiles loaded, rows quarantined)."""
    _stage(conn, path, list(PROFILE_COLUMNS), PROFILE_REQUIRED)
    _check_emails(conn)
    # Join the e-mail results in as checked_email and email_problem.
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {STAGE} AS SELECT s.*, e.email AS checked_email, "
        f"e.problem AS email_problem FROM {STAGE} AS s "
        f"LEFT JOIN {EMAILS} AS e USING (source_row)"
    )
    quarantined = _quarantine(conn, path, _reasons_sql(_profile_checks()))
    updates = ", ".join(
        f"{name} = excluded.{name}" for name in PROFILE_COLUMNS if name != "profile_id"
    )
    loaded = conn.execute(
        f"""
        INSERT INTO profiles
        SELECT {_profile_values()} FROM {STAGE}
        QUALIFY row_number() OVER (
            PARTITION BY {_clean('profile_id')} ORDER BY source_row DESC
        ) = 1
        ON CONFLICT (profile_id) DO UPDATE SET {updates}
        """
    ).fetchone()[0]
    _log_repeated_profiles(conn, path)
    conn.execute(f"DROP TABLE {STAGE}")
    conn.execute(f"DROP TABLE {EMAILS}")
    log.info("loaded %d profiles from %s", loaded, path.name)
    return loaded, quarantined


def _log_repeated_profiles(conn: duckdb.DuckDBPyConnection, path: Path) -> None:
    repeated = conn.execute(
        f"SELECT {_clean('profile_id')} AS id FROM {STAGE} GROUP BY id "
        "HAVING count(*) > 1 ORDER BY id"
    ).fetchall()
    if repeated:
        ids = [row[0] for row in repeated]
        log.warning(
            "%s repeats %d profile ids, the last row of each was kept: %s",
            path.name,
            len(ids),
            ", ".join(ids[:20]),
        )


# --- events -----------------------------------------------------------------


def _event_checks() -> list[str]:
    known = ", ".join(f"'{event_type}'" for event_type in sorted(EVENT_TYPES))
    return [
        f"CASE WHEN {_clean('event_id')} IS NULL THEN 'event_id: missing' END",
        f"CASE WHEN {_clean('profile_id')} IS NULL THEN 'profile_id: missing' END",
        *_line_break_checks(list(EVENT_COLUMNS)),
        f"CASE WHEN {_clean('type')} IS NULL THEN 'type: missing' "
        f"WHEN {_clean('type')} NOT IN ({known}) THEN 'type: unknown event type' END",
        f"CASE WHEN {_clean('occurred_at')} IS NULL THEN 'occurred_at: missing' END",
        _parse_check("occurred_at", "TIMESTAMPTZ", "unparsable time"),
        _json_object_check("properties"),
    ]


def _load_events(conn: duckdb.DuckDBPyConnection, path: Path) -> tuple[int, int, int]:
    """Insert new valid events; return (inserted, duplicates dropped, quarantined)."""
    _stage(conn, path, list(EVENT_COLUMNS), EVENT_REQUIRED)
    quarantined = _quarantine(conn, path, _reasons_sql(_event_checks()))
    valid = conn.execute(f"SELECT count(*) FROM {STAGE}").fetchone()[0]
    inserted = conn.execute(
        f"""
        INSERT INTO events
        SELECT {_clean('event_id')}, {_clean('profile_id')}, {_clean('type')},
               CAST({_clean('occurred_at')} AS TIMESTAMPTZ),
               CAST({_clean('properties')} AS JSON)
        FROM {STAGE}
        QUALIFY row_number() OVER (PARTITION BY {_clean('event_id')} ORDER BY source_row) = 1
        ON CONFLICT (event_id) DO NOTHING
        """
    ).fetchone()[0]
    conn.execute(f"DROP TABLE {STAGE}")
    duplicates = valid - inserted
    log.info(
        "loaded %d events from %s, dropped %d duplicate event ids",
        inserted,
        path.name,
        duplicates,
    )
    return inserted, duplicates, quarantined
