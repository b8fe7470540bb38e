"""The TLS status of each recipient domain, stored in the ledger database.

Three sqlmodel tables in the ledger database (``ledger/__init__.py``
imports this module so ``Ledger`` creates them):

- ``domain_tls_status``: per recipient domain, the MX host last tried,
  whether it offered STARTTLS, the TLS version and cipher, whether its
  certificate verified, its MTA-STS mode, the reason of a failure and when
  it was checked. A status older than `RECHECK_AFTER` (a day) is stale, and
  the next send or ``carepost tls-check`` checks the domain again.
- ``mta_sts_policies``: the MTA-STS policy cache (see `mta_sts`), so a
  policy survives restarts until its ``max_age`` runs out.
- ``delivery_routes``: the MX host name (never its address) that each sent
  message went to, next to the TLS proof on the delivery row.

No address or patient data is stored here: domains and host names only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, create_engine

from carepost.connectors.mta_sts import CachedPolicy, StsMode, StsPolicy
from carepost.connectors.smtp_tls import is_accepted_version

__all__ = [
    "RECHECK_AFTER",
    "DeliveryRoute",
    "DomainStatus",
    "DomainTlsStatus",
    "MtaStsPolicyRecord",
    "TlsStatusStore",
]

RECHECK_AFTER = timedelta(days=1)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DomainTlsStatus(SQLModel, table=True):
    """The last TLS check of one recipient domain's MX host."""

    __tablename__ = "domain_tls_status"

    domain: str = Field(primary_key=True)
    mx_host: str | None = None
    port: int | None = None
    starttls_offered: bool | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    cert_verified: bool | None = None
    mta_sts_mode: str | None = None
    reason: str | None = None
    checked_at: datetime = Field(default_factory=_utc_now)


class MtaStsPolicyRecord(SQLModel, table=True):
    """A cached MTA-STS policy; ``mx`` contains the patterns, one a line."""

    __tablename__ = "mta_sts_policies"

    domain: str = Field(primary_key=True)
    policy_id: str
    mode: str
    max_age: int
    mx: str
    fetched_at: datetime
    expires_at: datetime


class DeliveryRoute(SQLModel, table=True):
    """The MX host one delivery went to, and whether its certificate verified."""

    __tablename__ = "delivery_routes"

    delivery_id: int = Field(primary_key=True)
    mx_host: str
    cert_verified: bool = True
    mta_sts_mode: str | None = None
    recorded_at: datetime = Field(default_factory=_utc_now)


_TABLES = [
    DomainTlsStatus.__table__,  # type: ignore[attr-defined]
    MtaStsPolicyRecord.__table__,  # type: ignore[attr-defined]
    DeliveryRoute.__table__,  # type: ignore[attr-defined]
]


@dataclass(frozen=True)
class DomainStatus:
    """A domain's TLS status as the sender and ``tls-check`` report it."""

    domain: str
    mx_host: str | None
    port: int | None
    starttls_offered: bool | None
    tls_version: str | None
    tls_cipher: str | None
    cert_verified: bool | None
    mta_sts_mode: str | None
    reason: str | None
    checked_at: datetime

    @property
    def supports_tls(self) -> bool:
        """Whether the MX offered STARTTLS with TLS 1.2+ and a verified certificate."""
        return bool(self.starttls_offered and is_accepted_version(self.tls_version)
                    and self.cert_verified)

    def as_dict(self) -> dict[str, object]:
        values = dict(self.__dict__)
        values["checked_at"] = self.checked_at.isoformat()
        values["supports_tls"] = self.supports_tls
        return values


class TlsStatusStore:
    """Read and write domain statuses, cached policies and delivery routes.

    ``engine`` is the ledger's; None keeps everything in a private
    in-memory SQLite database (one process, nothing persisted).
    """

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if engine is None:
            engine = create_engine("sqlite://", poolclass=StaticPool,
                                   connect_args={"check_same_thread": False})
        SQLModel.metadata.create_all(engine, tables=_TABLES)
        self.engine = engine
        self._clock = clock

    @property
    def persistent(self) -> bool:
        return self.engine.url.database not in (None, "", ":memory:")

    def attach(self, engine: Engine) -> None:
        """Move to ``engine`` (the ledger's), creating the tables there."""
        SQLModel.metadata.create_all(engine, tables=_TABLES)
        self.engine = engine

    # -- domain status ---------------------------------------------------

    def record(self, status: DomainStatus) -> None:
        with Session(self.engine) as session:
            session.merge(DomainTlsStatus(**status.__dict__))
            session.commit()

    def get(self, domain: str) -> DomainStatus | None:
        with Session(self.engine) as session:
            row = session.get(DomainTlsStatus, domain)
        if row is None:
            return None
        values = row.model_dump()
        values["checked_at"] = _as_utc(values["checked_at"])
        return DomainStatus(**values)

    def fresh(self, domain: str) -> DomainStatus | None:
        """Return the domain's status if it was checked within `RECHECK_AFTER`."""
        status = self.get(domain)
        if status is None or self._clock() - status.checked_at > RECHECK_AFTER:
            return None
        return status

    # -- MTA-STS policy cache (the `PolicyCache` protocol) -----------------

    def get_policy(self, domain: str) -> CachedPolicy | None:
        with Session(self.engine) as session:
            row = session.get(MtaStsPolicyRecord, domain)
        if row is None:
            return None
        policy = StsPolicy(StsMode(row.mode), row.max_age,
                           tuple(filter(None, row.mx.split("\n"))))
        return CachedPolicy(domain, row.policy_id, policy,
                            _as_utc(row.fetched_at), _as_utc(row.expires_at))

    def put_policy(self, cached: CachedPolicy) -> None:
        with Session(self.engine) as session:
            session.merge(MtaStsPolicyRecord(
                domain=cached.domain, policy_id=cached.policy_id,
                mode=cached.policy.mode.value, max_age=cached.policy.max_age,
                mx="\n".join(cached.policy.mx), fetched_at=cached.fetched_at,
                expires_at=cached.expires_at))
            session.commit()

    def drop_policy(self, domain: str) -> None:
        with Session(self.engine) as session:
            row = session.get(MtaStsPolicyRecord, domain)
            if row is not None:
                session.delete(row)
                session.commit()

    def policy_cache(self) -> _StorePolicyCache:
        return _StorePolicyCache(self)

    # -- delivery routes ---------------------------------------------------

    def record_route(self, delivery_id: int, mx_host: str, *, cert_verified: bool,
                     mta_sts_mode: str | None) -> None:
        with Session(self.engine) as session:
            session.merge(DeliveryRoute(delivery_id=delivery_id, mx_host=mx_host,
                                        cert_verified=cert_verified,
                                        mta_sts_mode=mta_sts_mode))
            session.commit()

    def route(self, delivery_id: int) -> DeliveryRoute | None:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(DeliveryRoute, delivery_id)


class _StorePolicyCache:
    """Adapts `TlsStatusStore` to the `PolicyCache` protocol."""

    def __init__(self, store: TlsStatusStore) -> None:
        self._store = store

    def get(self, domain: str) -> CachedPolicy | None:
        return self._store.get_policy(domain)

    def put(self, cached: CachedPolicy) -> None:
        self._store.put_policy(cached)

    def drop(self, domain: str) -> None:
        self._store.drop_policy(domain)


def _as_utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes; every value stored here is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
