"""Engagement tables: opens, clicks, unsubscribes, conversions, dead letters.

Invariants a change must keep:

- An engagement row stores the verdict (``human`` or ``machine``) and the
  rule that decided it, never the client's IP address or user agent.
- A row and its outbox event are written in one transaction, and the
  row's ``dedupe_key`` is unique, so a repeated hit adds nothing.
- The dedupe key is (delivery id, event kind, verdict, link index, time
  bucket): provider event ids change on retries and are not used.
- A conversion is stored once per CDP event id. It is attributed to at
  most one delivery: the one with the latest human open or click inside
  the campaign goal's window.
- An event the sink rejects as too large goes to ``dead_letters`` with a
  count; it is taken out of the push queue, never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, String
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, select

from carepost.core.campaign import Goal
from carepost.core.states import DeliveryState
from carepost.ledger.ledger import Ledger
from carepost.ledger.models import Delivery, OutboxEvent, Suppression, utc_now

log = logging.getLogger(__name__)

# Hits of one kind and verdict on one link within this many seconds count once.
DEDUPE_BUCKET_SECONDS = 3600

# Outbox event type for each engagement kind.
EVENT_TYPES = {
    "open": "email_opened",
    "click": "email_clicked",
    "unsubscribe": "email_unsubscribed",
}


class Verdict(StrEnum):
    HUMAN = "human"
    MACHINE = "machine"


class EngagementEvent(SQLModel, table=True):
    """One counted open, click or unsubscribe of one delivery."""

    __tablename__ = "engagement_events"

    id: int | None = Field(default=None, primary_key=True)
    dedupe_key: str = Field(sa_column=Column(String, unique=True, nullable=False))
    delivery_id: int = Field(index=True)
    campaign: str = Field(index=True)
    run_key: str
    profile_id: str = Field(index=True)
    kind: str
    verdict: str
    rule: str | None = None
    link_index: int | None = None
    occurred_at: datetime = Field(index=True)


class Conversion(SQLModel, table=True):
    """A goal event from the CDP and the delivery it is attributed to, if any."""

    __tablename__ = "conversions"

    event_id: str = Field(primary_key=True)
    profile_id: str = Field(index=True)
    event_type: str
    occurred_at: datetime
    campaign: str | None = Field(default=None, index=True)
    delivery_id: int | None = None
    recorded_at: datetime = Field(default_factory=utc_now)


class CampaignGoal(SQLModel, table=True):
    """A campaign's conversion goal, copied from its spec for the service."""

    __tablename__ = "campaign_goals"

    campaign: str = Field(primary_key=True)
    event: str = Field(index=True)
    within_days: int


class DeadLetter(SQLModel, table=True):
    """An outbox event a sink cannot accept; ``count`` grows on each attempt."""

    __tablename__ = "dead_letters"

    event_id: str = Field(primary_key=True)
    sink: str
    reason: str
    size_bytes: int
    count: int = 1
    first_seen: datetime = Field(default_factory=utc_now)
    last_seen: datetime = Field(default_factory=utc_now)


