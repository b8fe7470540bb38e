"""The ``campaign`` Prefect flow: one campaign run, identified by its date.

Parameters, run names and results carry campaign names, dates, ids and
counts only. Tasks that touch PHI persist no result and use no cache, and
an exception leaving a task is replaced by one that names the batch and
the error type, never a value. Batch tasks are awaited on the flow's own
event loop (not ``.submit``ted), so they share one pool of TLS
connections; a semaphore bounds how many run at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, date, datetime
from functools import partial
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from carepost.connectors.smtp import TlsSender
from carepost.core.campaign import Campaign, load_campaigns
from carepost.core.errors import CarepostError, ConfigError
from carepost.core.schema import create_tables
from carepost.core.settings import Settings, load_settings
from carepost.flows.audit_trail import (
    record_finished,
    record_run_inputs,
    record_segment,
)
from carepost.flows.campaign_check import reject_purged_run
from carepost.flows.delivery import RunContext, deliver_batch, settle_removed
from carepost.flows.schedule import hold_for
from carepost.flows.sync import sync_named_source
from carepost.flows.warehouse import connect_for_writing
from carepost.ledger import AuditLog, Inbox, Ledger, hash_address
from carepost.segments import RecipientRules, RecipientSelection, SegmentLibrary
from carepost.templates import TemplateLibrary

BATCHES_IN_FLIGHT = 2
SUMMARY_STATES = ("sent", "dropped_no_tls", "suppressed", "render_failed",
                  "bounced", "deferred", "already_done", "ambiguous",
                  "window_deferred", "window_skipped", "expired")

# Run resources by a per-execution token: tasks receive ids and look the
# connections up here, because connections cannot be task parameters.
_RUNS: dict[str, RunContext] = {}


class BatchFailed(CarepostError):
    """A batch task failed; the message names the batch and error type only."""


def _sanitised(where: str, exc: BaseException) -> CarepostError:
    if isinstance(exc, CarepostError):
        return exc
    return BatchFailed(f"{where} failed with {type(exc).__name__}",
                       hint="run with CAREPOST_LOG_LEVEL=DEBUG locally to see more")


@task(name="sync-source", persist_result=False, cache_policy=NO_CACHE)
async def sync_source(run_token: str) -> dict[str, int]:
    """Sync every configured source, incrementally; return quarantined rows per source."""
    run = _RUNS[run_token]
    logger = get_run_logger()
    quarantined: dict[str, int] = {}
    for name in run.settings.named_sources():
        try:
            summary = await sync_named_source(run.settings, run.warehouse, name)
        except Exception as exc:
            raise _sanitised(f"syncing source {name}", exc) from None
        logger.info("source %s: %d profiles and %d events loaded", name,
                    summary.profiles, summary.events)
        quarantined[name] = summary.quarantined
        if summary.quarantined:
            # Reasons name columns and row numbers, never values.
            logger.warning(
                "source %s: %d records quarantined (%s); run 'carepost sync %s' "
                "for the summary, the rows are in the warehouse's quarantine table",
                name, summary.quarantined,
                ", ".join(f"{reason}: {count}" for reason, count
                          in sorted(summary.quarantine_reasons.items())), name)
    return quarantined


@task(name="select-segment", persist_result=False, cache_policy=NO_CACHE)
def select_segment(run_token: str) -> RecipientSelection:
    """Select the segment minus everyone the campaign must not reach.

    The result contains profile ids and reasons only. The send-time checks
    in ``flows/delivery.py`` still run for everyone kept.
    """
    run = _RUNS[run_token]
    library = SegmentLibrary(run.settings.path(run.settings.segments_dir))
    rules = RecipientRules(
        purpose=run.campaign.purpose, ledger_url=run.settings.ledger_url,
        address_hash=partial(hash_address, run.address_key),
        frequency_cap=run.campaign.frequency_cap,
        excluded_run=(run.campaign.name, run.run_key),
        cap_until=datetime.now(UTC))
    try:
        return library.select_recipients(run.warehouse, run.campaign.segment,
                                         as_of=run.run_date, rules=rules,
                                         stage=run.campaign.stage)
    except Exception as exc:
        raise _sanitised(f"segment {run.campaign.segment}", exc) from None


@task(name="deliver-batch", task_run_name="{campaign}-{run_key}-batch-{batch_number}",
      persist_result=False, cache_policy=NO_CACHE)
async def deliver_batch_task(run_token: str, campaign: str, run_key: str,
                             batch_number: int, profile_ids: list[str]
                             ) -> dict[str, int]:
    run = _RUNS[run_token]
    try:
        counts = await deliver_batch(run, profile_ids)
    except Exception as exc:
        raise _sanitised(f"batch {batch_number}", exc) from None
    return dict(counts)


@task(name="push-events", persist_result=False, cache_policy=NO_CACHE)
async def push_events(run_token: str) -> int:
    """Push pending outbox events to the configured CDP sink.

    A sink that stays down does not fail the run, whose mail is already
    sent: the events stay in the outbox for ``carepost feedback``.
    """
    from carepost.connectors.cdp_sinks import SinkError, build_sink
    from carepost.flows.feedback import push_outbox

    run = _RUNS[run_token]
    sink = build_sink(run.settings)
    try:
        return (await push_outbox(run.ledger, sink)).pushed
    except SinkError as exc:
        get_run_logger().warning("events not pushed, they stay in the outbox: %s", exc)
        return 0
    finally:
        await sink.aclose()


def _resolve_campaign(settings: Settings, name: str) -> Campaign:
    campaigns = load_campaigns(settings.path(settings.campaigns_dir))
    if name not in campaigns:
        known = ", ".join(campaigns) or "none"
        raise ConfigError(f"campaign {name!r} not found",
                          hint=f"configured campaigns: {known}")
    if campaigns[name].trigger is not None:
        raise ConfigError(f"campaign {name!r} is sent on a trigger event, not run",
                          hint="run carepost serve to receive its events")
    return campaigns[name]


def _open_run(settings: Settings, campaign: Campaign, run_date: date,
              sender: TlsSender) -> RunContext:
    ledger = Ledger(settings.ledger_url)
    try:
        reject_purged_run(ledger, campaign.name, run_date)
    except ConfigError:
        ledger.close()
        raise
    templates = TemplateLibrary(settings.path(settings.templates_dir),
                                settings.practice)
    template = templates.get(campaign.template)
    if template.purpose != campaign.purpose:
        raise ConfigError(
            f"campaign {campaign.name} has purpose {campaign.purpose.value} but "
            f"template {template.name} declares {template.purpose.value}",
            hint="make the two purposes agree",
        )
    audit = AuditLog(settings.ledger_url)
    record_run_inputs(audit, campaign=campaign.name, run_key=run_date.isoformat(),
                      template_name=template.name, template_version=template.version)
    warehouse = connect_for_writing(settings.warehouse_path)
    create_tables(warehouse)
    return RunContext(
        settings=settings, campaign=campaign, template=template,
        run_key=run_date.isoformat(), run_date=run_date,
        ledger=ledger, warehouse=warehouse, sender=sender,
        address_key=settings.address_hash_key,
        token_keys=settings.tracking_keys, audit=audit,
    )


async def _deliver_all(run_token: str, run: RunContext, profile_ids: list[str],
                       batch_size: int) -> Counter[str]:
    gate = asyncio.Semaphore(BATCHES_IN_FLIGHT)

    async def one(number: int, ids: list[str]) -> dict[str, int]:
        async with gate:
            return await deliver_batch_task(run_token, run.campaign.name,
                                            run.run_key, number, ids)

    batches = [profile_ids[i:i + batch_size]
               for i in range(0, len(profile_ids), batch_size)]
    results = await asyncio.gather(*(one(n, ids) for n, ids in enumerate(batches, 1)))
    return sum((Counter(result) for result in results), Counter())


@flow(name="campaign", flow_run_name="{campaign}-{run_date}", persist_result=False)
async def campaign_flow(campaign: str, run_date: str,
                        scheduled_for: str | None = None) -> dict[str, Any]:
    """Run one campaign for one date and return its summary counts.

    ``scheduled_for`` (ISO time) is set by scheduled runs: recipients then
    get mail only inside the send window, until the send_by deadline.
    """
    started = time.monotonic()
    logger = get_run_logger()
    settings = load_settings()
    spec = _resolve_campaign(settings, campaign)
    day = date.fromisoformat(run_date)
    token = uuid.uuid4().hex

    async with TlsSender(settings.smtp, password=settings.smtp.password()) as sender:
        run = _open_run(settings, spec, day, sender)
        if scheduled_for is not None:
            run.hold = hold_for(spec, Inbox(run.ledger.engine),
                                settings.practice.timezone,
                                datetime.fromisoformat(scheduled_for))
        _RUNS[token] = run
        try:
            quarantined = await sync_source(token)
            selection = select_segment(token)
            logger.info("segment %s selected %d profiles; %d removed before "
                        "rendering (%s)", spec.segment, selection.segment_size,
                        len(selection.removed_ids),
                        ", ".join(f"{reason}: {count}" for reason, count
                                  in selection.removed.items() if count) or "none")
            record_segment(run.audit, campaign=campaign, run_key=run.run_key,
                           segment=spec.segment, count=selection.segment_size)
            counts = settle_removed(run, selection.removed_ids)
            counts += await _deliver_all(token, run, selection.profile_ids,
                                         settings.batch_size)
            pushed = await push_events(token)
            record_finished(run.audit, campaign=campaign, run_key=run.run_key,
                            segment_size=selection.segment_size, counts=counts,
                            events_pushed=pushed)
        finally:
            _RUNS.pop(token, None)
            run.warehouse.close()
            run.ledger.close()
            run.audit.close()

    summary: dict[str, Any] = {"campaign": campaign, "run_date": day.isoformat(),
                               "segment_size": selection.segment_size}
    summary.update({state: counts.get(state, 0) for state in SUMMARY_STATES})
    summary["events_pushed"] = pushed
    summary["quarantined"] = sum(quarantined.values())
    summary["elapsed_seconds"] = round(time.monotonic() - started, 2)
    logger.info("campaign %s run %s: %s", campaign, day, summary)
    return summary
