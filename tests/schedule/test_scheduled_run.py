"""Scheduled runs: the send_by deadline, the lease, and quiet-hours deferral.

The quiet-hours test runs a real scheduled campaign on the session's
Prefect server against a STARTTLS server; the sample export's addresses
are on the reserved example.test domain.
"""

from __future__ import annotations

import mailbox
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml

from carepost.core.settings import load_settings
from carepost.flows.behaviour import BehaviourEngine
from carepost.flows.schedule import run_scheduled
from carepost.ledger import Inbox, Ledger

from .conftest import CAMPAIGN, scheduled_runs


async def test_missed_run_expires(project) -> None:
    folder, smtp = project
    scheduled = datetime(2025, 6, 2, 14, 0, tzinfo=UTC)  # Monday 09:00 Chicago
    result = await run_scheduled(CAMPAIGN, scheduled,
                                 scheduled + timedelta(hours=12, minutes=1))
    assert result["status"] == "expired"
    assert result["run_date"] == "2025-06-02"
    assert scheduled_runs(folder) == [("2025-06-02", "expired")]
    assert smtp.messages_received == 0


async def test_second_start_is_refused(project) -> None:
    folder, smtp = project
    scheduled = datetime(2025, 6, 2, 14, 0, tzinfo=UTC)
    ledger = Ledger(load_settings(folder.config).ledger_url)
    Inbox(ledger.engine).lease_scheduled_run(CAMPAIGN, "2025-06-02", scheduled)
    ledger.close()
    result = await run_scheduled(CAMPAIGN, scheduled, scheduled + timedelta(minutes=5))
    assert result["status"] == "already_started"
    assert smtp.messages_received == 0


def _closed_window(now: datetime, zone: ZoneInfo) -> dict[str, str]:
    """A one-hour window opening two hours from now, local time."""
    local = now.astimezone(zone)
    start = (local + timedelta(hours=2)).replace(minute=0)
    end = start + timedelta(hours=1)
    return {"start": f"{start:%H:%M}", "end": f"{end:%H:%M}"}


@pytest.mark.prefect
async def test_quiet_hours_defer_scheduled(project, prefect_api) -> None:
    folder, smtp = project
    settings = load_settings(folder.config)
    zone = ZoneInfo(settings.practice.timezone)
    now = datetime.now(UTC)
    path = folder.root / "campaigns" / f"{CAMPAIGN}.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["send_window"] = _closed_window(now, zone)
    path.write_text(yaml.safe_dump(spec))

    result = await run_scheduled(CAMPAIGN, now, now)

    assert result["status"] == "ran"
    assert result["sent"] == 0
    assert result["window_deferred"] > 0
    assert smtp.messages_received == 0
    engine = BehaviourEngine(settings)
    held = [row for row in engine.inbox.pending_rows(CAMPAIGN) if row.kind == "window"]
    assert len(held) == result["window_deferred"]
    opening = min(row.due_at for row in held)
    assert opening > now

    counts = await engine.run_pass(opening)
    engine.close()
    assert counts["sent"] == result["window_deferred"]
    assert len(mailbox.Maildir(smtp.maildir)) == counts["sent"]
