"""``carepost report`` and ``carepost feedback``: the engagement loop's commands."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from carepost.core.errors import CarepostError, ConfigError
from carepost.core.settings import CONFIG_FILE
from carepost.flows.cli_common import (
    ConfigOption,
    JsonOption,
    console,
)
from carepost.flows.cli_common import (
    fail as _fail,
)
from rich.table import Table

if TYPE_CHECKING:
    from carepost.flows.report import Report

def _print_table(report: Report) -> None:
    from carepost.flows.report import COUNTS, RATES

    table = Table(title=f"Engagement of {report.campaign} "
                        f"({report.run or 'all runs'}; goal: {report.goal or 'none'})")
    for name in ("template", "version", *COUNTS, *RATES):
        table.add_column(name.replace("_", " "), justify="right")
    for row in report.rows:
        rates = [row.rate(name) for name in RATES]
        table.add_row(row.template, row.template_version,
                      *(str(row.counts[name]) for name in COUNTS),
                      *("-" if rate is None else f"{rate:.1%}" for rate in rates))
    console.print(table)
    console.print("Rates count human opens and clicks only; machine events are "
                  "mail privacy proxies and link scanners.")


def report(
    campaign: Annotated[str, typer.Argument(help="Campaign name (file name in campaigns/).")],
    run: Annotated[Optional[str], typer.Option(
        "--run", help="Only the run of this date, YYYY-MM-DD (default: all runs).")] = None,
    as_json: JsonOption = False,
    html_file: Annotated[Optional[Path], typer.Option(
        "--html", help="Also write an HTML report with a chart to this file.")] = None,
    config: ConfigOption = Path(CONFIG_FILE),
) -> None:
    """Print a campaign's deliveries, opens, clicks, unsubscribes and conversions.

    JSON and HTML output show counts under 11 as "<11".
    """
    from carepost.core.campaign import load_campaigns
    from carepost.core.settings import load_settings
    from carepost.flows.report import build_report, export
    from carepost.flows.report_html import html_report
    from carepost.ledger import Ledger

    if run is not None:
        try:
            run = date.fromisoformat(run).isoformat()
        except ValueError:
            _fail(ConfigError(f"--run {run!r} is not a date",
                              hint="use YYYY-MM-DD, for example 2024-02-15"), 2)
    try:
        settings = load_settings(config)
        campaigns = load_campaigns(settings.path(settings.campaigns_dir))
        if campaign not in campaigns:
            raise ConfigError(f"campaign {campaign!r} not found",
                              hint=f"configured campaigns: {', '.join(campaigns)}")
        ledger = Ledger(settings.ledger_url)
        try:
            result = build_report(ledger, campaigns[campaign], run)
        finally:
            ledger.close()
    except CarepostError as exc:
        _fail(exc)
    if html_file is not None:
        try:
            html_file.write_text(html_report(result), encoding="utf-8")
        except OSError as exc:
            _fail(ConfigError(f"cannot write {html_file}: {exc.strerror or exc}",
                              hint=_write_hint(exc, html_file)))
    if as_json:
        typer.echo(json.dumps(export(result)))
    else:
        _print_table(result)


def _write_hint(exc: OSError, path: Path) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"create the folder {path.parent} or choose another --html path"
    if isinstance(exc, IsADirectoryError):
        return "give a file name such as report.html, not a folder"
    return "choose another --html path"


def feedback(
    as_json: JsonOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                          help="Log progress at INFO level.")] = False,
    config: ConfigOption = Path(CONFIG_FILE),
) -> None:
    """Import conversions, push pending events to the CDP sink, attach reports."""
    import asyncio
    import os

    from carepost.core.settings import load_settings
    from carepost.flows.runner import configure_logging, prefect_session

    configure_logging(verbose)
    try:
        settings = load_settings(config)
    except CarepostError as exc:
        _fail(exc, 2)
    os.environ["CAREPOST_CONFIG"] = str(config.resolve())
    try:
        with prefect_session(settings):
            from carepost.flows.feedback import feedback_flow

            summary = asyncio.run(feedback_flow())
    except CarepostError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    console.print(f"pushed {summary['pushed']} events in {summary['batches']} "
                  f"batches; {summary['dead_lettered']} dead-lettered; "
                  f"{summary['conversions']} new conversions")


__all__ = ["feedback", "report"]
