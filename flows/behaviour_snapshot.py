"""Facts a behaviour pass reads once for all its due sends.

A pass loads its recipients from the warehouse in one query per run
date, and the cancel events of every due send's profile in one warehouse
query and one inbox query, instead of several queries per send.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import duckdb

from carepost.core.campaign import Campaign
from carepost.flows.context import Recipient, load_recipients
from carepost.ledger.inbox import Inbox, PendingKind, PendingSend, as_utc

__all__ = ["Snapshot", "read_snapshot", "run_date"]

# (profile id, event type) -> [(time, properties)]
EventRows = dict[tuple[str, str], list[tuple[datetime, dict[str, Any]]]]


def run_date(send: PendingSend, now: datetime) -> date:
    """Return the run date: a held scheduled send keeps its own; a trigger
    uses today's."""
    return date.fromisoformat(send.run_key) if send.kind == PendingKind.WINDOW \
        else now.date()


@dataclass
class Snapshot:
    """Warehouse and inbox facts one pass needs, read once instead of per send."""

    warehouse: duckdb.DuckDBPyConnection
    recipients: dict[tuple[date, str], Recipient]
    events: EventRows

    def has_event_after(self, profile_id: str, event_type: str, after: datetime,
                        key: tuple[str, str] | None) -> bool:
        """Return whether the profile has an ``event_type`` after ``after``.

        ``key`` (property name, value) narrows the match to events naming
        the same appointment or prescription.
        """
        for occurred_at, properties in self.events.get((profile_id, event_type), []):
            if occurred_at <= after:
                continue
            if key is None or str(properties.get(key[0])) == key[1]:
                return True
        return False


def read_snapshot(warehouse: duckdb.DuckDBPyConnection, inbox: Inbox,
                  campaigns: Iterable[Campaign], due: Sequence[PendingSend],
                  now: datetime) -> Snapshot:
    """Read the pass's recipients and cancel events in a few queries."""
    by_date: dict[date, set[str]] = defaultdict(set)
    for send in due:
        by_date[run_date(send, now)].add(send.profile_id)
    recipients = {
        (day, recipient.profile_id): recipient
        for day, ids in by_date.items()
        for recipient in load_recipients(warehouse, sorted(ids), day)
    }
    cancel_types = sorted({rule.event for campaign in campaigns
                           if campaign.trigger is not None
                           for rule in campaign.trigger.cancel_if})
    starts = [as_utc(send.event_at) for send in due if send.event_at is not None]
    events: EventRows = defaultdict(list)
    if cancel_types and starts:
        profile_ids = sorted({send.profile_id for send in due})
        since = min(starts)
        _add_rows(events, _warehouse_events(warehouse, profile_ids, cancel_types, since))
        _add_rows(events, inbox.events_after(profile_ids=profile_ids,
                                             event_types=cancel_types, after=since))
    return Snapshot(warehouse, recipients, events)


def _add_rows(events: EventRows,
              rows: Iterable[tuple[str, str, datetime, dict[str, Any]]]) -> None:
    for profile_id, event_type, occurred_at, properties in rows:
        events[(profile_id, event_type)].append((occurred_at, properties))


def _warehouse_events(warehouse: duckdb.DuckDBPyConnection, profile_ids: list[str],
                      event_types: list[str], since: datetime
                      ) -> list[tuple[str, str, datetime, dict[str, Any]]]:
    cursor = warehouse.cursor()
    try:
        rows = cursor.execute(
            "SELECT profile_id, type, occurred_at, properties FROM events "
            "WHERE profile_id IN (SELECT unnest(?)) AND type IN (SELECT unnest(?)) "
            "AND occurred_at > ?", [profile_ids, event_types, since]).fetchall()
    finally:
        cursor.close()
    return [(profile_id, event_type, as_utc(occurred_at),
             json.loads(properties) if properties else {})
            for profile_id, event_type, occurred_at, properties in rows]
