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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, create_engine, event, make_url, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

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


def is_postgres(url_or_engine: str | Engine) -> bool:
    if isinstance(url_or_engine, Engine):
        return url_or_engine.dialect.name == "postgresql"
    return make_url(url_or_engine).get_backend_name() == "postgresql"


def create_ledger_engine(url: str) -> Engine:
    """Create an engine for ``url``, with the PostgreSQL session settings."""
    if not is_postgres(url):
        return create_engine(url)
    engine = create_engine(url, isolation_level="READ COMMITTED")
    event.listen(engine, "connect", _postgres_session)
    return engine


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
        SQLModel.metadata.create_all(engine, tables=tables)
        return
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                           {"key": SCHEMA_LOCK_KEY})
        SQLModel.metadata.create_all(connection, tables=tables)
        if "audit_log" in _existing_tables(connection):
            ensure_audit_triggers(connection)


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
    "create_ledger_engine",
    "create_tables",
    "ensure_audit_triggers",
    "is_postgres",
    "lock_audit_log",
]
