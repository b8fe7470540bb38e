"""Tables of the delivery ledger (sqlmodel; SQLite by default, PostgreSQL too).

The ledger stores delivery state, ids and a keyed hash of the address. It
never stores a name, a condition, an address or a message body.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, String, UniqueConstraint
from sqlmodel import Field, SQLModel



def utc_now() -> datetime:
    return datetime.now(UTC)


class Delivery(SQLModel, table=True):
    """One (campaign run or trigger, profile) delivery.

    ``state`` is a ``DeliveryState`` value. ``idempotency_key`` is ``campaign/run_key/profile_id``; its unique index
    is what makes a re-run or a retried task send nothing twice.
    """

    __tablename__ = "deliveries"

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(sa_column=Column(String, unique=True, nullable=False))
    campaign: str = Field(index=True)
    run_key: str = Field(index=True)
    profile_id: str = Field(index=True)
    purpose: str
    template: str | None = None
    template_version: str | None = None
    state: str = Field(sa_column=Column(String, nullable=False, index=True))
    reason: str | None = None
    smtp_code: int | None = None
    message_id: str | None = None
    address_hash: str | None = Field(default=None, index=True)
    tls_version: str | None = None
    tls_cipher: str | None = None
    cert_sha256: str | None = None
    attempts: int = 0
    created_at: datetime = Field(default_factory=utc_now)
    updated_at: datetime = Field(default_factory=utc_now, index=True)


class PurgedRun(SQLModel, table=True):
    """A campaign run whose delivery rows the retention purge removed.

    Without its rows a re-run could not tell who was already mailed, so a
    run listed here is refused. One row per run, with no profile data.
    """

    __tablename__ = "purged_runs"

    campaign: str = Field(primary_key=True)
    run_key: str = Field(primary_key=True)
    purged_at: datetime = Field(default_factory=utc_now)


class Suppression(SQLModel, table=True):
    """An address that must not receive mail of ``scope`` (or any, ``all``)."""

    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("address_hash", "scope"),)

    id: int | None = Field(default=None, primary_key=True)
    address_hash: str = Field(index=True)
    scope: str
    reason: str
    profile_id: str | None = None
    created_at: datetime = Field(default_factory=utc_now)


class OutboxEvent(SQLModel, table=True):
    """An event waiting to be pushed to the CDP; ``event_id`` is its dedupe key."""

    __tablename__ = "outbox"

    event_id: str = Field(primary_key=True)
    type: str = Field(index=True)
    profile_id: str
    campaign: str
    delivery_id: int | None = None
    payload: str
    created_at: datetime = Field(default_factory=utc_now)
    pushed_at: datetime | None = Field(default=None, index=True)
