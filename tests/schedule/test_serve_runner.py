"""Scheduled deployments run by the Prefect runner that ``carepost serve`` uses.

These tests register the deployments with ``register_deployments``, create
flow runs on the session's Prefect server the way the scheduler does (a
``Scheduled`` state with a scheduled time), and let a real ``Runner`` start
them in a subprocess through Prefect's engine. The flow therefore reads
its scheduled time from ``prefect.runtime.flow_run`` as in production,
where it is a Prefect ``DateTime`` and not a plain ``datetime``.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.runner import Runner
from prefect.states import Scheduled

from carepost.connectors.local_smtp import LocalTlsSmtpServer
from carepost.core.settings import Settings, load_settings
from carepost.flows.serve import register_deployments
from carepost.ledger import AuditLog
from tests.flows.project import Project

from .conftest import CAMPAIGN, scheduled_runs

pytestmark = pytest.mark.prefect


async def _delete_deployments() -> None:
    async with get_client() as client:
        for deployment in await client.read_deployments():
            await client.delete_deployment(deployment.id)


@pytest.fixture(autouse=True)
async def fresh_deployments(prefect_api: str) -> AsyncIterator[None]:
    """Delete every deployment, and so its scheduled runs, around each test.

    The server schedules runs from a deployment's cron as soon as it is
    registered, and a run left from another test would start in this one.
    """
    await _delete_deployments()
    yield
    await _delete_deployments()


def _every_minute(project: Project) -> None:
    """Give the campaign the cron of the reported failure, ``* * * * *``."""
    path = project.root / "campaigns" / f"{CAMPAIGN}.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["schedule"]["cron"] = "* * * * *"
    path.write_text(yaml.safe_dump(spec))


async def _schedule(deployment: str, times: list[datetime]) -> list[UUID]:
    """Create one ``Scheduled`` flow run of ``deployment`` per time."""
    async with get_client() as client:
        found = await client.read_deployment_by_name(deployment)
        runs = [await client.create_flow_run_from_deployment(
                    found.id, state=Scheduled(scheduled_time=moment))
                for moment in times]
    return [run.id for run in runs]


async def _serve_runner(settings: Settings) -> Runner:
    """Return a runner with the deployments of ``carepost serve`` registered."""
    # A one-second prefetch (Prefect's default is 10 s) keeps out the runs
    # the server schedules from the cron itself, which start on the coming
    # minute: one is picked up only when the poll falls within a second of it.
    runner = Runner(name="carepost-serve-test", pause_on_shutdown=False,
                    prefetch_seconds=1)
    await register_deployments(runner, settings)
    return runner


async def _poll_once(runner: Runner) -> None:
    """Run one poll of the runner and wait for the runs it started."""
    # Runner.start installs its own SIGTERM handler on the main thread.
    previous = signal.getsignal(signal.SIGTERM)
    try:
        await runner.start(run_once=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _local_date(moment: datetime) -> str:
    """Return the run key: the date in the campaign's zone (America/Chicago)."""
    return moment.astimezone(ZoneInfo("America/Chicago")).date().isoformat()


async def _finished(run_ids: list[UUID]) -> list[FlowRun]:
    async with get_client() as client:
        return [await client.read_flow_run(run_id) for run_id in run_ids]


async def test_runner_sends_due_run(
        project: tuple[Project, LocalTlsSmtpServer]) -> None:
    folder, smtp = project
    _every_minute(folder)
    runner = await _serve_runner(load_settings(folder.config))
    now = datetime.now(UTC)
    scheduled = now.replace(second=0, microsecond=0)
    missed = scheduled - timedelta(days=2)
    run_ids = await _schedule(f"scheduled-campaign/{CAMPAIGN}", [scheduled, missed])
    # Opening the ledger here creates its tables before the two runs start
    # at once: two first runs on a new SQLite ledger race to create them.
    assert scheduled_runs(folder) == []

    await _poll_once(runner)

    due, late = await _finished(run_ids)
    assert due.state.is_completed(), due.state.message
    assert late.state.is_completed(), late.state.message
    assert smtp.messages_received > 0
    assert sorted(scheduled_runs(folder)) == sorted([
        (_local_date(scheduled), "started"), (_local_date(missed), "expired")])


async def test_runner_runs_retention_purge(
        project: tuple[Project, LocalTlsSmtpServer]) -> None:
    folder, smtp = project
    settings = load_settings(folder.config)
    runner = await _serve_runner(settings)
    [run_id] = await _schedule("purge/retention", [datetime.now(UTC)])

    await _poll_once(runner)

    [purge] = await _finished([run_id])
    assert purge.state.is_completed(), purge.state.message
    with AuditLog(settings.ledger_url) as audit:
        entries = list(audit.entries(action="retention.purged"))
    assert len(entries) == 1
    assert smtp.messages_received == 0

