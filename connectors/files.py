"""Load CDP file exports (CSV, Parquet, NDJSON) into the canonical tables.

Two entry points:

- ``load_export(conn, profiles_path, events_path)`` loads one profiles file
  and one events file with canonical column names, in one transaction.
- ``sync_files(conn, name, spec, root)`` syncs a configured ``files``
  source: paths or glob patterns, a column mapping (``files_mapping``), a
  declared encoding and time zone, incremental re-runs and, for a full
  export, deletions. See ``connectors/README.md``.

Rules shared by both:

- The reader follows the file suffix: ``.csv``, ``.parquet``, ``.ndjson``
  or ``.jsonl``. CSV is UTF-8 (a byte order mark is accepted) or the
  declared Latin-1; quoted line breaks and mixed CRLF and LF line ends are
  read. NDJSON must be UTF-8. Ids are read as text.
- Times are stored as UTC ``TIMESTAMPTZ``; a time without a UTC offset is
  read in the source's declared zone (UTC for ``load_export``).
- Profiles are upserted by ``profile_id`` and rows of one id are merged
  (``connectors.sync``). Events are inserted once per ``event_id``: a
  later row with the same id, in the file or already in the table, is
  dropped and counted.
- A row that cannot be loaded goes to the ``quarantine`` table with the
  source file, its row number and reasons that name the column, never the
  value, and the other rows load. Reloading a file replaces its earlier
  quarantine rows.
- Logs carry file names, profile ids and counts, never a name or address.

Errors:

    CarepostError (carepost.core.errors)
    ├── SourceError   a whole file is unusable: missing, unsupported suffix,
    │                 unreadable, UTF-16 or UTF-32 text, not valid in its
    │                 encoding (NDJSON), or a required column is absent.
    │                 The transaction is rolled back, so nothing of that
    │                 sync is loaded.
    └── MappingError  (files_mapping) the mapping file is invalid or names
                      a column the export does not have.

Any other duckdb.Error is a bug in this module and propagates.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from carepost.connectors.files_mapping import ColumnExpr, Rule, rule_sql
from carepost.connectors.sync import apply_staged_events, apply_staged_profiles, transaction
from carepost.connectors.sync_checks import (
    EVENT_REQUIRED,
    PROFILE_REQUIRED,
    STAGE,
    clean,
    clear_quarantine,
)
from carepost.core.errors import CarepostError
from carepost.core.schema import EVENT_COLUMNS, PROFILE_COLUMNS, create_tables

log = logging.getLogger("carepost.connectors.files")

__all__ = [
    "LoadSummary", "ReadOptions", "SourceError", "insertion_order", "load_events_file",
    "load_export", "load_profiles_file",
]

REJECTS = "_carepost_csv_rejects"
REJECT_SCANS = "_carepost_csv_reject_scans"
EXPORT_IDS = "_carepost_export_ids"
CHUNK_BYTES = 8 * 1024 * 1024

# Plain words for the errors DuckDB's CSV reader stores in its rejects table.
CSV_ERROR_WORDS = {
    "INVALID ENCODING": "not valid UTF-8 (for a Latin-1 file set encoding: latin-1 on the source)",
    "TOO MANY COLUMNS": "too many columns",
    "MISSING COLUMNS": "missing columns",
    "UNQUOTED VALUE": "quote character inside an unquoted value",
    "LINE SIZE OVER MAXIMUM": "line too long",
}

# UTF-32 first: its little-endian mark starts with UTF-16's.
_WIDE_BYTE_ORDER_MARKS = (
    (b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"),
)


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


@dataclass(frozen=True)
class ReadOptions:
    """How to read one table's files: encoding and column rules."""

    encoding: str = "utf-8"
    rules: dict[str, Rule] | None = None


def load_export(
    conn: duckdb.DuckDBPyConnection, profiles_path: Path, events_path: Path
) -> LoadSummary:
    """Load one profiles file and one events file into the canonical tables."""
    profiles_path, events_path = Path(profiles_path), Path(events_path)
    create_tables(conn)
    with insertion_order(conn), transaction(conn):
        profiles, bad_profiles, _ = load_profiles_file(conn, profiles_path, ReadOptions())
        events, duplicates, bad_events = load_events_file(conn, events_path, ReadOptions())

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


