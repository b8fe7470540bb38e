"""Append-only, hash-chained audit log of access to and disclosure of PHI.

Each ``audit_log`` row stores who (``actor``: the service identity from
``CAREPOST_SERVICE_IDENTITY``, else the OS user), when, what (``action``),
on what (``target``: a campaign, a run key, a file name) and ``details``
(ids and counts only). ``entry_hash`` is the SHA-256 of the row's
canonical JSON form, which includes ``prev_hash``, the previous row's
``entry_hash``. Editing, deleting or reordering a row therefore breaks the
chain at that row, and ``AuditLog.verify`` names it.

Invariants a change must keep:

- There is no update or delete API. Triggers abort UPDATE and DELETE on
  the table (on PostgreSQL also TRUNCATE; see ``carepost.ledger.database``).
  The retention purge (``carepost.ledger.retention``)
  is the one documented way to remove expired entries: it removes the
  oldest entries only and records a ``retention.purged`` entry naming the
  last removed id and its hash, which becomes the new start of the chain.
- Details never carry PHI: values are ``str``, ``int`` or ``None``, and a
  value that looks like an email address or is a ``PHI`` object is
  rejected. Callers pass ids, counts, run keys and hashes.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import IO, Any

from sqlalchemy import DDL, Column, Integer, String, Text, event, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Field, Session, SQLModel, select

from carepost.core.errors import CarepostError
from carepost.core.phi import PHI
from carepost.ledger.database import (
    create_ledger_engine,
    create_tables,
    is_postgres,
    lock_audit_log,
)

SERVICE_IDENTITY_ENV = "CAREPOST_SERVICE_IDENTITY"
GENESIS_HASH = "0" * 64
PURGE_ACTION = "retention.purged"
MAX_DETAIL_LENGTH = 8192

_EMAIL = re.compile(r"[^\s@<>]+@[^\s@<>]+")
_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

DetailValue = str | int | None


class AuditError(CarepostError):
    """An audit entry is invalid (PHI-like detail) or could not be written."""


class AuditEntry(SQLModel, table=True):
    """One audit record; ``entry_hash`` chains it to the previous one."""

    __tablename__ = "audit_log"

    # The id is assigned inside the locked append transaction (last id + 1)
    # because it is part of the hashed canonical form.
    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    # ISO 8601 UTC text, so the hashed form survives any database round trip.
    created_at: str = Field(sa_column=Column(String(40), nullable=False, index=True))
    actor: str
    action: str = Field(index=True)
    target: str = Field(index=True)
    details: str = Field(sa_column=Column(Text, nullable=False))
    prev_hash: str = Field(sa_column=Column(String(64), nullable=False))
    entry_hash: str = Field(sa_column=Column(String(64), nullable=False))

    def details_dict(self) -> dict[str, DetailValue]:
        return json.loads(self.details)

    def to_record(self) -> dict[str, Any]:
        """Return the entry as a plain dict, the shape of an export line."""
        return {"id": self.id, "created_at": self.created_at, "actor": self.actor,
                "action": self.action, "target": self.target,
                "details": self.details_dict(), "prev_hash": self.prev_hash,
                "entry_hash": self.entry_hash}


# SQLite: the table rejects UPDATE always and DELETE unless the retention
# purge dropped the trigger inside its own transaction.
SQLITE_NO_UPDATE = (
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
)
SQLITE_NO_DELETE = (
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only; expired entries are "
    "removed by carepost purge'); END"
)
for _statement in (SQLITE_NO_UPDATE, SQLITE_NO_DELETE):
    event.listen(AuditEntry.__table__, "after_create",
                 DDL(_statement).execute_if(dialect="sqlite"))
# PostgreSQL: ``carepost.ledger.database.create_tables`` adds the triggers.


def insert_entry(session: Session, *, actor: str, action: str, target: str,
                 details: str) -> AuditEntry:
    """Add one entry chained to the last one; the caller commits.

    ``details`` is the JSON text ``encode_details`` returned. The session
    must come from ``AuditLog.write_session`` so no other append interleaves.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.exec(text("LOCK TABLE audit_log IN EXCLUSIVE MODE"))
    last = session.exec(
        select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)
    ).first()
    entry = AuditEntry(
        id=(last.id + 1) if last else 1,
        created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
        actor=actor, action=action, target=target, details=details,
        prev_hash=last.entry_hash if last else GENESIS_HASH,
        entry_hash="",
    )
    entry.entry_hash = compute_hash(entry)
    session.add(entry)
    session.flush()
    return entry


def canonical_form(entry: AuditEntry) -> str:
    """Return the JSON text that ``entry_hash`` is computed over."""
    fields = {"id": entry.id, "created_at": entry.created_at, "actor": entry.actor,
              "action": entry.action, "target": entry.target,
              "details": json.loads(entry.details), "prev_hash": entry.prev_hash}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def compute_hash(entry: AuditEntry) -> str:
    return hashlib.sha256(canonical_form(entry).encode()).hexdigest()


