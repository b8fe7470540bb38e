"""Engines and schema creation for a ledger on SQLite or PostgreSQL.

``create_ledger_engine`` and ``create_tables`` are the only ways the ledger
and the audit log open a database. On PostgreSQL they add what SQLite gives
for free, each guarding a failure that ``tests/postgres`` reproduces:

- The session time zone is set to UTC on every new connection. sqlmodel
  0.0.50 maps ``datetime`` fields to ``timestamptz`` and binds them as
  aware UTC, which the server stores exactly in any zone. But the server
  reads a naive ``datetime`` bound in a Core or ``text()`` query (such as
  the segment selection's frequency-cap window) in the session's zone,
  and earlier sqlmodel releases made plain ``timestamp`` columns. With
  the session in UTC a naive time means UTC, as it does on SQLite.
- Transactions run at READ COMMITTED whatever the server's default. The
  claim (``INSERT ... ON CONFLICT DO NOTHING``, then a read) and the audit
  append (lock, then read the last hash) need each statement to see rows
  that other transactions committed. Under REPEATABLE READ a concurrent
  claim of the same key fails with a serialization error instead.
- Table creation holds a transaction-level advisory lock, so several
  workers starting at once against an empty database do not race to
  create the same table (a ``pg_type`` unique violation otherwise).
- ``audit_log`` gets triggers that reject UPDATE, DELETE and TRUNCATE, the
  counterpart of the SQLite triggers in ``carepost.ledger.audit``.

Every engine made here turns a failed first connection (a wrong password,
nothing listening, an unknown database) into ``LedgerConnectionError``, a
``CarepostError`` of one line that names the host and port but never the
password. The driver's error stays as ``__cause__``.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, create_engine, event, make_url, text
from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext
from sqlalchemy.exc import OperationalError
from sqlmodel import SQLModel

from carepost.core.errors import CarepostError

# Any constant works: it only has to be the same in every carepost process.
SCHEMA_LOCK_KEY = 0x6361726570_6F7374  # "carepost" in ASCII, as a bigint

AUDIT_TRIGGERS = ("audit_log_no_update", "audit_log_no_delete",
                  "audit_log_no_truncate")
# The purge disables this trigger inside its own transaction only.
AUDIT_DELETE_TRIGGER = "audit_log_no_delete"

_AUDIT_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % rejected; expired entries '
        'are removed by carepost purge', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""
_AUDIT_TRIGGER_EVENTS = {
    "audit_log_no_update": "BEFORE UPDATE ON audit_log FOR EACH ROW",
    "audit_log_no_delete": "BEFORE DELETE ON audit_log FOR EACH ROW",
    "audit_log_no_truncate": "BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT",
}


# libpq's reasons after "failed: ", matched in order; group 1 is quoted.
_PASSWORD_FIX = "check PGPASSWORD or ~/.pgpass"
_URL_FIX = "check ledger.url in carepost.yaml"
_CONNECT_REASONS = (
    (re.compile(r'password authentication failed for user "([^"]*)"'),
     'authentication failed for user "{0}"', _PASSWORD_FIX),
    (re.compile(r"(no password supplied)"),
     "no password supplied", _PASSWORD_FIX),
    (re.compile(r'role "([^"]*)" does not exist'),
     'role "{0}" does not exist', "create the role, or " + _URL_FIX),
    (re.compile(r'database "([^"]*)" does not exist'),
     'database "{0}" does not exist', "create the database, or " + _URL_FIX),
    (re.compile(r"(Connection refused)"),
     "connection refused", "start PostgreSQL there, or " + _URL_FIX),
    (re.compile(r"(timeout expired)"),
     "connection timed out", "check the host and firewall, or " + _URL_FIX),
)


class LedgerConnectionError(CarepostError):
    """The ledger database could not be reached or rejected the login.

    ``reason`` is libpq's (or SQLite's) reason in one line; the message
    names the host and port (or SQLite's file) and never the password.
    """

    def __init__(self, reason: str, where: str, hint: str) -> None:
        self.reason = reason
        self.where = where
        super().__init__(f"ledger database: {reason} at {where}", hint=hint)


def is_postgres(url_or_engine: str | Engine) -> bool:
    if isinstance(url_or_engine, Engine):
        return url_or_engine.dialect.name == "postgresql"
    return make_url(url_or_engine).get_backend_name() == "postgresql"


def create_ledger_engine(url: str) -> Engine:
    """Create an engine for ``url``, with the PostgreSQL session settings.

    A failed first connection raises ``LedgerConnectionError``.
    """
    if not is_postgres(url):
        engine = create_engine(url)
    else:
        engine = create_engine(url, isolation_level="READ COMMITTED")
        event.listen(engine, "connect", _postgres_session)
    event.listen(engine, "handle_error", _convert_connect_error)
    return engine


def _convert_connect_error(context: ExceptionContext) -> None:
    # SQLAlchemy leaves ``connection`` unset only when connecting failed;
    # errors of a statement on an open connection pass through unchanged.
    if context.connection is not None:
        return
    if not isinstance(context.sqlalchemy_exception, OperationalError):
        return
    raise connect_error(context.engine.url, context.original_exception)


def connect_error(url: URL, error: BaseException) -> LedgerConnectionError:
    """Describe a failed connection to ``url`` in one line, without the password."""
    # libpq puts the reason after "failed: "; its hint follows on a new line.
    text_lines = str(error).strip().splitlines() or ["unknown error"]
    reason = text_lines[0].rpartition("failed: ")[2].removeprefix("FATAL:").strip()
    where = _describe_target(url)
    for pattern, template, hint in _CONNECT_REASONS:
        found = pattern.search(reason)
        if found is not None:
            return LedgerConnectionError(template.format(found.group(1)), where, hint)
    return LedgerConnectionError(reason, where, _URL_FIX)


def _describe_target(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return url.database or "an in-memory database"
    host = url.host or url.query.get("host") or "the local socket"
    return f"{host}:{url.port or 5432}"


def _postgres_session(dbapi_connection: Any, _record: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'UTC'")
    dbapi_connection.commit()


def create_tables(engine: Engine, tables: Sequence[Table] | None = None) -> None:
    """Create the missing tables of ``SQLModel.metadata`` (or of ``tables``).

    On PostgreSQL this also adds the audit triggers an older ``audit_log``
    may lack, under the same lock as the tables.
    """
    if not is_postgres(engine):
        _create_sqlite_tables(engine, tables)
        return
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                           {"key": SCHEMA_LOCK_KEY})
        SQLModel.metadata.create_all(connection, tables=tables)
        if "audit_log" in _existing_tables(connection):
            ensure_audit_triggers(connection)


def _create_sqlite_tables(engine: Engine, tables: Sequence[Table] | None) -> None:
    """Create missing tables while holding a lock file beside the database.

    ``create_all`` checks for each table, then creates it. Two processes on
    a new SQLite file (two scheduled runs due the same minute) could both
    see a table missing, and the second CREATE would fail with "already
    exists". The lock makes them take turns; the second finds the tables.
    """
    database = engine.url.database
    if not database or database == ":memory:" or not os.path.isdir(
            os.path.dirname(os.path.abspath(database))):
        # No file to guard. A missing folder fails in create_all with the
        # ledger connection error that names it.
        SQLModel.metadata.create_all(engine, tables=tables)
        return
    with open(f"{database}.create-lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            SQLModel.metadata.create_all(engine, tables=tables)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _existing_tables(connection: Connection) -> set[str]:
    rows = connection.execute(text(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"))
    return {name for (name,) in rows}


def ensure_audit_triggers(connection: Connection) -> None:
    """Create the append-only triggers on ``audit_log`` that are missing."""
    found = {name for (name,) in connection.execute(text(
        "SELECT tgname FROM pg_trigger "
        "WHERE tgrelid = to_regclass('audit_log') AND NOT tgisinternal"))}
    missing = [name for name in AUDIT_TRIGGERS if name not in found]
    if not missing:
        return
    connection.execute(text(_AUDIT_FUNCTION))
    for name in missing:
        connection.execute(text(f"CREATE TRIGGER {name} {_AUDIT_TRIGGER_EVENTS[name]} "
                                "EXECUTE FUNCTION audit_log_append_only()"))


def lock_audit_log(connection: Connection) -> None:
    """Take the audit append lock for the rest of the current transaction.

    EXCLUSIVE mode blocks other appends and purges but not plain reads.
    """
    connection.exec_driver_sql("LOCK TABLE audit_log IN EXCLUSIVE MODE")


__all__ = [
    "AUDIT_DELETE_TRIGGER",
    "AUDIT_TRIGGERS",
    "LedgerConnectionError",
    "connect_error",
    "create_ledger_engine",
    "create_tables",
    "ensure_audit_triggers",
    "is_postgres",
    "lock_audit_log",
]
