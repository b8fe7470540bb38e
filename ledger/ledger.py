"""The delivery ledger: every send is claimed here before SMTP.

Invariants a change must keep:

- A row is written (``queued``) and moved to ``sending`` in committed
  transactions *before* the SMTP transaction starts.
- Only one execution can move a row to ``sending``: the move is a
  conditional UPDATE, so two concurrent runs of the same campaign run
  send one message, not two.
- A row in ``sending`` is an unknown outcome (crash, or no reply after
  DATA). It is reported and never resent automatically.
- The outbox event of a settled delivery is written in the same
  transaction as the settlement, so an event is never lost or invented.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Iterable

from sqlalchemy import Table, and_, event, func, not_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import Insert
from sqlmodel import Session, select

from carepost.core.states import DeliveryState, Purpose
from carepost.ledger.database import create_ledger_engine, create_tables
from carepost.ledger.models import (
    Delivery,
    OutboxEvent,
    PurgedRun,
    Suppression,
    utc_now,
)

log = logging.getLogger(__name__)

# States a later execution may take up again. Nothing of a render failure
# or a TLS drop left the machine, so a re-run after the template or relay
# is fixed may try again; ``sent`` and ``bounced`` reached a server and
# ``suppressed`` covers consent, deceased and expiry, so those are final.
_RETRYABLE = (DeliveryState.QUEUED, DeliveryState.DEFERRED,
              DeliveryState.RENDER_FAILED, DeliveryState.DROPPED_NO_TLS)
# Ids per IN list, well under SQLite's limit on bound variables.
_IN_LIST_SIZE = 900


def hash_address(key: bytes, address: str) -> str:
    """Return a keyed hash of an address: stable, but not reversible."""
    normalised = address.strip().lower().encode()
    return hmac.new(key, normalised, hashlib.sha256).hexdigest()[:40]


def delivery_key(campaign: str, run_key: str, profile_id: str) -> str:
    return f"{campaign}/{run_key}/{profile_id}"


class ClaimStatus(StrEnum):
    CLAIMED = "claimed"      # this execution may try to send
    DONE = "done"            # already settled by an earlier execution
    AMBIGUOUS = "ambiguous"  # left in ``sending``: outcome unknown


@dataclass(frozen=True)
class Claim:
    status: ClaimStatus
    delivery_id: int


@dataclass(frozen=True)
class ClaimRequest:
    """One delivery to claim: its key, its purpose and the row's other columns."""

    campaign: str
    run_key: str
    profile_id: str
    purpose: Purpose
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settlement:
    state: DeliveryState
    reason: str | None = None
    smtp_code: int | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    cert_sha256: str | None = None


