"""``carepost audit verify|export`` and ``carepost purge``."""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer
from carepost.core.errors import CarepostError
from carepost.core.settings import CONFIG_FILE, Settings
from carepost.flows.cli_common import (
    ConfigOption,
    JsonOption,
)
from carepost.flows.cli_common import (
    settings_or_exit as _settings,
)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  pretty_exceptions_show_locals=False,
                  help="Verify or export the audit trail.")

@app.command()


def verify(config: ConfigOption = Path(CONFIG_FILE),
           as_json: JsonOption = False) -> None:
    """Check the hash chain; exit 1 naming every edited, deleted or moved entry."""
    from carepost.ledger.audit import AuditLog

    settings = _settings(config)
    with AuditLog(settings.ledger_url) as audit:
        report = audit.verify()
    if as_json:
        typer.echo(json.dumps({
            "ok": report.ok, "entries": report.entries, "first_id": report.first_id,
            "last_id": report.last_id, "head_hash": report.head_hash,
            "problems": [vars(problem) for problem in report.problems]}))
    elif report.ok:
        typer.echo(f"audit log intact: {report.entries} entries "
                   f"({report.first_id}..{report.last_id}), head {report.head_hash}")
    for problem in report.problems if not as_json else ():
        typer.echo(f"audit log broken at {problem.describe()}", err=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command()


def export(
    since: Annotated[str, typer.Option(
        "--since", help="First day to export, YYYY-MM-DD (UTC).")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="JSON Lines file to write (default: standard output).")] = None,
    config: ConfigOption = Path(CONFIG_FILE),
) -> None:
    """Write the entries since a date as JSON Lines, one entry per line."""
    from carepost.ledger.audit import AuditLog, export_entries

    try:
        start = date.fromisoformat(since)
    except ValueError:
        typer.echo(f"error: --since {since!r} is not a date; use YYYY-MM-DD, "
                   "for example 2024-02-01", err=True)
        raise typer.Exit(2) from None
    settings = _settings(config)
    with AuditLog(settings.ledger_url) as audit:
        if out is None:
            count = export_entries(audit, start, sys.stdout)
        else:
            with out.open("w", encoding="utf-8") as handle:
                count = export_entries(audit, start, handle)
        audit.append(action="audit.exported", target=out.name if out else "stdout",
                     details={"since": start.isoformat(), "entries": count})
    if out is not None:
        typer.echo(f"wrote {count} audit entries since {start} to {out}", err=True)


def purge(
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Count the expired rows without removing any.")] = False,
    config: ConfigOption = Path(CONFIG_FILE),
    as_json: JsonOption = False,
) -> None:
    """Remove ledger rows past their retention and record the counts in the audit log."""
    import asyncio
    import os

    from carepost.flows.runner import configure_logging, prefect_session

    configure_logging(False)
    settings = _settings(config)
    os.environ["CAREPOST_CONFIG"] = str(config.resolve())
    try:
        _check_holds(settings)
        with prefect_session(settings):
            from carepost.flows.purge import purge_flow

            result = asyncio.run(purge_flow(dry_run=dry_run))
    except CarepostError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(result))
        return
    verb = "would remove" if dry_run else "removed"
    for name, count in result["removed"].items():
        typer.echo(f"{verb} {count:>8} {name}")
    if result["held_campaigns"]:
        typer.echo(f"kept under legal hold: {', '.join(result['held_campaigns'])}")


def _check_holds(settings: Settings) -> None:
    """Reject a legal hold on an unknown campaign before any flow starts."""
    from carepost.core.campaign import load_campaigns
    from carepost.flows import prefect_runtime
    from carepost.ledger.retention import check_legal_holds

    # Loading campaigns imports Prefect, whose home must be set first.
    prefect_runtime.configure(settings.state_path)
    campaigns = load_campaigns(settings.path(settings.campaigns_dir))
    check_legal_holds(settings.ledger_url, settings.retention, set(campaigns))