def default_actor() -> str:
    """Return the service identity if one is set, else the OS user name."""
    identity = os.environ.get(SERVICE_IDENTITY_ENV, "").strip()
    if identity:
        return identity
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        return f"uid:{os.getuid()}"


def check_value(name: str, value: object) -> None:
    """Raise ``AuditError`` unless ``value`` is an id, a count or None."""
    if isinstance(value, PHI):
        raise AuditError(f"audit field {name} is a PHI value",
                         hint="pass a profile id or a count instead")
    if value is not None and not isinstance(value, (str, int)):
        raise AuditError(f"audit field {name} has type {type(value).__name__}",
                         hint="pass a str, an int or None")
    if isinstance(value, str):
        if _EMAIL.search(value):
            raise AuditError(f"audit field {name} looks like an email address",
                             hint="pass the profile id or the address hash")
        if len(value) > MAX_DETAIL_LENGTH:
            raise AuditError(f"audit field {name} has {len(value)} characters, "
                             f"more than {MAX_DETAIL_LENGTH}",
                             hint="pass a count or an id range")


def encode_details(details: dict[str, DetailValue] | None) -> str:
    details = details or {}
    for key, value in details.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise AuditError(f"audit detail key {key!r} is not a lower-case "
                             "identifier", hint="use names like delivery_ids")
        check_value(key, value)
    return json.dumps(details, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class ChainProblem:
    """A place where the chain does not hold, with both hashes when known."""

    entry_id: int
    problem: str
    expected: str | None = None
    found: str | None = None

    def describe(self) -> str:
        text = f"entry {self.entry_id}: {self.problem}"
        if self.expected is not None or self.found is not None:
            text += f" (expected {self.expected}, found {self.found})"
        return text


@dataclass(frozen=True)
class VerifyReport:
    entries: int
    first_id: int | None
    last_id: int | None
    head_hash: str
    problems: list[ChainProblem]

    @property
    def ok(self) -> bool:
        return not self.problems


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" hook issue BEGIN IMMEDIATE itself; the
    # driver's implicit BEGIN would take the write lock too late.
    dbapi_connection.isolation_level = None
    _sqlite_pragmas(dbapi_connection, _record)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # The write lock is taken before the last hash is read, so two
    # processes appending at once cannot both chain to the same entry.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class AuditLog:
    """The audit trail in the ledger database at ``ledger_url``."""

    def __init__(self, ledger_url: str) -> None:
        self.url = ledger_url
        self.is_sqlite = ledger_url.startswith("sqlite")
        # Reads use a plain engine (WAL readers do not block writers); the
        # writer engine takes SQLite's write lock when a transaction begins.
        self.engine: Engine = create_ledger_engine(ledger_url)
        self._writer: Engine = create_ledger_engine(ledger_url)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self._writer, "connect", _sqlite_connect)
            event.listen(self._writer, "begin", _sqlite_begin)
        create_tables(self._writer, tables=[AuditEntry.__table__])
        if self.is_sqlite:
            with self._writer.begin() as connection:
                connection.execute(text(SQLITE_NO_UPDATE))
                connection.execute(text(SQLITE_NO_DELETE))
        elif is_postgres(self._writer):
            # Registered after the table exists: the lock names it.
            event.listen(self._writer, "begin", lock_audit_log)

    def close(self) -> None:
        self.engine.dispose()
        self._writer.dispose()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def append(self, *, actor: str | None = None, action: str, target: str,
               details: dict[str, DetailValue] | None = None) -> AuditEntry:
        """Append one entry chained to the current last one and return it."""
        check_value("target", target)
        check_value("action", action)
        encoded = encode_details(details)
        who = actor if actor is not None else default_actor()
        check_value("actor", who)
        with self.write_session() as session:
            entry = insert_entry(session, actor=who, action=action, target=target,
                                 details=encoded)
            session.commit()
        return entry

    def write_session(self) -> Session:
        """Open a session whose transaction holds the audit write lock.

        SQLite takes it at BEGIN (see ``_sqlite_begin``) and PostgreSQL
        with a ``LOCK TABLE`` as the transaction's first statement, so a
        purge that reads before it appends is serialised with appends too.
        """
        return Session(self._writer, expire_on_commit=False)

    def entries(self, *, since: date | datetime | None = None,
                action: str | None = None, target: str | None = None
                ) -> Iterator[AuditEntry]:
        """Yield entries in id order, optionally filtered."""
        query = select(AuditEntry).order_by(AuditEntry.id)
        if since is not None:
            query = query.where(AuditEntry.created_at >= _iso_start(since))
        if action is not None:
            query = query.where(AuditEntry.action == action)
        if target is not None:
            query = query.where(AuditEntry.target == target)
        with Session(self.engine, expire_on_commit=False) as session:
            yield from session.exec(query.execution_options(yield_per=1000))

    def last(self, *, action: str, target: str) -> AuditEntry | None:
        """Return the newest entry of ``action`` on ``target``, if any."""
        with Session(self.engine, expire_on_commit=False) as session:
            return session.exec(
                select(AuditEntry)
                .where(AuditEntry.action == action, AuditEntry.target == target)
                .order_by(AuditEntry.id.desc()).limit(1)
            ).first()

    def record_change(self, *, kind: str, target: str, sha256: str,
                      details: dict[str, DetailValue] | None = None
                      ) -> AuditEntry | None:
        """Append ``<kind>.changed`` when ``sha256`` differs from the last one.

        Used for carepost.yaml and template versions at each campaign run,
        so the log shows every configuration a run actually used.
        """
        action = f"{kind}.changed"
        previous = self.last(action=action, target=target)
        if previous is not None and previous.details_dict().get("sha256") == sha256:
            return None
        merged: dict[str, DetailValue] = dict(details or {})
        merged["sha256"] = sha256
        merged["previous_sha256"] = (previous.details_dict().get("sha256")
                                     if previous else None)
        return self.append(action=action, target=target, details=merged)

    def verify(self) -> VerifyReport:
        """Recompute the chain and report every entry where it breaks."""
        return verify_chain(self.entries())