@contextmanager
def insertion_order(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    # Row numbers of CSV rows come from the order of rowid in a staging
    # table, which follows file order only while insertion order is preserved.
    previous = conn.execute("SELECT current_setting('preserve_insertion_order')").fetchone()[0]
    conn.execute("SET preserve_insertion_order = true")
    try:
        yield
    finally:
        conn.execute(f"SET preserve_insertion_order = {bool(previous)}")


def load_profiles_file(
    conn: duckdb.DuckDBPyConnection, path: Path, options: ReadOptions, *,
    replace: bool = False, collect_ids: bool = False,
) -> tuple[int, int, int]:
    """Upsert one file's valid profiles; return (loaded, quarantined, merged)."""
    _stage(conn, path, list(PROFILE_COLUMNS), PROFILE_REQUIRED, options)
    if collect_ids:
        _collect_ids(conn, "profile_id")
    source_file = str(path.resolve())
    clear_quarantine(conn, source_file)
    loaded, quarantined, merged = apply_staged_profiles(conn, source_file, replace=replace)
    log.info("loaded %d profiles from %s", loaded, path.name)
    return loaded, quarantined, merged


def load_events_file(
    conn: duckdb.DuckDBPyConnection, path: Path, options: ReadOptions, *,
    collect_ids: bool = False,
) -> tuple[int, int, int]:
    """Insert one file's new valid events; return (inserted, duplicates, quarantined)."""
    _stage(conn, path, list(EVENT_COLUMNS), EVENT_REQUIRED, options)
    if collect_ids:
        _collect_ids(conn, "event_id")
    source_file = str(path.resolve())
    clear_quarantine(conn, source_file)
    inserted, duplicates, quarantined = apply_staged_events(conn, source_file)
    log.info(
        "loaded %d events from %s, dropped %d duplicate event ids",
        inserted, path.name, duplicates,
    )
    return inserted, duplicates, quarantined


def _collect_ids(conn: duckdb.DuckDBPyConnection, column: str) -> None:
    """Remember the ids of a full export, quarantined rows included."""
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {EXPORT_IDS} (id VARCHAR)")
    conn.execute(
        f"INSERT INTO {EXPORT_IDS} SELECT DISTINCT {clean(column)} FROM {STAGE} "
        f"WHERE {clean(column)} IS NOT NULL"
    )


# --- staging: every reader gives (source_row, row_problem, columns as text)


def _stage(
    conn: duckdb.DuckDBPyConnection,
    path: Path,
    columns: list[str],
    required: tuple[str, ...],
    options: ReadOptions,
) -> None:
    """Create the staging table from one file, all canonical columns as text.

    ``row_problem`` is set for a row the reader could not split into
    columns; its column values are then NULL.
    """
    if not path.is_file():
        raise SourceError(f"export file not found: {path}", hint="check the path")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".ndjson", ".jsonl"):
        _reject_wide_text(path, options.encoding)
    try:
        if suffix == ".csv":
            with _lf_line_ends(path) as readable:
                _stage_csv(conn, readable, path, columns, required, options)
        elif suffix == ".parquet":
            _stage_parquet(conn, path, columns, required, options)
        elif suffix in (".ndjson", ".jsonl"):
            _stage_ndjson(conn, path, columns, required, options)
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


def _reject_wide_text(path: Path, encoding: str) -> None:
    """Raise ``SourceError`` for a UTF-16 or UTF-32 text file.

    DuckDB would read such a file as one garbled column, and the error
    would name a missing column instead of the encoding. A byte order mark
    or a NUL byte in the first 4 KiB gives such a file away.
    """
    with path.open("rb") as source:
        head = source.read(4096)
    for mark, name in _WIDE_BYTE_ORDER_MARKS:
        if head.startswith(mark):
            found = f"byte 0x{head[0]:02x} at offset 0, a {name} byte order mark"
            break
    else:
        offset = head.find(b"\x00")
        if offset < 0:
            return
        found = f"byte 0x00 at offset {offset}, as in UTF-16 text"
    raise SourceError(
        f"{path.name}: not {encoding_name(encoding)} text ({found}); save it as "
        "UTF-8, or as Latin-1 with encoding: latin-1 on the source in carepost.yaml"
    )


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _source_columns(
    conn: duckdb.DuckDBPyConnection, relation: str
) -> dict[str, tuple[str, str]]:
    """Map lower-cased column names of ``relation`` to (name, DuckDB type)."""
    described = conn.execute(f"DESCRIBE {relation}").fetchall()
    return {row[0].lower(): (row[0], row[1]) for row in described}


