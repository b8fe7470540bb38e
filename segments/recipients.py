"""Segment members minus everyone a campaign must not reach, in one query.

``select_recipients`` wraps a compiled segment in the rules no segment can
forget, checked in the same order as the send-time checks in
``flows/delivery.py`` (which still run: this is the first line of defence,
not the only one):

1. deceased: any ``deceased_at``, even one after the run date;
2. no email address;
3. no consent: ``consent_contact`` for any email, and ``consent_marketing``
   as well for marketing;
4. the address is in the ledger's ``suppressions`` table with scope
   ``all`` or the purpose (unsubscribed, hard-bounced). The table stores a
   keyed hash of the address, so the caller passes the hash function and
   DuckDB calls it as a scalar function on the segment's members only;
5. the frequency cap: ``max_messages`` or more messages of the purpose
   sent since ``per_days`` before the run, read from the ledger's
   ``deliveries`` table.

The ledger is read through DuckDB's ``ATTACH ... (TYPE sqlite)`` when the
sqlite extension is already installed. DuckDB 2.0.1 ships it as a separate
download, and carepost never lets DuckDB fetch one (autoinstall is off), so
without it the two small row sets the query needs are read with SQLAlchemy
(SQLite or PostgreSQL) into temporary DuckDB tables instead.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import duckdb
import pyarrow as pa
from carepost.core.campaign import FrequencyCap
from carepost.core.states import DeliveryState, Purpose
from carepost.segments.compiler import CompiledSegment
from carepost.ledger.database import create_ledger_engine
from sqlalchemy import DateTime, bindparam, inspect, make_url, text

log = logging.getLogger(__name__)

# Identifiers only: the consent columns each purpose requires. Contact
# consent is the floor for any email, as in the send-time check.
CONSENT_COLUMNS = {
    Purpose.MARKETING: ("consent_contact", "consent_marketing"),
    Purpose.CARE: ("consent_contact",),
}
SUPPRESSED_TABLE = "_carepost_suppressed"
SENT_TABLE = "_carepost_recent_sends"

# The reasons, in the order the send-time checks apply them.
REASONS = ("deceased", "no_address", "no_consent", "suppressed", "frequency_cap")

# Each reason's text in the ledger. The send-time check in flows/delivery.py
# returns the same texts, so a row reads the same whichever check wrote it.
REASON_TEXT = {
    "deceased": "deceased",
    "no_address": "no email address",
    "no_contact_consent": "no contact consent",
    "no_marketing_consent": "no marketing consent",
    "suppressed": "address on the suppression list",
    "frequency_cap": "frequency cap reached",
}


# The counted reason of each detailed one: both consent checks count as
# ``no_consent``.
_REASON_OF = {
    "deceased": "deceased",
    "no_address": "no_address",
    "no_contact_consent": "no_consent",
    "no_marketing_consent": "no_consent",
    "suppressed": "suppressed",
    "frequency_cap": "frequency_cap",
}


@dataclass(frozen=True)
class RecipientRules:
    """What a campaign run adds to its segment."""

    purpose: Purpose
    ledger_url: str
    address_hash: Callable[[str], str]
    frequency_cap: FrequencyCap | None = None
    # The (campaign, run key) whose own sends do not count towards the cap
    # (a re-run of the same date), as in ``Ledger.sent_since``.
    excluded_run: tuple[str, str] | None = None
    # End of the cap window. The campaign flow passes the current time, as
    # the send-time check does. None means the earlier of now and the run
    # date's end.
    cap_until: datetime | None = None


@dataclass(frozen=True)
class RecipientSelection:
    """The profiles that may be sent to, and why the others were removed."""

    profile_ids: list[str]
    segment_size: int
    removed: dict[str, int] = field(default_factory=dict)
    ledger_read_by: str = ""
    # Profile id -> the reason in REASON_TEXT's words, for the ledger.
    removed_ids: dict[str, str] = field(default_factory=dict)


def select_recipients(
    conn: duckdb.DuckDBPyConnection,
    compiled: CompiledSegment,
    *,
    as_of: date,
    rules: RecipientRules,
) -> RecipientSelection:
    """Run ``compiled`` for ``as_of`` and remove everyone the rules exclude."""
    cap_since = _cap_since(as_of, rules.frequency_cap, rules.cap_until)
    read_by = _load_ledger_rows(conn, rules, cap_since)
    function = f"_carepost_address_hash_{uuid.uuid4().hex[:12]}"
    # With an empty suppression list no member needs the keyed hash, which
    # is a Python call per member.
    hashing = _has_rows(conn, SUPPRESSED_TABLE)
    if hashing:
        _register_hash(conn, function, rules.address_hash)
    try:
        sql, params = _query(compiled, as_of, rules, function if hashing else None)
        columns = conn.execute(sql, params).fetchnumpy()
    finally:
        if hashing:
            conn.remove_function(function)
        conn.execute(f"DROP TABLE IF EXISTS {SUPPRESSED_TABLE}")
        conn.execute(f"DROP TABLE IF EXISTS {SENT_TABLE}")

    # One column each: a NumPy mask picks the allowed ids without a Python
    # tuple per member, which matters at millions of members.
    ids, details = columns["profile_id"], columns["detail"]
    allowed_mask = _is_null(details)
    allowed: list[str] = ids[allowed_mask].tolist()
    removed_ids = dict(zip(ids[~allowed_mask].tolist(),
                           (REASON_TEXT[detail] for detail in details[~allowed_mask].tolist())))
    removed = Counter(_REASON_OF[detail] for detail in details[~allowed_mask].tolist())
    log.info(
        "recipients: %d of %d segment members kept, removed %s (ledger read by %s)",
        len(allowed),
        len(ids),
        dict(removed),
        read_by,
    )
    return RecipientSelection(
        profile_ids=allowed,
        segment_size=len(ids),
        removed={reason: removed.get(reason, 0) for reason in REASONS},
        ledger_read_by=read_by,
        removed_ids=removed_ids,
    )


def _cap_since(
    as_of: date, cap: FrequencyCap | None, until: datetime | None
) -> datetime | None:
    """Return the start of the cap window, ``per_days`` before its end.

    The end is ``until`` when given. Otherwise it is the earlier of now and
    the end of the run date, so a run for a past date counts the sends from
    ``per_days`` before that date (and any since).
    """
    if cap is None:
        return None
    if until is None:
        run_end = datetime.combine(as_of + timedelta(days=1), time(), tzinfo=UTC)
        until = min(datetime.now(UTC), run_end)
    return until - timedelta(days=cap.per_days)


def _query(
    compiled: CompiledSegment, as_of: date, rules: RecipientRules, function: str | None
) -> tuple[str, dict[str, Any]]:
    contact, *marketing = CONSENT_COLUMNS[rules.purpose]
    no_marketing = (f"NOT coalesce(p.{marketing[0]}, false)" if marketing
                    else "false")
    cap = rules.frequency_cap
    capped = "coalesce(sent.sent, 0) >= $cap_max" if cap is not None else "false"
    address_hash = (f"CASE WHEN NOT no_address THEN {function}(email) END"
                    if function is not None else "CAST(NULL AS VARCHAR)")
    sql = f"""