def verify_chain(entries: Iterable[AuditEntry]) -> VerifyReport:
    """Check ids, hashes and links of ``entries`` given in id order.

    The first entry may start after id 1 only if a ``retention.purged`` entry
    later in the chain names the removed range and the hash it ends with.
    """
    problems: list[ChainProblem] = []
    purge_anchors: dict[int, str] = {}
    previous: AuditEntry | None = None
    first: AuditEntry | None = None
    count = 0
    for entry in entries:
        count += 1
        first = first or entry
        problems.extend(_check_entry(entry, previous))
        if entry.action == PURGE_ACTION:
            anchor = _purge_anchor(entry)
            if anchor is not None:
                purge_anchors[anchor[0]] = anchor[1]
        previous = entry
    if first is not None:
        problems[:0] = _check_start(first, purge_anchors)
    return VerifyReport(entries=count, first_id=first.id if first else None,
                        last_id=previous.id if previous else None,
                        head_hash=previous.entry_hash if previous else GENESIS_HASH,
                        problems=problems)


def _check_entry(entry: AuditEntry, previous: AuditEntry | None
                 ) -> list[ChainProblem]:
    problems = []
    try:
        recomputed = compute_hash(entry)
    except (ValueError, TypeError):
        recomputed = "(details are not valid JSON)"
    if recomputed != entry.entry_hash:
        problems.append(ChainProblem(entry.id, "contents do not match its hash "
                                     "(edited)", recomputed, entry.entry_hash))
    if previous is None:
        return problems
    if entry.id != previous.id + 1:
        problems.append(ChainProblem(
            entry.id, f"follows entry {previous.id}; entries "
            f"{previous.id + 1}..{entry.id - 1} are missing (deleted)"))
    if entry.prev_hash != previous.entry_hash:
        problems.append(ChainProblem(entry.id, "previous-entry hash does not "
                                     "match (deleted, inserted or reordered)",
                                     previous.entry_hash, entry.prev_hash))
    return problems


def _check_start(first: AuditEntry, anchors: dict[int, str]) -> list[ChainProblem]:
    if first.id == 1:
        if first.prev_hash != GENESIS_HASH:
            return [ChainProblem(1, "first entry does not start the chain",
                                 GENESIS_HASH, first.prev_hash)]
        return []
    anchor = anchors.get(first.id - 1)
    if anchor is None:
        return [ChainProblem(first.id, f"entries 1..{first.id - 1} are missing "
                             "and no retention.purged entry records their removal")]
    if anchor != first.prev_hash:
        return [ChainProblem(first.id, "previous-entry hash does not match the "
                             "purge record", anchor, first.prev_hash)]
    return []


def _purge_anchor(entry: AuditEntry) -> tuple[int, str] | None:
    details = entry.details_dict()
    through, anchor = details.get("through_id"), details.get("through_hash")
    if isinstance(through, int) and isinstance(anchor, str):
        return through, anchor
    return None


def export_entries(audit: AuditLog, since: date, handle: IO[str]) -> int:
    """Write entries created on or after ``since`` as JSON Lines; return the count."""
    count = 0
    for entry in audit.entries(since=since):
        handle.write(json.dumps(entry.to_record(), sort_keys=True) + "\n")
        count += 1
    return count


def id_ranges(ids: Iterable[int]) -> str:
    """Return sorted ids as compact ranges, such as ``"3-7,9,12-40"``."""
    ordered = sorted(set(ids))
    parts: list[str] = []
    start = previous = None
    for number in ordered + [None]:
        if previous is not None and number == previous + 1:
            previous = number
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = number
    return ",".join(parts)


def parse_id_ranges(text: str) -> list[int]:
    """Return the ids that ``id_ranges`` encoded in ``text``."""
    ids: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        ids.extend(range(int(first), int(last or first) + 1))
    return ids


def _iso_start(moment: date | datetime) -> str:
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