class Ledger:
    def __init__(self, url: str) -> None:
        self.engine = create_ledger_engine(url)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        create_tables(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- claiming and settling -------------------------------------------

    def claim(self, *, campaign: str, run_key: str, profile_id: str,
              purpose: Purpose, **fields: Any) -> Claim:
        """Insert the delivery row as ``queued``, or report the existing one."""
        [claim] = self.claim_many([ClaimRequest(campaign, run_key, profile_id,
                                                purpose, fields)])
        return claim

    def claim_many(self, requests: Sequence[ClaimRequest]) -> list[Claim]:
        """Claim several deliveries in one transaction; return claims in order.

        New keys are inserted as ``queued`` and existing keys are left as
        they are. Each key's row is then read back in the same transaction
        and reported as ``claim`` reports it.
        """
        if not requests:
            return []
        table: Table = Delivery.__table__
        now = utc_now()
        blank = {column.name: None for column in table.columns if column.name != "id"}
        keys = [delivery_key(r.campaign, r.run_key, r.profile_id) for r in requests]
        rows = [{**blank, "idempotency_key": key, "campaign": r.campaign,
                 "run_key": r.run_key, "profile_id": r.profile_id,
                 "purpose": r.purpose.value, "state": DeliveryState.QUEUED.value,
                 "attempts": 0, "created_at": now, "updated_at": now, **r.fields}
                for key, r in zip(keys, requests)]
        # Inserted in key order: on PostgreSQL two claims of the same keys in
        # different orders would each wait on the other's row (a deadlock).
        rows.sort(key=lambda row: row["idempotency_key"])
        with self.engine.begin() as connection:
            # The write comes first: a SQLite transaction that read before
            # writing fails at once when another process wrote in between.
            connection.execute(
                insert_skipping_duplicates(self.engine, table, ["idempotency_key"]),
                rows)
            found = {key: (delivery_id, state) for key, delivery_id, state in
                     connection.execute(
                         select(table.c.idempotency_key, table.c.id, table.c.state)
                         .where(table.c.idempotency_key.in_(keys)))}
        return [_claim_for(*found[key]) for key in keys]

    def begin_send(self, delivery_id: int, **fields: Any) -> bool:
        """Move a claimed row to ``sending``; False if another run got it first."""
        statement = (
            update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.state.in_(_RETRYABLE))
            .values(state=DeliveryState.SENDING, attempts=Delivery.attempts + 1,
                    updated_at=utc_now(), **fields)
        )
        with self.engine.begin() as connection:
            moved = connection.execute(statement).rowcount
        return moved == 1

    def settle(self, delivery_id: int, result: Settlement,
               events: Iterable[OutboxEvent] = ()) -> None:
        """Record the final (or deferred) state and queue its CDP events."""
        statement = (
            update(Delivery)
            .where(Delivery.id == delivery_id)
            .values(state=result.state.value, reason=result.reason,
                    smtp_code=result.smtp_code, tls_version=result.tls_version,
                    tls_cipher=result.tls_cipher, cert_sha256=result.cert_sha256,
                    updated_at=utc_now())
        )
        event_rows = [queued.model_dump() for queued in events]
        with self.engine.begin() as connection:
            connection.execute(statement)
            if event_rows:
                connection.execute(insert_skipping_duplicates(
                    self.engine, OutboxEvent.__table__, ["event_id"]), event_rows)

    def settle_many(self, delivery_ids: Sequence[int], result: Settlement) -> int:
        """Record one outcome for many claimed rows; return how many moved.

        Only rows still in a retryable state move, so a row another run
        took in the meantime keeps its state. No CDP events are queued.
        """
        moved = 0
        with self.engine.begin() as connection:
            for start in range(0, len(delivery_ids), _IN_LIST_SIZE):
                chunk = list(delivery_ids[start:start + _IN_LIST_SIZE])
                statement = (
                    update(Delivery)
                    .where(Delivery.id.in_(chunk), Delivery.state.in_(_RETRYABLE))
                    .values(state=result.state.value, reason=result.reason,
                            smtp_code=result.smtp_code, updated_at=utc_now())
                )
                moved += connection.execute(statement).rowcount
        return moved

    def purged_at(self, campaign: str, run_key: str) -> datetime | None:
        """Return when the purge removed this run's delivery rows, or None."""
        with Session(self.engine) as session:
            found = session.get(PurgedRun, (campaign, run_key))
            return found.purged_at if found is not None else None

    # -- send-time checks ---------------------------------------------------

    def is_suppressed(self, address_hash: str, purpose: Purpose) -> bool:
        scopes = ("all", purpose.value)
        with self.engine.connect() as connection:
            found = connection.execute(
                select(Suppression.id).where(
                    Suppression.address_hash == address_hash,
                    Suppression.scope.in_(scopes),
                ).limit(1)
            ).first()
        return found is not None

    def suppress(self, address_hash: str, *, scope: str, reason: str,
                 profile_id: str | None = None) -> None:
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(Suppression(address_hash=address_hash, scope=scope,
                                    reason=reason, profile_id=profile_id))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()

    def sent_since(self, profile_id: str, since: datetime, *,
                   purpose: Purpose | None = None, campaign: str | None = None,
                   excluding_run: tuple[str, str] | None = None) -> int:
        """Count messages sent to a profile since ``since``.

        ``purpose`` and ``campaign`` narrow the count when given.
        ``excluding_run`` is a (campaign, run key) pair whose own rows do not
        count, so a re-run of that run is not capped by itself. Other
        campaigns' runs of the same date still count.
        """
        query = select(func.count(Delivery.id)).where(
            Delivery.profile_id == profile_id,
            Delivery.state == DeliveryState.SENT,
            Delivery.updated_at >= since,
        )
        if purpose is not None:
            query = query.where(Delivery.purpose == purpose.value)
        if campaign is not None:
            query = query.where(Delivery.campaign == campaign)
        if excluding_run is not None:
            run_campaign, run_key = excluding_run
            query = query.where(not_(and_(Delivery.campaign == run_campaign,
                                          Delivery.run_key == run_key)))
        with Session(self.engine, expire_on_commit=False) as session:
            return session.exec(query).one()

    # -- outbox --------------------------------------------------------------

    def pending_events(self, limit: int = 1000) -> list[OutboxEvent]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(
                select(OutboxEvent)
                .where(OutboxEvent.pushed_at.is_(None))
                .order_by(OutboxEvent.created_at, OutboxEvent.event_id)
                .limit(limit)
            ))

    def mark_pushed(self, event_ids: Iterable[str]) -> None:
        ids = list(event_ids)
        if not ids:
            return
        with Session(self.engine, expire_on_commit=False) as session:
            session.exec(
                update(OutboxEvent)
                .where(OutboxEvent.event_id.in_(ids))
                .values(pushed_at=utc_now())
            )
            session.commit()

    # -- reports ---------------------------------------------------------------

    def state_counts(self, campaign: str, run_key: str) -> Counter[str]:
        with Session(self.engine, expire_on_commit=False) as session:
            rows = session.exec(
                select(Delivery.state, func.count(Delivery.id))
                .where(Delivery.campaign == campaign, Delivery.run_key == run_key)
                .group_by(Delivery.state)
            ).all()
        return Counter({str(state): count for state, count in rows})

    def ambiguous(self, campaign: str | None = None) -> list[Delivery]:
        query = select(Delivery).where(Delivery.state == DeliveryState.SENDING)
        if campaign is not None:
            query = query.where(Delivery.campaign == campaign)
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(query))


