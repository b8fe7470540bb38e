"""Run campaign flows from a command: Prefect set-up, server, logging.

Everything that must happen before ``prefect`` is imported lives here, so
the command line stays thin and tests can drive the same path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, Iterator

from carepost.core.settings import Settings
from carepost.flows import prefect_runtime


@contextmanager
def prefect_session(settings: Settings, port: int | None = None) -> Iterator[None]:
    """Configure Prefect for ``settings`` and keep an API up for the block."""
    home = prefect_runtime.configure(settings.state_path)
    server = prefect_runtime.ensure_server(home, port)
    try:
        # Importing any part of Prefect fixes its settings from the
        # environment of that moment, and validating a campaign's cron
        # imports Prefect's schedule model earlier. Without a refresh the
        # flow would miss the API set above and start a temporary server
        # of its own under ~/.prefect.
        if "prefect.context" in sys.modules:
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()
        import prefect  # noqa: F401  (loads Prefect's logging configuration)

        from carepost.flows.redaction import install_redaction

        install_redaction()
        yield
    finally:
        _drain_prefect_workers()
        server.stop()


def _drain_prefect_workers(timeout_seconds: float = 10.0) -> None:
    """Flush Prefect's queued logs and events before the API goes away.

    Without this, stopping the embedded server races the background
    workers, which then print connection errors on the way out.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout_seconds)
        except Exception as exc:  # draining is best effort at exit
            logging.getLogger(__name__).debug("draining %s failed: %s",
                                              worker.__name__, exc)


def check_campaign(settings: Settings, campaign: str,
                   run_date: str | None = None) -> None:
    """Raise ``ConfigError`` before any flow starts if ``campaign`` cannot run.

    The campaign must exist and its segment, stage and template must load
    (the checks of ``carepost campaigns --check``), so a typo is one clear
    line instead of a failed flow run. With ``run_date``, that run must not
    be one whose delivery rows the retention purge removed.
    """
    from carepost.core.campaign import load_campaigns
    from carepost.core.errors import ConfigError
    from carepost.flows.campaign_check import reference_problems, reject_purged_run

    # Loading campaigns imports Prefect (cron validation), so its home must
    # point into the state folder first.
    prefect_runtime.configure(settings.state_path)

    campaigns = load_campaigns(settings.path(settings.campaigns_dir))
    if campaign not in campaigns:
        known = ", ".join(campaigns) or "none"
        raise ConfigError(f"campaign {campaign!r} not found",
                          hint=f"configured campaigns: {known}")
    problems = reference_problems(settings, campaigns[campaign])
    if problems:
        raise ConfigError(f"campaigns/{campaign}.yaml: {'; '.join(problems)}",
                          hint="run carepost campaigns --check")
    if run_date is not None:
        from carepost.ledger import Ledger

        ledger = Ledger(settings.ledger_url)
        try:
            reject_purged_run(ledger, campaign, date.fromisoformat(run_date))
        finally:
            ledger.close()


def run_campaign(config_path: Path, campaign: str, run_date: str) -> dict[str, Any]:
    """Run the campaign flow in this process and return its summary."""
    os.environ["CAREPOST_CONFIG"] = str(config_path)
    from carepost.flows.campaign import campaign_flow

    return asyncio.run(campaign_flow(campaign=campaign, run_date=run_date))


def configure_logging(verbose: bool) -> None:
    """Log carepost's warnings, or its progress with ``verbose``.

    ``CAREPOST_LOG_LEVEL`` (for example ``DEBUG``) overrides both.
    """
    level = os.environ.get("CAREPOST_LOG_LEVEL") or ("INFO" if verbose else "WARNING")
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("carepost").setLevel(level.upper())