WITH segment AS (
{compiled.sql}
),
members AS (
    SELECT s.profile_id,
        p.deceased_at IS NOT NULL AS deceased,
        (p.email IS NULL OR trim(p.email) = '') AS no_address,
        NOT coalesce(p.{contact}, false) AS no_contact,
        {no_marketing} AS no_marketing,
        p.email
    FROM segment AS s JOIN profiles AS p ON p.profile_id = s.profile_id
),
hashed AS (
    SELECT profile_id, deceased, no_address, no_contact, no_marketing,
        {address_hash} AS address_hash
    FROM members
),
reasons AS (
    SELECT h.profile_id,
        CASE
            WHEN h.deceased THEN 'deceased'
            WHEN h.no_address THEN 'no_address'
            WHEN h.no_contact THEN 'no_contact_consent'
            WHEN h.no_marketing THEN 'no_marketing_consent'
            WHEN h.address_hash IN (SELECT address_hash FROM {SUPPRESSED_TABLE})
                THEN 'suppressed'
            WHEN {capped} THEN 'frequency_cap'
        END AS detail
    FROM hashed AS h
    LEFT JOIN {SENT_TABLE} AS sent ON sent.profile_id = h.profile_id
)
SELECT profile_id, detail
FROM reasons
ORDER BY profile_id
"""
    params = compiled.bind(as_of)
    if cap is not None:
        params["cap_max"] = cap.max_messages
    return sql, params


def _has_rows(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    return conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchall() == [(True,)]


def _register_hash(
    conn: duckdb.DuckDBPyConnection, name: str, address_hash: Callable[[str], str]
) -> None:
    """Register ``address_hash`` as a vectorised DuckDB scalar function."""

    def hash_column(addresses: pa.Array) -> pa.Array:
        values = addresses.to_pylist()
        hashed = [None if value is None else address_hash(value) for value in values]
        return pa.array(hashed, type=pa.string())

    conn.create_function(
        name,
        hash_column,
        [duckdb.sqltype("VARCHAR")],
        duckdb.sqltype("VARCHAR"),
        type="arrow",
        null_handling="special",
        side_effects=False,
    )


# --- reading the ledger -----------------------------------------------------


def _suppressed_sql(table: str, mark: str) -> str:
    return (
        f"SELECT DISTINCT address_hash FROM {table} "
        f"WHERE scope IN ('all', {mark}purpose)"
    )


def _sent_sql(table: str, mark: str, since: str, excluding: bool) -> str:
    sql = (
        f"SELECT profile_id, count(*) AS sent FROM {table} "
        f"WHERE purpose = {mark}purpose AND state = {mark}state "
        f"AND updated_at >= {since}"
    )
    if excluding:
        sql += f" AND NOT (campaign = {mark}run_campaign AND run_key = {mark}run_key)"
    return sql + " GROUP BY profile_id"


def _sent_params(rules: RecipientRules, since: datetime) -> dict[str, Any]:
    params: dict[str, Any] = {
        "purpose": rules.purpose.value,
        "state": DeliveryState.SENT.value,
        # The ledger stores naive UTC times (SQLAlchemy's DateTime on SQLite).
        "since": since.astimezone(UTC).replace(tzinfo=None),
    }
    if rules.excluded_run is not None:
        params["run_campaign"], params["run_key"] = rules.excluded_run
    return params


def _load_ledger_rows(
    conn: duckdb.DuckDBPyConnection, rules: RecipientRules, cap_since: datetime | None
) -> str:
    """Fill the two temporary tables; return how the ledger was read."""
    if _attach_available(conn, rules.ledger_url):
        _load_by_attach(conn, rules, cap_since)
        return "duckdb attach"
    _load_by_sqlalchemy(conn, rules, cap_since)
    return "sqlalchemy"


def _attach_available(conn: duckdb.DuckDBPyConnection, ledger_url: str) -> bool:
    if make_url(ledger_url).get_backend_name() != "sqlite":
        return False
    rows = conn.execute(
        "SELECT installed FROM duckdb_extensions() "
        "WHERE extension_name = 'sqlite_scanner'"
    ).fetchall()
    return bool(rows and rows[0][0])


def _load_by_attach(
    conn: duckdb.DuckDBPyConnection, rules: RecipientRules, cap_since: datetime | None
) -> None:
    # NOTE: this path runs only where the sqlite extension is installed;
    # the test machine has none, so the tests cover the SQLAlchemy path.
    path = make_url(rules.ledger_url).database
    alias = "carepost_ledger"
    conn.execute("LOAD sqlite_scanner")
    conn.execute(f"ATTACH '{_quoted(path)}' AS {alias} (TYPE sqlite, READ_ONLY)")
    try:
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE {SUPPRESSED_TABLE} AS "
            + _suppressed_sql(f"{alias}.suppressions", "$"),
            {"purpose": rules.purpose.value},
        )
        if cap_since is None:
            _create_sent_table(conn, [])
            return
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE {SENT_TABLE} AS "
            + _sent_sql(
                f"{alias}.deliveries", "$", "CAST($since AS TIMESTAMP)",
                rules.excluded_run is not None
            ),
            _sent_params(rules, cap_since),
        )
    finally:
        conn.execute(f"DETACH {alias}")


def _quoted(path: str | None) -> str:
    """Quote a file path for ATTACH, which takes no bound parameter."""
    if not path:
        raise ValueError("the sqlite ledger URL names no database file")
    return path.replace("'", "''")


def _load_by_sqlalchemy(
    conn: duckdb.DuckDBPyConnection, rules: RecipientRules, cap_since: datetime | None
) -> None:
    # The ledger's engine settings: on PostgreSQL the session zone is UTC,
    # so the naive window start below means UTC there too.
    engine = create_ledger_engine(rules.ledger_url)
    try:
        with engine.connect() as ledger:
            tables = set(inspect(ledger).get_table_names())
            suppressed: list[Any] = []
            if "suppressions" in tables:
                query = text(_suppressed_sql("suppressions", ":"))
                suppressed = list(
                    ledger.execute(query, {"purpose": rules.purpose.value})
                )
            sent: list[Any] = []
            if cap_since is not None and "deliveries" in tables:
                query = text(
                    _sent_sql("deliveries", ":", ":since", rules.excluded_run is not None)
                ).bindparams(bindparam("since", type_=DateTime()))
                sent = list(ledger.execute(query, _sent_params(rules, cap_since)))
    finally:
        engine.dispose()

    hashes = pa.table(
        {"address_hash": pa.array([row[0] for row in suppressed], pa.string())}
    )
    conn.register("_carepost_hashes", hashes)
    try:
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE {SUPPRESSED_TABLE} AS "
            "SELECT * FROM _carepost_hashes"
        )
    finally:
        conn.unregister("_carepost_hashes")
    _create_sent_table(conn, [(row[0], row[1]) for row in sent])


def _create_sent_table(
    conn: duckdb.DuckDBPyConnection, rows: list[tuple[str, int]]
) -> None:
    counts = pa.table(
        {
            "profile_id": pa.array([row[0] for row in rows], pa.string()),
            "sent": pa.array([row[1] for row in rows], pa.int64()),
        }
    )
    conn.register("_carepost_counts", counts)
    try:
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE {SENT_TABLE} AS "
            "SELECT * FROM _carepost_counts"
        )
    finally:
        conn.unregister("_carepost_counts")


def _is_null(values: Any) -> Any:
    """Return a NumPy mask of the NULLs in a column from ``fetchnumpy``.

    DuckDB returns a masked array when the column has NULLs and a plain
    array when it has none, which ``getmaskarray`` turns into all False.
    """
    import numpy as np

    return np.ma.getmaskarray(values)
