"""``carepost sync SOURCE``: pull one configured source into the warehouse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from carepost.core.errors import CarepostError
from carepost.core.settings import CONFIG_FILE

console = Console()
errors = Console(stderr=True)

# Summary keys and the labels of their rows, in print order.
_ROWS = {
    "profiles": "profiles upserted",
    "events": "events stored",
    "duplicate_events_dropped": "duplicate events dropped",
    "deleted_profiles": "profiles deleted",
    "deleted_events": "events deleted",
    "merged_profiles": "profile ids merged",
    "quarantined": "records quarantined",
    "missing_profiles": "profiles missing in source",
    "unmapped_records": "records not mapped",
    "skipped_files": "unchanged files skipped",
    "batches": "batches committed",
    "shared_address_count": "addresses shared by profiles",
    "elapsed_seconds": "seconds",
}


def sync(
    source: Annotated[str, typer.Argument(help="Source name under sources: in carepost.yaml.")],
    since: Annotated[Optional[str], typer.Option(
        "--since", help="Pull changes since this date or ISO time instead of the "
        "stored watermark.")] = None,
    config: Annotated[Path, typer.Option(
        "--config", envvar="CAREPOST_CONFIG", help="Project configuration file.")]
    = Path(CONFIG_FILE),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                          help="Log progress at INFO level.")] = False,
) -> None:
    """Sync one CDP source: upsert what changed, apply deletions, print a summary."""
    from carepost.flows.runner import configure_logging

    configure_logging(verbose)
    settings = _settings(config)
    try:
        from carepost.flows.sync import parse_since, source_spec

        parse_since(since)
        source_spec(settings, source)
    except CarepostError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    try:
        summary = _run(settings, config, source, since, show_progress=not as_json)
    except CarepostError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        print_summary(summary)


def _settings(config: Path) -> Any:
    from carepost.core.settings import load_settings

    try:
        return load_settings(config)
    except CarepostError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _run(settings: Any, config: Path, source: str, since: str | None,
         show_progress: bool) -> dict[str, Any]:
    import asyncio
    import os

    from carepost.flows.runner import prefect_session

    os.environ["CAREPOST_CONFIG"] = str(config.resolve())
    with prefect_session(settings):
        from carepost.flows.sync import forget_progress, register_progress, sync_flow

        bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                       TextColumn("{task.completed:,} records"), TimeElapsedColumn(),
                       console=errors, disable=not show_progress)
        with bar:
            step = bar.add_task(f"syncing {source}", total=None)

            def advance(description: str, rows: int) -> None:
                bar.update(step, advance=rows, description=f"{source}: {description}")

            token = register_progress(advance)
            try:
                return asyncio.run(sync_flow(source=source, since=since,
                                             progress_token=token))
            finally:
                forget_progress(token)


def print_summary(summary: dict[str, Any]) -> None:
    """Print one sync summary as a table, then quarantine reasons and shared ids."""
    table = Table(title=f"Sync of {summary['source']} ({summary['kind']})")
    table.add_column("")
    table.add_column("count", justify="right")
    for key, label in _ROWS.items():
        table.add_row(label, str(summary.get(key, "")))
    console.print(table)
    for reason, count in summary.get("quarantine_reasons", {}).items():
        console.print(f"quarantined: {reason} ({count})")
    for code, count in summary.get("source_errors", {}).items():
        console.print(f"source reported: {code} ({count})")
    for group in summary.get("shared_address_groups", []):
        console.print(f"one address, several profiles (not merged): {', '.join(group)}")
    watermark = summary.get("watermark") or "none"
    if summary["kind"] == "files":
        files = len(json.loads(watermark).get("files", {})) if watermark != "none" else 0
        watermark = f"fingerprints of {files} files"
    console.print(f"watermark for the next run: {watermark}")