def as_utc(moment: datetime) -> datetime:
    """Return ``moment`` as aware UTC; SQLite gives back naive UTC values."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Hit:
    """A classified tracking hit, ready to be recorded."""

    kind: str
    verdict: Verdict
    rule: str | None
    occurred_at: datetime
    link_index: int | None = None


def dedupe_key(delivery_id: int, hit: Hit) -> str:
    bucket = int(as_utc(hit.occurred_at).timestamp()) // DEDUPE_BUCKET_SECONDS
    link = "-" if hit.link_index is None else str(hit.link_index)
    if hit.kind == "unsubscribe":
        bucket = 0  # one unsubscribe per delivery, whenever it comes
    return f"{delivery_id}|{hit.kind}|{hit.verdict.value}|{link}|{bucket}"


def _event_id(key: str) -> str:
    return hashlib.sha256(f"engagement|{key}".encode()).hexdigest()[:32]


def _payload(event_id: str, event_type: str, delivery: Delivery,
             occurred_at: datetime, properties: dict[str, Any]) -> str:
    body = {
        "event_id": event_id,
        "type": event_type,
        "profile_id": delivery.profile_id,
        "campaign": delivery.campaign,
        "delivery_id": delivery.id,
        "occurred_at": as_utc(occurred_at).isoformat(),
        "properties": {
            "campaign": delivery.campaign,
            "run": delivery.run_key,
            "template": delivery.template,
            "template_version": delivery.template_version,
            **properties,
        },
    }
    return json.dumps(body, sort_keys=True)


def _engagement_outbox(row: EngagementEvent, delivery: Delivery) -> OutboxEvent:
    event_type = EVENT_TYPES[row.kind]
    event_id = _event_id(row.dedupe_key)
    properties: dict[str, Any] = {"machine": row.verdict == Verdict.MACHINE}
    if row.link_index is not None:
        properties["link_index"] = row.link_index
    if row.rule is not None:
        properties["machine_rule"] = row.rule
    return OutboxEvent(
        event_id=event_id, type=event_type, profile_id=delivery.profile_id,
        campaign=delivery.campaign, delivery_id=delivery.id,
        payload=_payload(event_id, event_type, delivery, row.occurred_at,
                         properties),
    )


class Engagement:
    """Engagement reads and writes on a ``Ledger``'s database."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.engine = ledger.engine

    def delivery(self, delivery_id: int) -> Delivery | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(Delivery, delivery_id)

    def record(self, delivery: Delivery, hit: Hit) -> EngagementEvent | None:
        """Store ``hit`` and queue its CDP event; None when it is a duplicate."""
        row = EngagementEvent(
            dedupe_key=dedupe_key(delivery.id, hit), delivery_id=delivery.id,
            campaign=delivery.campaign, run_key=delivery.run_key,
            profile_id=delivery.profile_id, kind=hit.kind,
            verdict=hit.verdict.value, rule=hit.rule, link_index=hit.link_index,
            occurred_at=as_utc(hit.occurred_at),
        )
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(row)
            session.add(_engagement_outbox(row, delivery))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                return None
        return row

    def unsubscribe(self, delivery: Delivery, hit: Hit) -> bool:
        """Suppress the delivery's address for its purpose; False if it has none.

        The suppression is committed before the engagement row and its
        outbox event, so the opt-out holds even if recording the event
        fails. A repeated unsubscribe changes nothing.
        """
        if delivery.address_hash is None:
            return False
        with Session(self.engine, expire_on_commit=False) as session:
            exists = session.exec(select(Suppression.id).where(
                Suppression.address_hash == delivery.address_hash,
                Suppression.scope == delivery.purpose)).first()
            if exists is None:
                session.add(Suppression(
                    address_hash=delivery.address_hash, scope=delivery.purpose,
                    reason=f"unsubscribed from {delivery.campaign}",
                    profile_id=delivery.profile_id))
            session.commit()
        self.record(delivery, hit)
        return True

    def clicks_since(self, delivery_id: int, since: datetime) -> list[EngagementEvent]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(select(EngagementEvent).where(
                EngagementEvent.delivery_id == delivery_id,
                EngagementEvent.kind == "click",
                EngagementEvent.occurred_at >= as_utc(since))))

    def mark_machine(self, rows: list[EngagementEvent], rule: str) -> int:
        """Turn human rows into machine ones, with their unpushed outbox events.

        A human row whose machine twin (same link and time bucket) already
        exists is removed instead. Returns how many rows changed. An event
        already pushed as human is left as it is.
        """
        changed = 0
        for row in rows:
            delivery = self.delivery(row.delivery_id)
            with Session(self.engine, expire_on_commit=False) as session:
                stored = session.get(EngagementEvent, row.id)
                if stored is None or stored.verdict == Verdict.MACHINE.value:
                    continue
                outbox = session.get(OutboxEvent, _event_id(stored.dedupe_key))
                if outbox is not None and outbox.pushed_at is not None:
                    # NOTE: a click pushed as human before a later click
                    # revealed the burst is not corrected in the CDP.
                    continue
                if outbox is not None:
                    session.delete(outbox)
                self._to_machine(session, stored, delivery, rule)
                session.commit()
                changed += 1
        return changed

    @staticmethod
    def _to_machine(session: Session, stored: EngagementEvent, delivery: Delivery,
                    rule: str) -> None:
        hit = Hit(kind=stored.kind, verdict=Verdict.MACHINE, rule=rule,
                  occurred_at=stored.occurred_at, link_index=stored.link_index)
        key = dedupe_key(stored.delivery_id, hit)
        twin = session.exec(select(EngagementEvent.id).where(
            EngagementEvent.dedupe_key == key)).first()
        if twin is not None:
            session.delete(stored)
            return
        stored.verdict, stored.rule, stored.dedupe_key = Verdict.MACHINE.value, rule, key
        session.add(stored)
        session.add(_engagement_outbox(stored, delivery))

    # -- push queue and dead letters -----------------------------------------

    def pending_events(self, limit: int = 1000) -> list[OutboxEvent]:
        """Return unpushed outbox events that are not dead-lettered, oldest first."""
        dead = select(DeadLetter.event_id)
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(
                select(OutboxEvent)
                .where(OutboxEvent.pushed_at.is_(None),
                       OutboxEvent.event_id.not_in(dead))
                .order_by(OutboxEvent.created_at, OutboxEvent.event_id)
                .limit(limit)))

    def dead_letter(self, event_id: str, *, sink: str, reason: str,
                    size_bytes: int) -> int:
        """Record that ``sink`` cannot take ``event_id``; return its count."""
        now = utc_now()
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(DeadLetter, event_id)
            if row is None:
                row = DeadLetter(event_id=event_id, sink=sink, reason=reason,
                                 size_bytes=size_bytes)
            else:
                row.count += 1
                row.reason, row.size_bytes, row.last_seen = reason, size_bytes, now
            session.add(row)
            session.commit()
            return row.count

    def dead_letters(self) -> list[DeadLetter]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(select(DeadLetter).order_by(DeadLetter.event_id)))

    def release_dead_letter(self, event_id: str) -> bool:
        """Put a dead-lettered event back in the push queue (after a fix)."""
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(DeadLetter, event_id)
            if row is None:
                return False
            session.delete(row)
            session.commit()
        return True


