"""Run campaign flows from a command: Prefect set-up, server, logging.

Everything that must happen before ``prefect`` is imported lives here, so
the command line stays thin and tests can drive the same path.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from carepost.core.settings import Settings
from carepost.flows import prefect_runtime


@contextmanager
def prefect_session(settings: Settings, port: int | None = None) -> Iterator[None]:
    """Configure Prefect for ``settings`` and keep an API up for the block."""
    home = prefect_runtime.configure(settings.state_path)
    server = prefect_runtime.ensure_server(
        home, port or int(os.environ.get("CAREPOST_PREFECT_PORT",
                                         prefect_runtime.DEFAULT_PORT)))
    try:
        import prefect  # noqa: F401  (loads Prefect's logging configuration)

        from carepost.flows.redaction import install_redaction

        install_redaction()
        yield
    finally:
        server.stop()


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
