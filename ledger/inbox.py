"""Durable inbox of webhook events, pending trigger sends and schedule leases.

Three tables, created with the ledger's other tables:

- ``inbox_events``: one row per accepted CDP event. ``event_id`` is the
  primary key, so a replayed webhook or a CDP retry is recognised and
  triggers nothing twice. A row keeps ids, the type, the time and an
  allow-list of id properties; never a name, an address or free text.
- ``pending_sends``: work the behaviour flow still has to do: a triggered
  reminder waiting for its delay, a recipient held until their send
  window opens, or an escalation check. ``(campaign, run_key,
  profile_id)`` is unique, the same key as the delivery ledger's.
- ``scheduled_runs``: one row per (campaign, run date) of a scheduled
  campaign. It is the lease that stops a second or restored instance
  from running the same schedule, and it records runs that expired.

Invariants a change must keep: ``accept`` commits before the webhook gets
its reply; every state change of a pending send is a conditional UPDATE
from ``pending``, so two processes working the same row settle it once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, String, UniqueConstraint, bindparam, func, insert, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, select

from carepost.ledger.ledger import insert_skipping_duplicates
from carepost.ledger.models import OutboxEvent, utc_now

log = logging.getLogger(__name__)

# Event properties the inbox keeps: ids that trigger keys and cancel
# rules match on. Everything else in a webhook body is dropped.
KEPT_PROPERTIES = ("appointment_id", "rx_id", "form_id")


class PendingKind(StrEnum):
    TRIGGER = "trigger"        # a triggered reminder waiting for its delay
    WINDOW = "window"          # a recipient held until their send window opens
    ESCALATION = "escalation"  # check whether reminders went unanswered


class PendingState(StrEnum):
    PENDING = "pending"
    DONE = "done"            # handed to the delivery pipeline (see ``outcome``)
    CANCELLED = "cancelled"  # a cancel rule matched at send time
    EXPIRED = "expired"      # its send_by deadline passed first


class InboxEvent(SQLModel, table=True):
    """One accepted CDP event; ``event_id`` is the CDP's id."""

    __tablename__ = "inbox_events"

    event_id: str = Field(primary_key=True)
    source: str
    type: str = Field(index=True)
    profile_id: str = Field(index=True)
    occurred_at: datetime = Field(index=True)
    properties: str = "{}"
    received_at: datetime = Field(default_factory=utc_now)
    planned_at: datetime | None = Field(default=None, index=True)

    def property_map(self) -> dict[str, Any]:
        return json.loads(self.properties)