def _column_exprs(
    columns: list[str],
    required: tuple[str, ...],
    column_expr: ColumnExpr,
    path: Path,
    options: ReadOptions,
) -> list[str]:
    """Return one SQL text expression per canonical column, mapped or by name."""
    rules = options.rules or {}
    missing = [
        name for name in required if name not in rules and column_expr(name) is None
    ]
    if missing:
        raise SourceError(
            f"{path.name} has no column {', '.join(missing)}",
            hint="export the canonical column names of carepost.core.schema "
            "or map them in a mapping file",
        )
    selected = []
    for name in columns:
        if name in rules:
            expression = rule_sql(name, rules[name], column_expr, f"{path.name}: {name}")
        else:
            expression = column_expr(name) or "NULL::VARCHAR"
        selected.append(f"{expression} AS {name}")
    return selected


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
    path: Path,
    columns: list[str],
    required: tuple[str, ...],
    options: ReadOptions,
) -> None:
    found = _source_columns(conn, relation)

    def column_expr(name: str) -> str | None:
        source = found.get(name.lower())
        return _as_text(*source) if source else None

    selected = _column_exprs(columns, required, column_expr, path, options)
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {STAGE} AS "
        f"SELECT source_row, row_problem, {', '.join(selected)} FROM {relation}"
    )


def _stage_parquet(
    conn: duckdb.DuckDBPyConnection,
    path: Path,
    columns: list[str],
    required: tuple[str, ...],
    options: ReadOptions,
) -> None:
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE _carepost_source AS "
        "SELECT file_row_number + 1 AS source_row, NULL::VARCHAR AS row_problem, * "
        "FROM read_parquet(?, file_row_number = true)",
        [str(path)],
    )
    _stage_from(conn, "_carepost_source", path, columns, required, options)
    conn.execute("DROP TABLE _carepost_source")


def _stage_ndjson(
    conn: duckdb.DuckDBPyConnection,
    path: Path,
    columns: list[str],
    required: tuple[str, ...],
    options: ReadOptions,
) -> None:
    """Stage NDJSON line by line, so a bad line is quarantined by its number.

    Keys match exactly. A required key absent from every line is not an
    error here: each row is quarantined as missing it.

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
    def column_expr(name: str) -> str:
        path_text = '$."' + name.replace('"', '\\"') + '"'
        return "doc ->> '" + path_text.replace("'", "''") + "'"

    selected = _column_exprs(columns, (), column_expr, path, options)
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
    conn: duckdb.DuckDBPyConnection,
    readable: Path,
    path: Path,
    columns: list[str],
    required: tuple[str, ...],
    options: ReadOptions,
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
        "encoding = ?, store_rejects = true, "
        f"rejects_table = '{REJECTS}', rejects_scan = '{REJECT_SCANS}')",
        [str(readable), options.encoding],
    )
    conn.execute(_csv_numbering_sql(options.encoding))
    _stage_from(conn, "_carepost_csv_numbered", path, columns, required, options)
    for table in ("_carepost_csv_numbered", "_carepost_csv", REJECTS, REJECT_SCANS):
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def _csv_numbering_sql(encoding: str) -> str:
    words = " ".join(
        f"WHEN '{kind}' THEN '{text.replace('UTF-8', encoding_name(encoding))}'"
        for kind, text in CSV_ERROR_WORDS.items()
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




def encoding_name(encoding: str) -> str:
    return {"utf-8": "UTF-8", "latin-1": "Latin-1"}.get(encoding, encoding)


@contextmanager
def _lf_line_ends(path: Path) -> Iterator[Path]:
    """Yield a CSV path that DuckDB can read when line ends are mixed.

    DuckDB's reader (1.x and 2.0) rejects a file that mixes CRLF and LF
    line ends unless strict mode is off, and turning it off would also
    accept rows with too many columns. A mixed file is copied with every
    CRLF as LF. A CRLF inside a quoted value changes too, but such a value
    is quarantined for its line break anyway, except in ``traits`` and
    ``properties``, where JSON does not care.
    """
    if not _has_mixed_line_ends(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="carepost-csv-") as folder:
        copy = Path(folder) / path.name
        with path.open("rb") as source, copy.open("wb") as target:
            carry = b""
            while chunk := source.read(CHUNK_BYTES):
                chunk = carry + chunk
                carry = b"\r" if chunk.endswith(b"\r") else b""
                target.write(chunk[: len(chunk) - len(carry)].replace(b"\r\n", b"\n"))
            target.write(carry)
        log.info("%s mixes CRLF and LF line ends; read with LF only", path.name)
        yield copy


def _has_mixed_line_ends(path: Path) -> bool:
    crlf = bare_lf = False
    carry = b""  # a CR that ended the previous chunk
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            pairs = (carry + chunk).count(b"\r\n")
            crlf = crlf or pairs > 0
            bare_lf = bare_lf or chunk.count(b"\n") > pairs
            if crlf and bare_lf:
                return True
            carry = b"\r" if chunk.endswith(b"\r") else b""
    return False
