"""``carepost serve``: schedules, webhooks and triggered sends in one process.

Three parts share one asyncio loop on the main thread, plus one thread:

- a Prefect ``Runner`` serving one deployment per scheduled campaign
  (``scheduled-campaign/<name>``, the campaign's cron in its time zone)
  and an unscheduled ``behaviour/behaviour`` deployment. The runner
  starts each scheduled run as a subprocess, as Prefect's ``serve`` does;
- uvicorn with the service app: ``/health``, the webhooks, and the
  tracking routes when ``carepost.service.tracking`` is installed;
- the ``TriggerDispatcher`` thread, which runs a behaviour pass right
  after each accepted webhook and otherwise when the next pending send
  falls due (at least every ``poll_seconds``).

The dispatcher calls ``BehaviourEngine.run_pass`` directly rather than
through ``run_deployment``: measured on this machine (``bench/trigger.py``,
docs/benchmarks.md) that keeps webhook-to-SMTP latency well under a
second, where a deployment run waits for the runner's poll and a new
process. SIGINT and SIGTERM stop all three and return normally.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Iterator

import uvicorn

from carepost.core.campaign import load_campaigns
from carepost.core.settings import Settings
from carepost.service.app import RouteFactory, create_app
from carepost.service.webhooks import webhook_routes

__all__ = ["TriggerDispatcher", "serve"]

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 30.0
# ``direct`` runs the pass in this process; ``flow`` wraps each pass in a
# Prefect flow run (visible in the UI, slower: see docs/benchmarks.md).
DISPATCH_MODES = ("direct", "flow")
RUNNER_START_TIMEOUT_SECONDS = 60.0
# The dispatcher keeps the warehouse open while webhooks keep arriving and
# closes it after this long without a wake-up, so that ``carepost sync``
# and scheduled runs can open the file (flows/behaviour_warehouse.py).
WAREHOUSE_IDLE_SECONDS = 2.0
# At most one behaviour pass starts per this interval (``_coalesce``); a
# webhook after a quiet spell starts a pass at once.
MIN_PASS_INTERVAL_SECONDS = 0.1


class TriggerDispatcher:
    """Runs behaviour passes on its own thread and event loop.

    ``wake`` is thread-safe and cheap, so the webhook route calls it after
    each inbox commit; wake-ups that arrive during a pass are folded into
    one more pass.
    """

    def __init__(self, settings: Settings, *,
                 poll_seconds: float = DEFAULT_POLL_SECONDS,
                 dispatch: str = "direct") -> None:
        if dispatch not in DISPATCH_MODES:
            raise ValueError(f"unknown dispatch mode {dispatch!r}; "
                             f"use one of {', '.join(DISPATCH_MODES)}")
        self.settings = settings
        self.poll_seconds = poll_seconds
        self.dispatch = dispatch
        self.passes = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._stopping = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="carepost-triggers",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        log.info("trigger dispatcher started (poll every %.0f s)", self.poll_seconds)

    def wake(self, event_id: str = "") -> None:
        if self._loop is not None and self._wake_event is not None:
            self._loop.call_soon_threadsafe(self._wake_event.set)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("trigger dispatcher did not stop within %.0f s", timeout)
        log.info("trigger dispatcher stopped after %d passes", self.passes)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from carepost.connectors.smtp import TlsSender
        from carepost.flows.behaviour import BehaviourEngine

        self._loop = asyncio.get_running_loop()
        self._wake_event = asyncio.Event()
        engine = BehaviourEngine(self.settings,
                                 keep_warehouse_open=self.dispatch == "direct")
        smtp = self.settings.smtp
        self._ready.set()
        try:
            # One connection pool for every pass: a TLS handshake per
            # webhook would cost more than the send itself.
            async with TlsSender(smtp, password=smtp.password()) as sender:
                while not self._stopping:
                    self._wake_event.clear()
                    started = time.monotonic()
                    await self._one_pass(engine, sender)
                    await self._sleep(engine)
                    await self._coalesce(started)
        finally:
            engine.close()

    async def _one_pass(self, engine: Any, sender: Any) -> None:
        started = time.monotonic()
        try:
            if self.dispatch == "flow":
                from carepost.flows.behaviour import behaviour_flow

                counts = await behaviour_flow(reason="dispatch")
            else:
                counts = await engine.run_pass(sender=sender)
        except Exception as exc:  # noqa: BLE001 - the service must keep running
            # The type only: a driver's message could quote a value.
            log.error("behaviour pass failed with %s; retrying on the next wake-up",
                      type(exc).__name__)
            log.debug("behaviour pass failure", exc_info=True)
            return
        self.passes += 1
        worked = {key: value for key, value in counts.items() if value}
        if worked:
            log.info("behaviour pass in %.2f s: %s", time.monotonic() - started, worked)

    async def _sleep(self, engine: Any) -> None:
        """Wait for a wake-up or the next due send, releasing an idle warehouse."""
        timeout = self.poll_seconds
        next_due = engine.inbox.next_due_at()
        if next_due is not None:
            until_due = (next_due - datetime.now(UTC)).total_seconds()
            timeout = min(timeout, max(until_due, 0.05))
        if engine.warehouse.is_open:
            idle = min(timeout, WAREHOUSE_IDLE_SECONDS)
            if await self._wait_for_wake(idle):
                return
            engine.release_warehouse()
            timeout -= idle
        await self._wait_for_wake(timeout)

    async def _coalesce(self, pass_started: float) -> None:
        """Start no pass within ``MIN_PASS_INTERVAL_SECONDS`` of the last one.

        Each pass has a fixed cost (queries, an audit entry, the outbox
        push), so under a steady stream of webhooks a short wait that
        lets events gather costs less CPU than one pass per webhook.
        """
        wait = pass_started + MIN_PASS_INTERVAL_SECONDS - time.monotonic()
        if wait > 0 and not self._stopping:
            await asyncio.sleep(wait)

    async def _wait_for_wake(self, timeout: float) -> bool:
        """Return True when woken within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._wake_event.wait(), max(timeout, 0.0))
        except TimeoutError:
            return False
        return True


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: ``serve`` owns SIGINT/SIGTERM."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def route_factories(notify: Callable[[str], None]) -> tuple[RouteFactory, ...]:
    """Return the webhook routes, plus tracking routes when installed."""
    factories: list[RouteFactory] = [webhook_routes(notify)]
    try:
        from carepost.service.tracking import tracking_routes
    except ImportError:
        log.info("tracking routes not installed; serving webhooks only")
    else:
        factories.append(tracking_routes)
    return tuple(factories)


