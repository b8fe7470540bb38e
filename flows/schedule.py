"""Time rules of scheduled and triggered sends: send windows and deadlines.

- **Cron in a time zone.** Prefect's ``CronSchedule`` (3.9) computes a
  campaign's runs in its IANA zone and is DST-correct: ``0 9 * * *`` in
  America/New_York fires at 13:00Z in summer time and 14:00Z in winter
  time, once per local day. A time in the skipped spring hour (02:30)
  fires once, an hour later on the wall clock; a time in the repeated
  autumn hour fires once, at its first occurrence. ``tests/schedule``
  pins this behaviour.
- **Run date.** A scheduled run's date is its scheduled time's date in
  the campaign's zone, and that date is the run key in the ledger.
- **send_by.** A send may go out until ``scheduled (or due) time +
  send_by`` (12 h when the campaign sets none). A run that starts later,
  for example when ``carepost serve`` was down, is recorded as
  ``expired`` in ``scheduled_runs`` and sends nothing.
- **Send window.** Each recipient gets mail only between the window's
  ``start`` and ``end`` in their own zone (the profile's, else the
  practice's, and the ledger reason says so). Outside it, ``defer``
  settles the delivery row ``deferred`` and adds a ``window`` pending
  send for the next opening; ``skip`` settles it ``suppressed``. When the
  next opening is after the deadline the row is settled ``suppressed``
  with reason ``expired``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable
from zoneinfo import ZoneInfo

from prefect import flow

from carepost.core.campaign import Campaign, SendWindow, load_campaigns
from carepost.core.errors import ConfigError
from carepost.core.settings import load_settings
from carepost.core.states import DeliveryState
from carepost.ledger import Ledger, Settlement
from carepost.ledger.inbox import (
    Inbox,
    PendingKind,
    PendingSend,
    PendingState,
)

if TYPE_CHECKING:
    from carepost.flows.context import Recipient
    from carepost.flows.delivery import RunContext

__all__ = [
    "SendHold",
    "WindowDecision",
    "deadline_passed",
    "in_window",
    "next_opening",
    "run_date_for",
    "run_scheduled",
    "scheduled_campaign_flow",
    "utc_instant",
]

log = logging.getLogger(__name__)


def utc_instant(moment: datetime) -> datetime:
    """Return ``moment`` as a plain, aware ``datetime`` in UTC.

    Every time that reaches this module from Prefect or from the inbox
    passes through here. A naive value is UTC: Prefect 3.9 parses a
    naive time as UTC (``prefect.runtime.flow_run``, and its ``DateTime``
    validator), and SQLite returns the ledger's UTC times naive.

    The copy into a plain ``datetime`` is the point. On Python 3.11 and
    3.12 Prefect's ``scheduled_start_time`` is a pendulum ``DateTime``
    subclass. Once converted to a standard ``tzinfo`` such as ``UTC``,
    pendulum 3.3.0 drops that zone when a ``timedelta`` is added
    (``DateTime.add`` keeps only pendulum's own time zones), so
    ``scheduled + send_by`` came out naive. Only attributes are read here
    because Prefect warns on pendulum's own methods, ``replace`` among them.
    """
    plain = datetime(moment.year, moment.month, moment.day, moment.hour,
                     moment.minute, moment.second, moment.microsecond,
                     tzinfo=moment.tzinfo, fold=moment.fold)
    if plain.utcoffset() is None:
        return plain.replace(tzinfo=UTC)
    return plain.astimezone(UTC)


def run_date_for(scheduled_for: datetime, timezone: str) -> date:
    """Return the local date of a scheduled run, its ledger run key."""
    return utc_instant(scheduled_for).astimezone(ZoneInfo(timezone)).date()


def deadline_passed(due_at: datetime, send_by: timedelta, now: datetime) -> bool:
    """Return whether ``now`` is past ``due_at + send_by`` (naive means UTC)."""
    return utc_instant(now) > utc_instant(due_at) + send_by


def in_window(window: SendWindow, local: datetime) -> bool:
    """Return whether a local wall-clock time is inside the window."""
    clock = local.time().replace(tzinfo=None)
    if window.start == window.end:
        return True
    if window.start < window.end:
        return window.start <= clock < window.end
    return clock >= window.start or clock < window.end


def next_opening(window: SendWindow, zone: ZoneInfo, now: datetime) -> datetime:
    """Return the next time (UTC) the window opens in ``zone`` after ``now``.

    A start time that does not exist on a spring-forward day resolves to
    the instant after the gap (zoneinfo's ``fold=0`` rule).
    """
    local = utc_instant(now).astimezone(zone)
    day = local.date()
    if local.time().replace(tzinfo=None) >= window.start:
        day += timedelta(days=1)
    opening = datetime.combine(day, window.start, tzinfo=zone)
    return opening.astimezone(UTC)


@dataclass(frozen=True)
class WindowDecision:
    """The decision for one recipient outside the send window."""

    result: str  # window_deferred, window_skipped or expired
    state: DeliveryState
    reason: str
    opens_at: datetime | None = None


@dataclass
class SendHold:
    """Holds recipients outside the campaign's send window (see module doc)."""

    inbox: Inbox
    window: SendWindow
    fallback_zone: str
    deadline: datetime
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.deadline = utc_instant(self.deadline)

    def decide(self, zone_name: str | None) -> WindowDecision | None:
        """Return None to send now, or how the recipient is held."""
        zone = ZoneInfo(zone_name or self.fallback_zone)
        where = (f"{zone.key}" if zone_name
                 else f"practice zone {zone.key}: the profile has none")
        now = utc_instant(self.clock())
        if in_window(self.window, now.astimezone(zone)):
            return None
        span = f"{self.window.start:%H:%M}-{self.window.end:%H:%M} ({where})"
        if self.window.outside == "skip":
            return WindowDecision("window_skipped", DeliveryState.SUPPRESSED,
                                  f"outside the send window {span}")
        opens_at = next_opening(self.window, zone, now)
        if opens_at > self.deadline:
            return WindowDecision("expired", DeliveryState.SUPPRESSED,
                                  f"expired: the send window {span} opens after the "
                                  f"send_by deadline {self.deadline:%Y-%m-%dT%H:%MZ}")
        return WindowDecision("window_deferred", DeliveryState.DEFERRED,
                              f"outside the send window {span}; held until "
                              f"{opens_at:%Y-%m-%dT%H:%MZ}", opens_at)

    def apply(self, run: RunContext, recipient: Recipient,
              delivery_id: int) -> str | None:
        """Settle a held recipient's row and record the hold; None to send now."""
        zone = recipient.context.get("timezone")
        decision = self.decide(zone.reveal() if zone is not None else None)
        if decision is None:
            return None
        run.ledger.settle(delivery_id, Settlement(decision.state,
                                                  reason=decision.reason))
        if decision.opens_at is not None:
            self.inbox.hold_for_window(PendingSend(
                campaign=run.campaign.name, run_key=run.run_key,
                profile_id=recipient.profile_id, kind=PendingKind.WINDOW,
                due_at=decision.opens_at, deadline=self.deadline,
                state=PendingState.PENDING, outcome=decision.reason))
        return decision.result


def hold_for(campaign: Campaign, inbox: Inbox, practice_zone: str,
             due_at: datetime) -> SendHold:
    """Build the hold of one run due at ``due_at`` (its deadline follows)."""
    return SendHold(inbox=inbox, window=campaign.send_window,
                    fallback_zone=practice_zone,
                    deadline=utc_instant(due_at) + campaign.send_deadline)


def _scheduled_campaign(name: str) -> Campaign:
    settings = load_settings()
    campaigns = load_campaigns(settings.path(settings.campaigns_dir))
    spec = campaigns.get(name)
    if spec is None or spec.schedule is None:
        raise ConfigError(f"campaign {name!r} has no schedule in "
                          f"{settings.campaigns_dir}",
                          hint="restart carepost serve after changing campaigns")
    return spec


async def run_scheduled(campaign: str, scheduled_for: datetime,
                        now: datetime) -> dict[str, Any]:
    """Run one scheduled firing, unless it expired or already ran.

    The ``scheduled_runs`` row is the lease: a second instance, or a
    Prefect run created twice for the same local date, finds it and
    sends nothing. A run that crashed half way is not restarted here;
    ``carepost run CAMPAIGN --as-of DATE`` finishes it (the ledger skips
    everyone already mailed). Naive ``scheduled_for`` and ``now`` are UTC.
    """
    from carepost.flows.campaign import campaign_flow

    spec = _scheduled_campaign(campaign)
    scheduled_for = utc_instant(scheduled_for)
    now = utc_instant(now)
    run_key = run_date_for(scheduled_for, spec.schedule.timezone).isoformat()
    result: dict[str, Any] = {"campaign": campaign, "run_date": run_key,
                              "scheduled_for": scheduled_for.isoformat()}
    settings = load_settings()
    ledger = Ledger(settings.ledger_url)
    try:
        inbox = Inbox(ledger.engine)
        if deadline_passed(scheduled_for, spec.send_deadline, now):
            late = now - scheduled_for
            inbox.lease_scheduled_run(campaign, run_key, scheduled_for,
                                      state="expired",
                                      reason=f"started {late} after its scheduled "
                                             "time, past send_by")
            log.warning("campaign %s run %s expired: started %s late, send_by is %s",
                        campaign, run_key, late, spec.send_deadline)
            return {**result, "status": "expired"}
        if not inbox.lease_scheduled_run(campaign, run_key, scheduled_for):
            log.warning("campaign %s run %s was already started; not run again "
                        "(finish it with carepost run %s --as-of %s)",
                        campaign, run_key, campaign, run_key)
            return {**result, "status": "already_started"}
    finally:
        ledger.close()
    summary = await campaign_flow(campaign=campaign, run_date=run_key,
                                  scheduled_for=scheduled_for.isoformat())
    return {**result, **summary, "status": "ran"}


@flow(name="scheduled-campaign", flow_run_name="{campaign}-scheduled",
      persist_result=False)
async def scheduled_campaign_flow(campaign: str) -> dict[str, Any]:
    """Run a campaign for the local date of this flow run's scheduled time."""
    from prefect.runtime import flow_run

    # Prefect's expected start time; outside a flow run Prefect returns now.
    scheduled = utc_instant(flow_run.scheduled_start_time)
    return await run_scheduled(campaign, scheduled, datetime.now(UTC))