def insert_skipping_duplicates(engine: Engine, table: Table,
                               key_columns: Sequence[str]) -> Insert:
    """Return an INSERT that skips rows whose unique ``key_columns`` exist."""
    dialect = engine.dialect.name
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=key_columns)
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(
            index_elements=key_columns)
    raise ValueError(f"the ledger supports sqlite and postgresql URLs, not "
                     f"{dialect}; set ledger_url to one of them")


def _claim_for(delivery_id: int, state: str) -> Claim:
    found = DeliveryState(state)
    if found is DeliveryState.SENDING:
        return Claim(ClaimStatus.AMBIGUOUS, delivery_id)
    if found in _RETRYABLE:
        return Claim(ClaimStatus.CLAIMED, delivery_id)
    return Claim(ClaimStatus.DONE, delivery_id)


def outbox_event(event_type: str, *, delivery_id: int, campaign: str,
                 profile_id: str, properties: dict[str, Any]) -> OutboxEvent:
    """Build an outbox event whose id is stable across retries and re-runs."""
    event_id = hashlib.sha256(
        f"{event_type}|{delivery_id}|{campaign}|{profile_id}".encode()
    ).hexdigest()[:32]
    payload = {
        "event_id": event_id,
        "type": event_type,
        "profile_id": profile_id,
        "campaign": campaign,
        "delivery_id": delivery_id,
        "occurred_at": utc_now().isoformat(),
        "properties": properties,
    }
    return OutboxEvent(event_id=event_id, type=event_type, profile_id=profile_id,
                       campaign=campaign, delivery_id=delivery_id,
                       payload=json.dumps(payload, sort_keys=True))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