async def register_deployments(runner: Any, settings: Settings) -> list[str]:
    """Add one deployment per scheduled campaign, the behaviour flow and the purge."""
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from carepost.flows.behaviour import behaviour_flow
    from carepost.flows.purge import PURGE_CRON, purge_flow
    from carepost.flows.schedule import scheduled_campaign_flow

    names = []
    campaigns = load_campaigns(settings.path(settings.campaigns_dir))
    for campaign in campaigns.values():
        if campaign.schedule is None:
            continue
        deployment = await scheduled_campaign_flow.ato_deployment(
            name=campaign.name, parameters={"campaign": campaign.name},
            schedule=Cron(campaign.schedule.cron, timezone=campaign.schedule.timezone),
            entrypoint_type=EntrypointType.MODULE_PATH,
            description=campaign.description or None)
        await runner.aadd_deployment(deployment)
        names.append(f"scheduled-campaign/{campaign.name}")
        log.info("scheduled campaign %s: cron %r in %s", campaign.name,
                 campaign.schedule.cron, campaign.schedule.timezone)
    behaviour = await behaviour_flow.ato_deployment(
        name="behaviour", entrypoint_type=EntrypointType.MODULE_PATH)
    await runner.aadd_deployment(behaviour)
    names.append("behaviour/behaviour")
    # The retention purge, daily in the practice's time zone.
    purge = await purge_flow.ato_deployment(
        name="retention", parameters={"dry_run": False},
        schedule=Cron(PURGE_CRON, timezone=settings.practice.timezone),
        entrypoint_type=EntrypointType.MODULE_PATH,
        description="Remove ledger rows past the retention of carepost.yaml.")
    await runner.aadd_deployment(purge)
    names.append("purge/retention")
    log.info("retention purge: cron %r in %s", PURGE_CRON, settings.practice.timezone)
    return names


async def serve(settings: Settings, *, host: str, port: int,
                poll_seconds: float = DEFAULT_POLL_SECONDS,
                dispatch: str = "direct") -> None:
    """Run schedules, webhooks and triggered sends until SIGINT or SIGTERM."""
    from prefect.runner import Runner

    stop = asyncio.Event()
    dispatcher = TriggerDispatcher(settings, poll_seconds=poll_seconds,
                                   dispatch=dispatch)
    app = create_app(settings, route_factories=route_factories(dispatcher.wake))
    server = _Server(uvicorn.Config(app, host=host, port=port, access_log=False,
                                    log_level="warning", lifespan="off"))
    runner = Runner(name="carepost-serve", pause_on_shutdown=False)
    deployments = await register_deployments(runner, settings)
    _install_stop_handlers(stop)

    dispatcher.start()
    runner_task = asyncio.create_task(runner.start(), name="prefect-runner")
    await _wait_started(runner, runner_task)
    # Runner.start replaces the SIGTERM handler on the main thread.
    _install_stop_handlers(stop)
    server_task = asyncio.create_task(server.serve(), name="http-service")
    log.info("carepost serve started: %d deployments (%s), HTTP on http://%s:%d",
             len(deployments), ", ".join(deployments), host, port)

    stop_task = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stop_task, runner_task, server_task},
                                 return_when=asyncio.FIRST_COMPLETED)
    for task in done - {stop_task}:
        log.error("%s stopped unexpectedly; shutting down", task.get_name())
    await _shutdown(server, server_task, runner, runner_task, dispatcher)
    stop_task.cancel()


def _install_stop_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _request_stop, stop, signum)


def _request_stop(stop: asyncio.Event, signum: int) -> None:
    if not stop.is_set():
        log.info("received %s; stopping", signal.Signals(signum).name)
    stop.set()


async def _wait_started(runner: Any, runner_task: asyncio.Task[None]) -> None:
    deadline = time.monotonic() + RUNNER_START_TIMEOUT_SECONDS
    while not runner.started and not runner_task.done():
        if time.monotonic() > deadline:
            log.error("the Prefect runner did not start within %.0f s",
                      RUNNER_START_TIMEOUT_SECONDS)
            return
        await asyncio.sleep(0.05)


async def _shutdown(server: _Server, server_task: asyncio.Task[None], runner: Any,
                    runner_task: asyncio.Task[None],
                    dispatcher: TriggerDispatcher) -> None:
    server.should_exit = True
    if runner.started:
        await runner.astop()
    for task in (server_task, runner_task):
        try:
            await asyncio.wait_for(task, timeout=30)
        except (asyncio.CancelledError, TimeoutError):
            log.warning("%s did not stop within 30 s", task.get_name())
        except Exception as exc:  # noqa: BLE001 - report it and keep stopping
            log.error("%s failed while stopping: %s", task.get_name(),
                      type(exc).__name__)
    await asyncio.to_thread(dispatcher.stop)
    log.info("carepost serve stopped")