class PendingSend(SQLModel, table=True):
    """Work the behaviour flow still owes one profile for one campaign run."""

    __tablename__ = "pending_sends"
    __table_args__ = (UniqueConstraint("campaign", "run_key", "profile_id"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign: str = Field(index=True)
    run_key: str
    profile_id: str
    kind: str
    trigger_key: str | None = None
    reminder: int = 1
    event_id: str | None = None
    event_at: datetime | None = None
    due_at: datetime = Field(index=True)
    deadline: datetime
    state: str = Field(sa_column=Column(String, nullable=False, index=True))
    outcome: str | None = None
    created_at: datetime = Field(default_factory=utc_now)
    updated_at: datetime = Field(default_factory=utc_now)


class ScheduledRun(SQLModel, table=True):
    """The lease on one (campaign, run date) of a scheduled campaign."""

    __tablename__ = "scheduled_runs"
    __table_args__ = (UniqueConstraint("campaign", "run_key"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign: str
    run_key: str
    scheduled_for: datetime
    state: str  # started, expired
    reason: str | None = None
    created_at: datetime = Field(default_factory=utc_now)


@dataclass(frozen=True)
class IncomingEvent:
    """A verified, mapped webhook event, before it is stored."""

    event_id: str
    source: str
    type: str
    profile_id: str
    occurred_at: datetime
    properties: dict[str, str]


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC time (SQLite returns naive UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def kept_properties(properties: dict[str, Any]) -> dict[str, str]:
    """Keep the allow-listed id properties, as strings."""
    return {key: str(properties[key]) for key in KEPT_PROPERTIES
            if properties.get(key) not in (None, "")}


class Inbox:
    """Reads and writes the three tables through the ledger's engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- inbox ---------------------------------------------------------------

    def accept(self, incoming: IncomingEvent) -> bool:
        """Store and commit an event; False when its id was seen before."""
        row = {
            "event_id": incoming.event_id, "source": incoming.source,
            "type": incoming.type, "profile_id": incoming.profile_id,
            "occurred_at": as_utc(incoming.occurred_at),
            "properties": json.dumps(kept_properties(incoming.properties),
                                     sort_keys=True),
            "received_at": utc_now(), "planned_at": None,
        }
        # A Core INSERT: the webhook route runs this once per request.
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(InboxEvent.__table__), row)
        except IntegrityError:
            return False
        return True

    def unplanned(self, limit: int = 500) -> list[InboxEvent]:
        with self._session() as session:
            return list(session.exec(
                select(InboxEvent).where(InboxEvent.planned_at.is_(None))
                .order_by(InboxEvent.received_at).limit(limit)))

    def plan(self, planned: dict[str, list[PendingSend]]) -> int:
        """Add each event's pending sends and mark the events planned.

        One transaction for the whole batch. A send whose key already
        exists (the same trigger key from another event) is skipped;
        returns how many were added.
        """
        rows = [send.model_dump(exclude={"id"})
                for sends in planned.values() for send in sends]
        table = PendingSend.__table__
        added = 0
        with self.engine.begin() as connection:
            if rows:
                # Counted from RETURNING: psycopg reports no row count (-1)
                # for an executemany, and skipped duplicates return no row.
                statement = insert_skipping_duplicates(
                    self.engine, table, ["campaign", "run_key", "profile_id"])
                added = len(connection.execute(
                    statement.returning(table.c.id), rows).all())
            connection.execute(update(InboxEvent)
                               .where(InboxEvent.event_id.in_(list(planned)))
                               .values(planned_at=utc_now()))
        return added

    def has_event_after(self, *, profile_id: str, event_type: str, after: datetime,
                        key: tuple[str, str] | None = None) -> bool:
        """Return whether the profile has an ``event_type`` after ``after``."""
        with self._session() as session:
            rows = session.exec(
                select(InboxEvent.properties).where(
                    InboxEvent.profile_id == profile_id,
                    InboxEvent.type == event_type,
                    InboxEvent.occurred_at > as_utc(after))).all()
        if key is None:
            return bool(rows)
        name, value = key
        return any(json.loads(raw).get(name) == value for raw in rows)

    def events_after(self, *, profile_ids: Sequence[str], event_types: Sequence[str],
                     after: datetime) -> list[tuple[str, str, datetime, dict[str, Any]]]:
        """Return (profile id, type, time, properties) of matching events.

        The behaviour pass reads the cancel events of all its due sends
        with this one query instead of one ``has_event_after`` per send.
        """
        if not profile_ids or not event_types:
            return []
        table = InboxEvent.__table__
        query = (select(table.c.profile_id, table.c.type, table.c.occurred_at,
                        table.c.properties)
                 .where(table.c.profile_id.in_(list(profile_ids)),
                        table.c.type.in_(list(event_types)),
                        table.c.occurred_at > as_utc(after)))
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [(profile_id, event_type, as_utc(occurred_at), json.loads(raw))
                for profile_id, event_type, occurred_at, raw in rows]

    # -- pending sends --------------------------------------------------------

    def add_pending(self, send: PendingSend) -> bool:
        with self._session() as session:
            session.add(send)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                return False
        return True

    def due(self, now: datetime, limit: int = 500) -> list[PendingSend]:
        with self._session() as session:
            return list(session.exec(
                select(PendingSend)
                .where(PendingSend.state == PendingState.PENDING,
                       PendingSend.due_at <= as_utc(now))
                .order_by(PendingSend.due_at, PendingSend.id).limit(limit)))

    def next_due_at(self) -> datetime | None:
        with self._session() as session:
            found = session.exec(
                select(func.min(PendingSend.due_at))
                .where(PendingSend.state == PendingState.PENDING)).one()
        return as_utc(found) if found is not None else None

    def finish(self, pending_id: int, state: PendingState, outcome: str) -> bool:
        """Settle a pending send once; False if another process settled it."""
        return self._update_pending(pending_id, state=state, outcome=outcome)

    def finish_many(self, finished: Sequence[tuple[int, PendingState, str]]) -> None:
        """Settle several pending sends in one transaction.

        ``finished`` contains (id, state, outcome) triples. Like ``finish``,
        each UPDATE only moves a row that is still ``pending``.
        """
        if not finished:
            return
        table = PendingSend.__table__
        statement = (update(table)
                     .where(table.c.id == bindparam("pending_id"),
                            table.c.state == PendingState.PENDING.value)
                     .values(state=bindparam("new_state"),
                             outcome=bindparam("new_outcome"),
                             updated_at=utc_now()))
        with self.engine.begin() as connection:
            connection.execute(statement, [
                {"pending_id": pending_id, "new_state": state.value,
                 "new_outcome": outcome}
                for pending_id, state, outcome in finished])

    def reschedule(self, pending_id: int, due_at: datetime, outcome: str) -> bool:
        return self._update_pending(pending_id, due_at=as_utc(due_at),
                                    outcome=outcome)

    def hold_for_window(self, send: PendingSend) -> None:
        """Record a recipient held until ``send.due_at``, or move its hold."""
        if self.add_pending(send):
            return
        with self._session() as session:
            session.exec(
                update(PendingSend)
                .where(PendingSend.campaign == send.campaign,
                       PendingSend.run_key == send.run_key,
                       PendingSend.profile_id == send.profile_id)
                .values(due_at=as_utc(send.due_at), state=PendingState.PENDING,
                        outcome=send.outcome, updated_at=utc_now()))
            session.commit()

    def _update_pending(self, pending_id: int, **values: Any) -> bool:
        statement = (update(PendingSend)
                     .where(PendingSend.id == pending_id,
                            PendingSend.state == PendingState.PENDING)
                     .values(updated_at=utc_now(), **values))
        with self.engine.begin() as connection:
            moved = connection.execute(statement).rowcount
        return moved == 1

    def pending_rows(self, campaign: str | None = None) -> Sequence[PendingSend]:
        query = select(PendingSend).order_by(PendingSend.id)
        if campaign is not None:
            query = query.where(PendingSend.campaign == campaign)
        with self._session() as session:
            return list(session.exec(query))

    def queue_event(self, event: OutboxEvent) -> bool:
        """Add an event to the CDP outbox once; False if its id is queued."""
        with self._session() as session:
            if session.get(OutboxEvent, event.event_id) is not None:
                return False
            session.add(event)
            session.commit()
        return True

    # -- scheduled runs -------------------------------------------------------

    def lease_scheduled_run(self, campaign: str, run_key: str,
                            scheduled_for: datetime, *, state: str = "started",
                            reason: str | None = None) -> bool:
        """Record a scheduled run; False when that run was already recorded."""
        row = ScheduledRun(campaign=campaign, run_key=run_key,
                           scheduled_for=as_utc(scheduled_for), state=state,
                           reason=reason)
        with self._session() as session:
            session.add(row)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                return False
        return True

    def scheduled_runs(self, campaign: str) -> list[ScheduledRun]:
        with self._session() as session:
            return list(session.exec(
                select(ScheduledRun).where(ScheduledRun.campaign == campaign)
                .order_by(ScheduledRun.id)))
