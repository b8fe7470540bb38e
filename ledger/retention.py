"""Remove ledger rows older than their data class's retention.

Data classes, their tables and the timestamp that ages them:

| class               | table(s)                         | aged by        |
|---------------------|----------------------------------|----------------|
| `engagement_events` | `engagement_events`, `conversions` | `occurred_at`, `recorded_at` |
| `deliveries`        | `deliveries` (final states only) | `updated_at`   |
| `outbox_pushed`     | `outbox` (pushed rows only)      | `pushed_at`    |
| `inbox_events`      | `inbox_events`                   | `received_at`  |
| `audit_entries`     | `audit_log` (oldest first)       | `created_at`   |

A table that does not exist in this database (a package not installed
yet) counts 0. Rows of a campaign under a legal hold are kept. The audit
log can only lose its oldest entries, so there the purge stops at the
first entry that names a held campaign. Delivery rows in ``queued``,
``sending`` or ``deferred`` are kept whatever their age, because they are
unresolved.

The audit entries are removed in the same transaction that appends the
``retention.purged`` entry, which records the counts per class and the
id and hash of the last removed entry (the new start of the chain), so
``verify`` accepts the shortened chain. Suppressions are never purged.
Each campaign run that loses delivery rows is listed in ``purged_runs``,
so the campaign flow can reject a run of it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import DateTime, String, and_, column, delete, func, inspect
from sqlalchemy import select as sa_select
from sqlalchemy import table, text
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, select

from carepost.core.errors import ConfigError
from carepost.core.retention import RetentionSettings
from carepost.core.states import DeliveryState
from carepost.ledger.database import (
    AUDIT_DELETE_TRIGGER,
    create_ledger_engine,
    create_tables,
)
from carepost.ledger.audit import (
    PURGE_ACTION,
    SQLITE_NO_DELETE,
    AuditEntry,
    AuditLog,
    default_actor,
    encode_details,
    insert_entry,
)
from carepost.ledger.ledger import insert_skipping_duplicates
from carepost.ledger.models import PurgedRun, utc_now

FINAL_STATES = tuple(state.value for state in DeliveryState if state.is_final)


@dataclass(frozen=True)
class TableRule:
    """One table of a data class: its age column and the rows it may remove."""

    table: str
    aged_by: str
    campaign_column: str | None
    # "final_states": only rows whose delivery state is final.
    extra: str | None = None


DATA_CLASSES: dict[str, tuple[TableRule, ...]] = {
    "engagement_events": (
        TableRule("engagement_events", "occurred_at", "campaign"),
        TableRule("conversions", "recorded_at", "campaign"),
    ),
    "deliveries": (TableRule("deliveries", "updated_at", "campaign", "final_states"),),
    # Rows not pushed yet have no pushed_at, so they are never aged out.
    "outbox_pushed": (TableRule("outbox", "pushed_at", "campaign"),),
    "inbox_events": (TableRule("inbox_events", "received_at", None),),
}


@dataclass
class PurgeReport:
    """Rows removed (or, in a dry run, that would be) per data class."""

    dry_run: bool
    removed: dict[str, int] = field(default_factory=dict)
    held_campaigns: tuple[str, ...] = ()
    audit_entry_id: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "removed": dict(self.removed),
                "held_campaigns": list(self.held_campaigns),
                "audit_entry_id": self.audit_entry_id}


def check_legal_holds(ledger_url: str, retention: RetentionSettings,
                      configured: set[str]) -> None:
    """Raise ``ConfigError`` for a hold whose campaign exists nowhere.

    A hold may name a campaign whose file is gone while its rows remain,
    so the ledger's campaigns count as known too. A name in neither place
    is a typo, and its hold would keep nothing.
    """
    hold_names = retention.held_campaigns
    if not hold_names:
        return
    engine = create_ledger_engine(ledger_url)
    recorded: set[str] = set()
    try:
        if "deliveries" in inspect(engine).get_table_names():
            with Session(engine) as session:
                recorded = set(session.execute(
                    sa_select(column("campaign", String))
                    .select_from(table("deliveries")).distinct()).scalars())
    finally:
        engine.dispose()
    known = configured | recorded
    for name in sorted(hold_names - known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        raise ConfigError(
            f"retention.legal_holds names campaign {name!r}, which is neither in "
            "the campaigns folder nor in the ledger, so the hold would keep nothing",
            hint=f"did you mean {close[0]!r}?" if close else "check the spelling")


def purge_expired(ledger_url: str, retention: RetentionSettings, *,
                  dry_run: bool = False, now: datetime | None = None,
                  actor: str | None = None) -> PurgeReport:
    """Remove expired rows of every data class and audit what was removed."""
    moment = now or datetime.now(UTC)
    held = retention.held_campaigns
    report = PurgeReport(dry_run=dry_run, held_campaigns=tuple(sorted(held)))
    with AuditLog(ledger_url) as audit:
        existing = set(inspect(audit.engine).get_table_names())
        if "deliveries" in existing and not dry_run:
            create_tables(audit.engine, [PurgedRun.__table__])
        with Session(audit.engine) as session:
            for name, rules in DATA_CLASSES.items():
                cutoff = _cutoff(moment, retention.days_for(name), audit.is_sqlite)
                report.removed[name] = sum(
                    _purge_table(session, rule, cutoff, held, dry_run)
                    for rule in rules if rule.table in existing)
            session.commit()
        cutoff = _cutoff(moment, retention.audit_entries, False)
        _purge_audit(audit, report, cutoff, held, actor or default_actor())
    return report


def _cutoff(moment: datetime, days: int, naive: bool) -> datetime:
    # SQLite stores SQLAlchemy datetimes as naive UTC text, so the bound
    # value must be naive UTC too for the text comparison to hold.
    cutoff = moment.astimezone(UTC) - timedelta(days=days)
    return cutoff.replace(tzinfo=None) if naive else cutoff


def _conditions(rule: TableRule, cutoff: datetime,
                held: frozenset[str]) -> list[ColumnElement[bool]]:
    aged = column(rule.aged_by, DateTime)
    conditions: list[ColumnElement[bool]] = [aged.is_not(None), aged < cutoff]
    if rule.campaign_column and held:
        campaign = column(rule.campaign_column, String)
        conditions.append(campaign.is_(None) | campaign.not_in(sorted(held)))
    if rule.extra == "final_states":
        conditions.append(column("state", String).in_(FINAL_STATES))
    return conditions


def _purge_table(session: Session, rule: TableRule, cutoff: datetime,
                 held: frozenset[str], dry_run: bool) -> int:
    target = table(rule.table)
    where = and_(*_conditions(rule, cutoff, held))
    if dry_run:
        query = sa_select(func.count()).select_from(target).where(where)
        return int(session.execute(query).scalar_one())
    if rule.table == "deliveries":
        _record_purged_runs(session, where)
    return int(session.execute(delete(target).where(where)).rowcount)


def _record_purged_runs(session: Session, where: ColumnElement[bool]) -> None:
    """List the runs whose rows are about to go, in the same transaction.

    A re-run of such a run would find no rows and mail everyone again, so
    the campaign flow refuses a run listed in ``purged_runs``.
    """
    runs = session.execute(
        sa_select(column("campaign", String), column("run_key", String))
        .select_from(table("deliveries")).where(where).distinct()).all()
    if not runs:
        return
    engine = session.get_bind()
    moment = utc_now()
    session.execute(
        insert_skipping_duplicates(engine, PurgedRun.__table__, ["campaign", "run_key"]),
        [{"campaign": campaign, "run_key": run_key, "purged_at": moment}
         for campaign, run_key in runs])


def _purge_audit(audit: AuditLog, report: PurgeReport, cutoff: datetime,
                 held: frozenset[str], actor: str) -> None:
    """Remove the expired prefix of the audit log and append the record."""
    cutoff_text = cutoff.isoformat(timespec="microseconds")
    with audit.write_session() as session:
        last_removed = _last_expired(session, cutoff_text, held)
        count = 0
        if last_removed is not None:
            count = int(session.execute(
                sa_select(func.count()).select_from(AuditEntry)
                .where(AuditEntry.id <= last_removed.id)).scalar_one())
        report.removed["audit_entries"] = count
        if report.dry_run:
            return
        if last_removed is not None:
            _delete_audit_prefix(session, last_removed.id, audit.is_sqlite)
        details = {f"removed_{name}": value for name, value in report.removed.items()}
        details["held_campaigns"] = ",".join(report.held_campaigns) or None
        details["through_id"] = last_removed.id if last_removed else None
        details["through_hash"] = last_removed.entry_hash if last_removed else None
        entry = insert_entry(session, actor=actor, action=PURGE_ACTION,
                             target="ledger", details=encode_details(details))
        session.commit()
        report.audit_entry_id = entry.id


def _last_expired(session: Session, cutoff_text: str,
                  held: frozenset[str]) -> AuditEntry | None:
    """Return the last entry of the expired prefix, stopping before a hold."""
    limit_id = None
    if held:
        first_held = session.exec(
            select(func.min(AuditEntry.id)).where(AuditEntry.target.in_(sorted(held)))
        ).one()
        limit_id = first_held
    query = select(AuditEntry).where(AuditEntry.created_at < cutoff_text)
    if limit_id is not None:
        query = query.where(AuditEntry.id < limit_id)
    # Entries get ids in time order, so the expired ones are a prefix, up to
    # clock steps; a later entry with an older clock is not removed early.
    first_kept = session.exec(
        select(func.min(AuditEntry.id)).where(AuditEntry.created_at >= cutoff_text)
    ).one()
    if first_kept is not None:
        query = query.where(AuditEntry.id < first_kept)
    return session.exec(query.order_by(AuditEntry.id.desc()).limit(1)).first()


def _delete_audit_prefix(session: Session, through_id: int, is_sqlite: bool) -> None:
    # The delete trigger is dropped (SQLite) or disabled (PostgreSQL) and
    # restored inside this transaction, so no other connection ever reads
    # the table without it. On PostgreSQL the transaction already holds the
    # EXCLUSIVE audit lock, so no other DELETE can run in between either.
    if is_sqlite:
        session.execute(text("DROP TRIGGER IF EXISTS audit_log_no_delete"))
    else:
        session.execute(text(f"ALTER TABLE audit_log DISABLE TRIGGER "
                             f"{AUDIT_DELETE_TRIGGER}"))
    session.execute(delete(AuditEntry).where(AuditEntry.id <= through_id))
    if is_sqlite:
        session.execute(text(SQLITE_NO_DELETE))
    else:
        session.execute(text(f"ALTER TABLE audit_log ENABLE TRIGGER "
                             f"{AUDIT_DELETE_TRIGGER}"))
