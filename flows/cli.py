"""The ``carepost`` command line."""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from carepost.core.campaign import load_campaigns
from carepost.core.errors import CarepostError
from carepost.core.settings import CONFIG_FILE, Settings
from carepost.flows.cli_common import (
    CarepostGroup,
    ConfigOption,
    console,
    errors,
    fail as _fail,
    JsonOption,
    settings_or_exit as _settings,
    VerboseOption,
)

# Locals in a traceback may hold PHI, so tracebacks never show them.
# CarepostGroup prints a CarepostError that no command caught as one line.
app = typer.Typer(cls=CarepostGroup, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_show_locals=False,
                  help="carepost: CDP-to-email campaigns for healthcare.")


@app.command()


def campaigns(
    config: ConfigOption = Path(CONFIG_FILE),
    check: Annotated[bool, typer.Option(
        "--check", help="Check each campaign's segment, stage, template and "
        "purpose; print one line per problem and exit 1 if there is any.")] = False,
) -> None:
    """Print the configured campaign names, one per line."""
    settings = _settings(config)
    if check:
        _check_campaigns(settings)
        return
    try:
        names = load_campaigns(settings.path(settings.campaigns_dir))
    except CarepostError as exc:
        _fail(exc)
    for name in names:
        typer.echo(name)


def _check_campaigns(settings: Settings) -> None:
    from carepost.flows.campaign_check import check_campaigns

    try:
        result = check_campaigns(settings)
    except CarepostError as exc:
        _fail(exc)
    for problem in result.problems:
        typer.echo(str(problem))
    errors.print(f"checked {len(result.files)} campaigns: "
                 f"{len(result.problems)} problems")
    if result.problems:
        raise typer.Exit(1)


@app.command()


def run(
    campaign: Annotated[str, typer.Argument(help="Campaign name (file name in campaigns/).")],
    as_of: Annotated[Optional[str], typer.Option(
        "--as-of", help="Run date, YYYY-MM-DD (default: today).")] = None,
    config: ConfigOption = Path(CONFIG_FILE),
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Run one campaign for one date; re-running the same date sends nothing new."""
    from carepost.flows.runner import (
        check_campaign,
        configure_logging,
        prefect_session,
        run_campaign,
    )

    configure_logging(verbose)
    settings = _settings(config)
    run_date = _parse_date(as_of) if as_of else date.today().isoformat()
    try:
        check_campaign(settings, campaign, run_date)
        with prefect_session(settings):
            summary = run_campaign(config.resolve(), campaign, run_date)
    except CarepostError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        print_summaries([summary])


@app.command()


def demo(as_json: JsonOption = False, verbose: VerboseOption = False,
         config: ConfigOption = Path(CONFIG_FILE)) -> None:
    """Run every shipped campaign against an embedded STARTTLS server."""
    from carepost.connectors.local_smtp import LocalTlsSmtpServer
    from carepost.flows import demo as demo_module
    from carepost.flows.runner import configure_logging, prefect_session, run_campaign

    configure_logging(verbose)
    settings = _settings(config)
    paths = demo_module.prepare_demo(settings, config)
    summaries: list[dict[str, Any]] = []
    try:
        with LocalTlsSmtpServer(paths.mailbox) as server, prefect_session(settings):
            demo_module.write_demo_config(config, paths, server)
            for name in demo_module.demo_campaigns(settings):
                if not as_json:
                    errors.print(f"running campaign [bold]{name}[/bold] "
                                 f"as of {demo_module.DEMO_RUN_DATE} ...")
                summaries.append(run_campaign(paths.config, name,
                                              demo_module.DEMO_RUN_DATE))
            rerun = run_campaign(paths.config, summaries[0]["campaign"],
                                 demo_module.DEMO_RUN_DATE) if summaries else None
    except CarepostError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(summaries))
        return
    print_summaries(summaries)
    if rerun is not None:
        console.print(
            f"Re-ran {rerun['campaign']} for {rerun['run_date']}: "
            f"{rerun['sent']} new messages, {rerun['already_done']} already "
            "settled in the ledger (a campaign run never sends twice).")
    console.print(f"Delivered messages (Maildir): {paths.mailbox}")
    console.print(f"Events pushed to the CDP sink: {paths.events}")
    console.print(f"Delivery ledger (SQLite):      {paths.ledger}")


def _parse_date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        errors.print(f"[red]error:[/red] --as-of {text!r} is not a date; "
                     "use YYYY-MM-DD, for example 2024-02-15")
        raise typer.Exit(2) from None


# Summary keys and the row labels they get in the table.
_ROWS = {
    "segment_size": "segment size",
    "sent": "sent",
    "dropped_no_tls": "dropped: no TLS",
    "suppressed": "suppressed",
    "render_failed": "render failed",
    "bounced": "bounced",
    "deferred": "deferred (4xx)",
    "already_done": "already sent",
    "ambiguous": "outcome unknown",
    "quarantined": "quarantined",
    "elapsed_seconds": "seconds",
}


def print_summaries(summaries: list[dict[str, Any]]) -> None:
    """Print one column per campaign run, so the table fits 80 columns."""
    dates = sorted({summary["run_date"] for summary in summaries})
    table = Table(title=f"Campaign runs as of {', '.join(dates)}")
    table.add_column("", no_wrap=True)
    for summary in summaries:
        table.add_column(summary["campaign"], justify="right", no_wrap=True)
    for key, label in _ROWS.items():
        table.add_row(label, *(str(summary.get(key, "")) for summary in summaries))
    console.print(table)
    console.print(
        "dropped: no TLS = the server offered no verified TLS 1.2+; "
        "suppressed = removed at selection or at send time (consent, "
        "deceased, suppression list, frequency cap); outcome unknown = no reply after "
        "DATA, left in the ledger as 'sending' and not resent; quarantined = "
        "source rows set aside as malformed (see carepost sync).")


# Command groups, one module each: ``carepost segments ...`` and so on.
# Each module defines ``app = typer.Typer(...)`` and imports heavy
# dependencies inside its commands, so ``carepost --help`` stays fast.
from carepost.flows import cli_engagement  # noqa: E402
app.command()(cli_engagement.report)
app.command()(cli_engagement.feedback)
from carepost.flows import cli_serve  # noqa: E402
app.command()(cli_serve.serve)
from carepost.flows import cli_audit  # noqa: E402
app.add_typer(cli_audit.app, name="audit")
app.command()(cli_audit.purge)
from carepost.flows import cli_segments  # noqa: E402
app.add_typer(cli_segments.app, name="segments")
from carepost.flows import cli_templates  # noqa: E402
app.add_typer(cli_templates.app, name="templates")
from carepost.flows import cli_sync  # noqa: E402
app.command()(cli_sync.sync)
from carepost.flows import cli_delivery  # noqa: E402
app.command("tls-check")(cli_delivery.tls_check)
app.command("send-test")(cli_delivery.send_test)
app.add_typer(cli_delivery.app, name="deliveries")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover - python -m carepost.flows.cli
    main()