# -- conversions ----------------------------------------------------------------


def sync_goals(ledger: Ledger, goals: Mapping[str, Goal | None]) -> None:
    """Store each campaign's goal (or remove it) so the service can attribute."""
    with Session(ledger.engine, expire_on_commit=False) as session:
        for campaign, goal in goals.items():
            stored = session.get(CampaignGoal, campaign)
            if goal is None:
                if stored is not None:
                    session.delete(stored)
                continue
            stored = stored or CampaignGoal(campaign=campaign, event=goal.event,
                                            within_days=goal.within_days)
            stored.event, stored.within_days = goal.event, goal.within_days
            session.add(stored)
        session.commit()


def _goals_for(session: Session, event_type: str,
               goals: Mapping[str, Goal] | None) -> dict[str, int]:
    if goals is not None:
        return {name: goal.within_days for name, goal in goals.items()
                if goal is not None and goal.event == event_type}
    rows = session.exec(select(CampaignGoal).where(CampaignGoal.event == event_type))
    return {row.campaign: row.within_days for row in rows}


def _last_touch(session: Session, profile_id: str, occurred_at: datetime,
                windows: dict[str, int]) -> EngagementEvent | None:
    """Return the latest human open or click that a goal window covers."""
    if not windows:
        return None
    longest = timedelta(days=max(windows.values()))
    candidates = session.exec(
        select(EngagementEvent)
        .join(Delivery, Delivery.id == EngagementEvent.delivery_id)
        .where(EngagementEvent.profile_id == profile_id,
               EngagementEvent.campaign.in_(list(windows)),
               EngagementEvent.verdict == Verdict.HUMAN.value,
               EngagementEvent.kind.in_(["open", "click"]),
               EngagementEvent.occurred_at <= occurred_at,
               EngagementEvent.occurred_at >= occurred_at - longest,
               Delivery.state == DeliveryState.SENT.value)
        .order_by(EngagementEvent.occurred_at.desc(), EngagementEvent.id.desc()))
    for touch in candidates:
        window = timedelta(days=windows[touch.campaign])
        if as_utc(occurred_at) - as_utc(touch.occurred_at) <= window:
            return touch
    return None


def record_conversion(ledger: Ledger, profile_id: str, event_type: str,
                      occurred_at: datetime, event_id: str, *,
                      goals: Mapping[str, Goal] | None = None) -> Conversion | None:
    """Store a CDP goal event once and attribute it to at most one delivery.

    ``goals`` maps campaign names to goals; without it, the goals stored by
    ``sync_goals`` are used. Returns None when ``event_id`` was recorded
    before, so webhook retries and repeated warehouse syncs count once.
    """
    moment = as_utc(occurred_at)
    with Session(ledger.engine, expire_on_commit=False) as session:
        if session.get(Conversion, event_id) is not None:
            return None
        windows = _goals_for(session, event_type, goals)
        touch = _last_touch(session, profile_id, moment, windows)
        row = Conversion(event_id=event_id, profile_id=profile_id,
                         event_type=event_type, occurred_at=moment,
                         campaign=touch.campaign if touch else None,
                         delivery_id=touch.delivery_id if touch else None)
        session.add(row)
        if touch is not None:
            delivery = session.get(Delivery, touch.delivery_id)
            session.add(_conversion_outbox(row, delivery, touch))
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            return None
    log.info("conversion %s of profile %s attributed to delivery %s",
             event_type, profile_id, row.delivery_id)
    return row


def _conversion_outbox(row: Conversion, delivery: Delivery,
                       touch: EngagementEvent) -> OutboxEvent:
    event_id = hashlib.sha256(f"conversion|{row.event_id}".encode()).hexdigest()[:32]
    properties = {"machine": False, "goal_event": row.event_type,
                  "source_event_id": row.event_id, "touch": touch.kind}
    return OutboxEvent(
        event_id=event_id, type="conversion", profile_id=delivery.profile_id,
        campaign=delivery.campaign, delivery_id=delivery.id,
        payload=_payload(event_id, "conversion", delivery, row.occurred_at,
                         properties),
    )


__all__ = [
    "CampaignGoal", "Conversion", "DeadLetter", "Engagement", "EngagementEvent",
    "Hit", "Verdict", "as_utc", "dedupe_key", "record_conversion", "sync_goals",
]
