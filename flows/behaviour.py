"""The ``behaviour`` flow: turn inbox events into triggered emails.

One pass does three things:

1. **Plan.** Each inbox event not planned yet becomes one pending send
   per triggered campaign whose ``trigger.event`` and ``where`` match,
   due ``delay`` after the event. The run key is the trigger key
   (``appointment:<id>``, ``rx:<id>``; ``#2`` and up for repeated
   reminders), so the same appointment arriving under two event ids
   still sends once.
2. **Re-check and send.** Each pending send that is due is expired
   after its ``send_by`` deadline, cancelled when a ``cancel_if`` event
   followed the trigger (in the warehouse or the inbox), and otherwise
   goes through ``deliver_one``, the per-recipient pipeline of campaigns:
   the same send-time checks, ledger claim and send window.
3. **Follow up.** A sent reminder adds the next one (``repeat_every``)
   and, after ``escalation.after_reminders``, an escalation check; if
   that check finds the prescription still unfilled it queues
   ``prescription_unfilled_escalated`` in the CDP outbox.

A pass claims the ledger rows of all its deliveries in one transaction,
sends up to ``SENDS_IN_FLIGHT`` at once over the caller's TLS connection
pool, finishes the pending rows in one transaction, and appends one
``delivery.batch`` audit entry per campaign (``flows/behaviour_audit.py``).
Each delivery still moves to ``sending`` in its own committed
transaction just before its SMTP transaction, and is settled with its
CDP event in one more.

``BehaviourEngine.run_pass`` is plain async code: ``carepost serve`` calls
it when a webhook arrives, and the Prefect flow wraps it for periodic
passes. A pass may overlap another in a second process: the ledger's
claim and the conditional updates of ``pending_sends`` keep each send to
one message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb
from prefect import flow

from carepost.connectors.smtp import TlsSender
from carepost.core.campaign import Campaign, load_campaigns
from carepost.core.phi import PHI
from carepost.core.settings import Settings, load_settings
from carepost.core.states import DeliveryState
from carepost.flows.behaviour_audit import PassItem, record_pass
from carepost.flows.behaviour_snapshot import Snapshot, read_snapshot, run_date
from carepost.flows.behaviour_warehouse import WarehouseHandle
from carepost.flows.context import Recipient
from carepost.flows.delivery import RunContext, claim_request, deliver_one
from carepost.flows.schedule import SendHold
from carepost.ledger import AuditError, AuditLog, Ledger, OutboxEvent, Settlement
from carepost.ledger.ledger import Claim
from carepost.ledger.inbox import (
    Inbox,
    InboxEvent,
    PendingKind,
    PendingSend,
    PendingState,
    as_utc,
)
from carepost.templates import TemplateLibrary

__all__ = ["BehaviourEngine", "behaviour_flow", "trigger_key"]

log = logging.getLogger(__name__)

# A profile the warehouse does not hold yet is tried again this much later.
MISSING_PROFILE_RETRY = timedelta(minutes=15)
SENDS_IN_FLIGHT = 8


def trigger_key(key_property: str, value: str) -> str:
    """Return ``appointment:<id>`` for ``appointment_id`` and so on."""
    prefix = key_property.removesuffix("_id") or key_property
    return f"{prefix}:{value}"


def _run_key(key: str, reminder: int) -> str:
    return key if reminder == 1 else f"{key}#{reminder}"


def _matches(campaign: Campaign, event: InboxEvent) -> bool:
    trigger = campaign.trigger
    if trigger is None or trigger.event != event.type:
        return False
    properties = event.property_map()
    return all(str(properties.get(name)) == str(value)
               for name, value in trigger.where.items())


@dataclass(frozen=True)
class _Ready:
    """A due send that passed every pass-level check and goes to delivery."""

    send: PendingSend
    campaign: Campaign
    run: RunContext
    recipient: Recipient


@dataclass(frozen=True)
class _PassKeys:
    """Secrets read once per pass rather than from the key files per send."""

    address_key: bytes
    token_keys: dict[str, bytes]


class BehaviourEngine:
    """Plans and sends triggered emails for one project (see module doc).

    ``keep_warehouse_open`` keeps the DuckDB connection between passes
    until ``release_warehouse`` (``carepost serve``'s dispatcher does so).
    """

    def __init__(self, settings: Settings, *, keep_warehouse_open: bool = False) -> None:
        self.settings = settings
        self.ledger = Ledger(settings.ledger_url)
        self.inbox = Inbox(self.ledger.engine)
        self.audit = AuditLog(settings.ledger_url)
        self.warehouse = WarehouseHandle(settings.warehouse_path,
                                         keep_open=keep_warehouse_open)
        self._templates: TemplateLibrary | None = None
        self.campaigns: dict[str, Campaign] = {}
        self.reload()

    def reload(self) -> None:
        """Read the campaign files and templates again."""
        self.campaigns = load_campaigns(self.settings.path(self.settings.campaigns_dir))
        self._templates = TemplateLibrary(
            self.settings.path(self.settings.templates_dir), self.settings.practice)

    def release_warehouse(self) -> None:
        """Close a warehouse connection kept open between passes."""
        self.warehouse.release()

    def close(self) -> None:
        self.warehouse.release()
        self.audit.close()
        self.ledger.close()

    # -- plan ------------------------------------------------------------------

    def plan(self) -> int:
        """Turn unplanned inbox events into pending sends; return how many."""
        added = 0
        while events := self.inbox.unplanned():
            added += self.inbox.plan({event.event_id: self._sends_for(event)
                                      for event in events})
        return added

    def _sends_for(self, event: InboxEvent) -> list[PendingSend]:
        sends = []
        for campaign in self.campaigns.values():
            if not _matches(campaign, event):
                continue
            value = event.property_map().get(campaign.trigger.key)
            if value is None:
                log.warning("event %s has no %s, so campaign %s cannot key it; "
                            "not sent", event.event_id, campaign.trigger.key,
                            campaign.name)
                continue
            key = trigger_key(campaign.trigger.key, value)
            due = as_utc(event.occurred_at) + campaign.trigger.delay
            sends.append(PendingSend(
                campaign=campaign.name, run_key=key, profile_id=event.profile_id,
                kind=PendingKind.TRIGGER, trigger_key=key, event_id=event.event_id,
                event_at=as_utc(event.occurred_at), due_at=due,
                deadline=due + campaign.send_deadline, state=PendingState.PENDING))
        return sends

    # -- one pass -------------------------------------------------------------

    async def run_pass(self, now: datetime | None = None,
                       sender: TlsSender | None = None) -> Counter[str]:
        """Plan new events, then work every pending send that is due.

        ``sender`` lets a long-running caller keep its TLS connections
        between passes; without one, the pass opens its own.
        """
        now = now or datetime.now(UTC)
        counts: Counter[str] = Counter(planned=self.plan())
        due = self.inbox.due(now)
        if not due:
            return counts
        try:
            warehouse = self.warehouse.connect()
        except duckdb.IOException as exc:
            log.warning("warehouse busy (%s); %d due sends wait for the next pass",
                        type(exc).__name__, len(due))
            return counts + Counter(waiting=len(due))
        try:
            snapshot = read_snapshot(warehouse, self.inbox, self.campaigns.values(),
                                     due, now)
            if sender is None:
                smtp = self.settings.smtp
                async with TlsSender(smtp, password=smtp.password()) as own:
                    items = await self._work_all(due, now, snapshot, own)
            else:
                items = await self._work_all(due, now, snapshot, sender)
        finally:
            self.warehouse.pass_finished()
        counts.update(item.outcome for item in items.values())
        self._record_audit(due, items)
        await self._push_outbox()
        return counts

    async def _work_all(self, due: list[PendingSend], now: datetime,
                        snapshot: Snapshot, sender: TlsSender
                        ) -> dict[int, PassItem]:
        """Work the due sends; return what happened to each, by pending id."""
        sender.use_ledger(self.ledger.engine)
        keys = _PassKeys(self.settings.address_hash_key, self.settings.tracking_keys)
        items: dict[int, PassItem] = {}
        ready: list[_Ready] = []
        for send in due:
            decided = self._decide(send, now, snapshot)
            if decided is not None:
                items[send.id] = decided
                continue
            prepared = self._prepare(send, now, snapshot, sender, keys)
            if isinstance(prepared, _Ready):
                ready.append(prepared)
            else:
                items[send.id] = prepared
        items.update(await self._deliver_all(ready, now))
        return items

    def _decide(self, send: PendingSend, now: datetime,
                snapshot: Snapshot) -> PassItem | None:
        """Return the outcome of a send that is not delivered, or None."""
        campaign = self.campaigns.get(send.campaign)
        if campaign is None:
            self.inbox.finish(send.id, PendingState.CANCELLED,
                              "campaign no longer configured")
            return PassItem(send.run_key, "cancelled")
        if now > as_utc(send.deadline):
            return self._expire(campaign, send)
        if send.kind != PendingKind.WINDOW:
            reason = self._cancel_reason(campaign, send, snapshot)
            if reason is not None:
                self.inbox.finish(send.id, PendingState.CANCELLED, reason)
                log.info("%s for profile %s cancelled: %s", send.run_key,
                         send.profile_id, reason)
                return PassItem(send.run_key, "cancelled")
        if send.kind == PendingKind.ESCALATION:
            return PassItem(send.run_key, self._escalate(campaign, send))
        return None

    def _expire(self, campaign: Campaign, send: PendingSend) -> PassItem:
        delivery_id = None
        if send.kind == PendingKind.WINDOW:
            claim = self.ledger.claim(campaign=campaign.name, run_key=send.run_key,
                                      profile_id=send.profile_id,
                                      purpose=campaign.purpose)
            self.ledger.settle(claim.delivery_id, Settlement(
                DeliveryState.SUPPRESSED, reason="expired: send_by passed while held "
                                                 "for the send window"))
            delivery_id = claim.delivery_id
        self.inbox.finish(send.id, PendingState.EXPIRED, "send_by deadline passed")
        log.warning("%s %s for profile %s expired at its send_by deadline",
                    campaign.name, send.run_key, send.profile_id)
        return PassItem(send.run_key, "expired", delivery_id)

    # -- re-checks at send time --------------------------------------------------------

    def _cancel_reason(self, campaign: Campaign, send: PendingSend,
                       snapshot: Snapshot) -> str | None:
        trigger = campaign.trigger
        if trigger is None or send.event_at is None:
            return None
        key_value = (send.trigger_key or "").partition(":")[2]
        for rule in trigger.cancel_if:
            key = (trigger.key, key_value) if rule.match == "key" else None
            if snapshot.has_event_after(send.profile_id, rule.event,
                                        as_utc(send.event_at), key):
                return f"{rule.event} after the trigger event"
        return None

    # -- delivery -------------------------------------------------------------

    def _prepare(self, send: PendingSend, now: datetime, snapshot: Snapshot,
                 sender: TlsSender, keys: _PassKeys) -> _Ready | PassItem:
        """Build the send's run context, or wait for a profile not loaded yet."""
        campaign = self.campaigns[send.campaign]
        run = self._run_context(campaign, send, now, snapshot.warehouse, sender, keys)
        recipient = snapshot.recipients.get((run.run_date, send.profile_id))
        if recipient is None:
            self.inbox.reschedule(send.id, now + MISSING_PROFILE_RETRY,
                                  "profile not in the warehouse yet")
            log.warning("profile %s of %s is not in the warehouse; trying again "
                        "in %s", send.profile_id, send.run_key, MISSING_PROFILE_RETRY)
            return PassItem(send.run_key, "waiting")
        return _Ready(send, campaign, run,
                      self._with_trigger_time(campaign, send, recipient))

    async def _deliver_all(self, ready: list[_Ready], now: datetime
                           ) -> dict[int, PassItem]:
        """Claim every ready send in one transaction, then deliver them."""
        claims = self.ledger.claim_many([claim_request(item.run, item.recipient)
                                         for item in ready])
        gate = asyncio.Semaphore(SENDS_IN_FLIGHT)

        async def one(item: _Ready, claim: Claim) -> str:
            async with gate:
                return await deliver_one(item.run, item.recipient, claim)

        results = await asyncio.gather(*(one(item, claim)
                                         for item, claim in zip(ready, claims)),
                                       return_exceptions=True)
        items: dict[int, PassItem] = {}
        finished: list[tuple[int, PendingState, str]] = []
        for item, claim, result in zip(ready, claims, results):
            send = item.send
            if isinstance(result, BaseException):
                # The type only: a driver's message could quote a value.
                log.error("%s %s for profile %s failed with %s; it stays pending "
                          "for the next pass", item.campaign.name, send.run_key,
                          send.profile_id, type(result).__name__)
                items[send.id] = PassItem(send.run_key, "failed", claim.delivery_id)
                continue
            items[send.id] = PassItem(send.run_key, result, claim.delivery_id)
            log.info("%s %s for profile %s: %s", item.campaign.name, send.run_key,
                     send.profile_id, result)
            if result == "window_deferred":
                continue  # the hold moved this row's due time
            if result == "sent" and send.kind == PendingKind.TRIGGER:
                # Before the finish: a crash in between re-works the send,
                # which the ledger reports as already done.
                self._follow_up(item.campaign, send, now)
            finished.append((send.id, PendingState.DONE, result))
        self.inbox.finish_many(finished)
        return items

    def _run_context(self, campaign: Campaign, send: PendingSend, now: datetime,
                     warehouse: duckdb.DuckDBPyConnection, sender: TlsSender,
                     keys: _PassKeys) -> RunContext:
        template = self._templates.get(campaign.template)
        hold = SendHold(inbox=self.inbox, window=campaign.send_window,
                        fallback_zone=self.settings.practice.timezone,
                        deadline=as_utc(send.deadline), clock=lambda: now)
        return RunContext(
            settings=self.settings, campaign=campaign, template=template,
            run_key=send.run_key, run_date=run_date(send, now), ledger=self.ledger,
            warehouse=warehouse, sender=sender, address_key=keys.address_key,
            token_keys=keys.token_keys, audit=self.audit, hold=hold)

    @staticmethod
    def _with_trigger_time(campaign: Campaign, send: PendingSend,
                           recipient: Recipient) -> Recipient:
        trigger = campaign.trigger
        if trigger is None or trigger.time_field is None or send.event_at is None:
            return recipient
        context = {**recipient.context, trigger.time_field: PHI(as_utc(send.event_at))}
        return dataclasses.replace(recipient, context=context)

    # -- reminders and escalation ---------------------------------------------

    def _follow_up(self, campaign: Campaign, send: PendingSend, now: datetime) -> None:
        trigger = campaign.trigger
        interval = trigger.repeat_every or trigger.delay
        due = max(as_utc(send.due_at), now) + interval
        escalation = trigger.escalation
        if escalation is not None and send.reminder == escalation.after_reminders:
            self.inbox.add_pending(self._next(campaign, send, PendingKind.ESCALATION,
                                              f"{send.trigger_key}#escalation", due))
        if send.reminder < trigger.max_reminders:
            number = send.reminder + 1
            self.inbox.add_pending(self._next(
                campaign, send, PendingKind.TRIGGER,
                _run_key(send.trigger_key, number), due, reminder=number))

    @staticmethod
    def _next(campaign: Campaign, send: PendingSend, kind: PendingKind, run_key: str,
              due: datetime, reminder: int | None = None) -> PendingSend:
        return PendingSend(
            campaign=campaign.name, run_key=run_key, profile_id=send.profile_id,
            kind=kind, trigger_key=send.trigger_key,
            reminder=reminder or send.reminder, event_id=send.event_id,
            event_at=send.event_at, due_at=due, deadline=due + campaign.send_deadline,
            state=PendingState.PENDING)

    def _escalate(self, campaign: Campaign, send: PendingSend) -> str:
        event_type = campaign.trigger.escalation.event
        event_id = hashlib.sha256(
            f"{event_type}|{campaign.name}|{send.trigger_key}|{send.profile_id}"
            .encode()).hexdigest()[:32]
        payload = {
            "event_id": event_id, "type": event_type, "profile_id": send.profile_id,
            "campaign": campaign.name, "occurred_at": datetime.now(UTC).isoformat(),
            "properties": {"campaign": campaign.name, "trigger": send.trigger_key,
                           "reminders": send.reminder,
                           "trigger_event_id": send.event_id},
        }
        self.inbox.queue_event(OutboxEvent(
            event_id=event_id, type=event_type, profile_id=send.profile_id,
            campaign=campaign.name, payload=json.dumps(payload, sort_keys=True)))
        self.inbox.finish(send.id, PendingState.DONE, "escalated")
        log.warning("%s for profile %s went unanswered after %d reminders; pushed %s",
                    send.trigger_key, send.profile_id, send.reminder, event_type)
        return "escalated"

    # -- audit and CDP events ---------------------------------------------------

    def _record_audit(self, due: list[PendingSend], items: dict[int, PassItem]) -> None:
        """Append one ``delivery.batch`` entry per campaign the pass worked."""
        by_campaign: dict[str, list[PassItem]] = defaultdict(list)
        for send in due:
            if send.id in items:
                by_campaign[send.campaign].append(items[send.id])
        for campaign, campaign_items in by_campaign.items():
            try:
                record_pass(self.audit, campaign, campaign_items)
            except AuditError as exc:
                # The sends are settled; the missing entry must be looked into.
                log.error("audit entry of a behaviour pass for campaign %s not "
                          "written: %s", campaign, exc)

    async def _push_outbox(self) -> None:
        from carepost.connectors.cdp_sinks import SinkError, build_sink
        from carepost.flows.feedback import push_outbox

        sink = build_sink(self.settings)
        try:
            await push_outbox(self.ledger, sink)
        except SinkError as exc:
            log.warning("events not pushed, they stay in the outbox: %s", exc)
        finally:
            await sink.aclose()


@flow(name="behaviour", flow_run_name="behaviour-{reason}", persist_result=False)
async def behaviour_flow(reason: str = "poll") -> dict[str, int]:
    """Run one behaviour pass and return its counts (ids and numbers only)."""
    engine = BehaviourEngine(load_settings())
    try:
        return dict(await engine.run_pass())
    finally:
        engine.close()
