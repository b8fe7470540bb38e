"""Push the outbox to the CDP, and bring conversions back from it.

``push_outbox`` is the one path every outbox event takes to a sink (the
``campaign`` flow's last task uses it too). For each batch the sink plans,
the events are marked pushed only after ``send`` returns, which a sink
does only on a 2xx for that batch. A crash in between leaves them
pending, and the next push re-sends them under the same ``messageId``.

A batch the sink rejects with a 4xx (other than 429) is split in halves
until the event it rejects is alone; that event goes to the dead-letter
table, as does an event over the sink's size limit. Neither is dropped
silently: each gets a count and a log line with its event id only.

The ``feedback`` flow runs the whole loop: store campaign goals, import
goal events from the warehouse as conversions, push, and attach an
engagement report per campaign as a Prefect artifact.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import duckdb
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlmodel import Session, func, select

from carepost.connectors.cdp_sinks import (
    EventSink,
    SinkEvent,
    SinkRejected,
    build_sink,
)
from carepost.core.campaign import Campaign, load_campaigns
from carepost.core.settings import Settings, load_settings
from carepost.core.states import DeliveryState
from carepost.ledger import Delivery, Ledger
from carepost.ledger.engagement import (
    Engagement,
    as_utc,
    record_conversion,
    sync_goals,
)

log = logging.getLogger(__name__)

READ_LIMIT = 1000


@dataclass
class PushSummary:
    pushed: int = 0
    batches: int = 0
    dead_lettered: int = 0


def _dead_letter(engagement: Engagement, sink: EventSink, event: SinkEvent,
                 reason: str, size: int) -> None:
    count = engagement.dead_letter(event.event_id, sink=sink.name, reason=reason,
                                   size_bytes=size)
    log.error("event %s not pushed to %s: %s (%d bytes, seen %d times); it is "
              "kept in dead_letters", event.event_id, sink.name, reason, size, count)


async def _send_or_split(ledger: Ledger, engagement: Engagement, sink: EventSink,
                         batch: list[SinkEvent], summary: PushSummary) -> None:
    """Send ``batch``; on a 4xx, bisect until the rejected event is alone."""
    try:
        await sink.send(batch)
    except SinkRejected as exc:
        if len(batch) == 1:
            size = len(batch[0].payload.encode())
            _dead_letter(engagement, sink, batch[0], f"HTTP {exc.status}", size)
            summary.dead_lettered += 1
            return
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            await _send_or_split(ledger, engagement, sink, half, summary)
        return
    ledger.mark_pushed(event.event_id for event in batch)
    summary.pushed += len(batch)
    summary.batches += 1


async def push_outbox(ledger: Ledger, sink: EventSink) -> PushSummary:
    """Push every pending outbox event to ``sink``, oldest first.

    Raises ``SinkUnavailable`` when the sink stays down; what was
    acknowledged until then stays acknowledged, the rest stays pending.
    """
    engagement = Engagement(ledger)
    summary = PushSummary()
    while pending := engagement.pending_events(limit=READ_LIMIT):
        events = [SinkEvent(row.event_id, row.payload) for row in pending]
        plan = sink.plan(events)
        for event, size in plan.oversized:
            _dead_letter(engagement, sink, event, "event over the size limit", size)
            summary.dead_lettered += 1
        for batch in plan.batches:
            await _send_or_split(ledger, engagement, sink, batch, summary)
    return summary


def import_conversions(ledger: Ledger, warehouse: duckdb.DuckDBPyConnection,
                       campaigns: Sequence[Campaign]) -> int:
    """Record warehouse events of goal types as conversions; return new ones.

    Only events after the first sent delivery of a campaign with that goal
    can be attributed, so older events are not read. ``record_conversion``
    ignores an event id it has seen, so running this again adds nothing.
    """
    goals = {c.name: c.goal for c in campaigns if c.goal is not None}
    event_types = sorted({goal.event for goal in goals.values()})
    since = _first_sent_at(ledger)
    if not event_types or since is None:
        return 0
    rows = warehouse.execute(
        "SELECT event_id, profile_id, type, occurred_at FROM events "
        "WHERE type IN (SELECT unnest(?)) AND occurred_at >= ? "
        "ORDER BY occurred_at", [event_types, since]).fetchall()
    added = 0
    for event_id, profile_id, event_type, occurred_at in rows:
        if record_conversion(ledger, profile_id, event_type, occurred_at, event_id,
                             goals=goals) is not None:
            added += 1
    return added


def _first_sent_at(ledger: Ledger) -> datetime | None:
    with Session(ledger.engine) as session:
        first = session.exec(select(func.min(Delivery.updated_at))
                             .where(Delivery.state == DeliveryState.SENT.value)).one()
    return as_utc(first) if first is not None else None


@task(name="push-outbox", persist_result=False, cache_policy=NO_CACHE)
async def push_outbox_task() -> dict[str, int]:
    """Push the outbox of the project that ``CAREPOST_CONFIG`` names."""
    settings = load_settings()
    ledger = Ledger(settings.ledger_url)
    sink = build_sink(settings)
    try:
        return asdict(await push_outbox(ledger, sink))
    finally:
        await sink.aclose()
        ledger.close()


@flow(name="feedback", persist_result=False)
async def feedback_flow() -> dict[str, int]:
    """Store goals, import conversions, push the outbox, attach reports."""
    from carepost.flows.report import build_report, publish_artifact

    started = time.monotonic()
    logger = get_run_logger()
    settings = load_settings()
    campaigns = list(load_campaigns(settings.path(settings.campaigns_dir)).values())
    ledger = Ledger(settings.ledger_url)
    try:
        sync_goals(ledger, {c.name: c.goal for c in campaigns})
        conversions = _import_from_warehouse(settings, ledger, campaigns)
        pushed = await push_outbox_task()
        for campaign in campaigns:
            await publish_artifact(build_report(ledger, campaign))
    finally:
        ledger.close()
    summary = {"conversions": conversions, **pushed,
               "elapsed_ms": int((time.monotonic() - started) * 1000)}
    logger.info("feedback: %s", summary)
    return summary


def _import_from_warehouse(settings: Settings, ledger: Ledger,
                           campaigns: Sequence[Campaign]) -> int:
    if not settings.warehouse_path.exists():
        return 0
    warehouse = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        return import_conversions(ledger, warehouse, campaigns)
    finally:
        warehouse.close()


__all__ = ["PushSummary", "feedback_flow", "import_conversions", "push_outbox"]
