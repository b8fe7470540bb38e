"""``carepost serve``: the one long-running command (see ``flows/serve.py``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer

from carepost.core.errors import CarepostError
from carepost.core.settings import CONFIG_FILE, load_settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787


def serve(
    config: Annotated[Path, typer.Option(
        "--config", envvar="CAREPOST_CONFIG", help="Project configuration file.")
    ] = Path(CONFIG_FILE),
    host: Annotated[str, typer.Option(
        "--host", help="Address the HTTP service listens on.")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(
        "--port", envvar="CAREPOST_SERVE_PORT",
        help="TCP port of the HTTP service (webhooks, tracking, /health).")
    ] = DEFAULT_PORT,
    poll_seconds: Annotated[float, typer.Option(
        "--poll-seconds", min=0.5,
        help="Maximum wait, in seconds, between checks for delayed trigger sends.")
    ] = 30.0,
    dispatch: Annotated[str, typer.Option(
        "--dispatch", help="How a webhook starts its behaviour pass: 'direct' "
        "(in this process) or 'flow' (one Prefect flow run per pass).")
    ] = "direct",
) -> None:
    """Serve scheduled campaigns, webhooks and triggered emails until stopped."""
    from carepost.flows.runner import configure_logging, prefect_session
    from carepost.flows.serve import DISPATCH_MODES
    from carepost.flows.serve import serve as serve_forever

    # A service logs its starts, stops, runs and errors by default.
    os.environ.setdefault("CAREPOST_LOG_LEVEL", "INFO")
    configure_logging(verbose=True)
    if dispatch not in DISPATCH_MODES:
        typer.echo(f"error: --dispatch {dispatch!r} is not one of "
                   f"{', '.join(DISPATCH_MODES)}", err=True)
        raise typer.Exit(2)
    try:
        settings = load_settings(config)
    except CarepostError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    os.environ["CAREPOST_CONFIG"] = str(config.resolve())
    try:
        with prefect_session(settings):
            asyncio.run(serve_forever(settings, host=host, port=port,
                                      poll_seconds=poll_seconds, dispatch=dispatch))
    except CarepostError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror}; "
                   "choose another --port", err=True)
        raise typer.Exit(1) from None
