"""``carepost segments ...``: validate, print and preview segment specs.

``validate`` prints every problem of every file. ``sql`` prints the
compiled query and its bound values. ``preview`` loads the configured
export into the warehouse (or reads the warehouse as it is, with
``--no-load``) and prints counts by stage, state and age band and a sample
whose name, address and postal code are masked. ``--show-phi`` reveals
them only after the audit log has recorded who asked, for which segment
and which profile ids.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from carepost.core.errors import CarepostError
from carepost.core.settings import CONFIG_FILE, Settings
from carepost.flows.cli_common import (
    ConfigOption,
    JsonOption,
    console,
    errors,
)
from carepost.flows.cli_common import (
    fail as _fail,
)
from carepost.flows.cli_common import (
    settings_or_exit as _settings,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    import duckdb
    from carepost.segments.preview import SegmentPreview

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Check, print and preview the segment specs in segments/library.",
)

NameArgument = Annotated[
    str, typer.Argument(help="Segment name (file name in the library).")
]
StageOption = Annotated[
    str | None, typer.Option("--stage", help="One stage of a lifecycle segment.")
]
PHI_ACTION = "segment.preview_phi"


@app.command()


def validate(
    config: ConfigOption = Path(CONFIG_FILE), as_json: JsonOption = False
) -> None:
    """Check every segment file and print each problem; exit 1 if any."""
    from carepost.segments import load_folder

    settings = _settings(config)
    folder = settings.path(settings.segments_dir)
    if not folder.is_dir():
        _fail(f"segment folder {folder} not found (set segments_dir in {config})")
    loaded = load_folder(folder)
    if as_json:
        typer.echo(json.dumps(_problems_json(loaded)))
    else:
        for problem in loaded.problems:
            typer.echo(str(problem))
        files = len(loaded.file_names)
        if loaded.problems:
            errors.print(f"{len(loaded.problems)} problems in {files} segment files")
        else:
            typer.echo(f"{files} segment files are valid")
    if loaded.problems:
        raise typer.Exit(1)


def _problems_json(loaded: Any) -> dict[str, Any]:
    fields = ("file", "line", "column", "key_path", "expected", "found", "suggestion")
    return {
        "valid": sorted(loaded.specs),
        "problems": [
            {key: getattr(problem, key) for key in fields} | {"message": str(problem)}
            for problem in loaded.problems
        ],
    }


@app.command()


def sql(
    name: NameArgument,
    stage: StageOption = None,
    config: ConfigOption = Path(CONFIG_FILE),
    as_json: JsonOption = False,
) -> None:
    """Print the compiled DuckDB query of a segment and its bound values."""
    settings = _settings(config)
    try:
        compiled = _library(settings).compile(name, stage)
    except CarepostError as exc:
        _fail(exc)
    params = {key: _json_value(value) for key, value in compiled.params.items()}
    if as_json:
        typer.echo(json.dumps({"sql": compiled.sql, "params": params}))
        return
    typer.echo(compiled.sql + ";")
    typer.echo("-- parameters:")
    typer.echo("--   $as_of = the run date (--as-of), a DATE")
    for key, value in params.items():
        typer.echo(f"--   ${key} = {json.dumps(value)}")


@app.command()


def preview(
    name: NameArgument,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Run date, YYYY-MM-DD (default: today)."),
    ] = None,
    stage: StageOption = None,
    load: Annotated[
        bool,
        typer.Option(
            "--load/--no-load",
            help="Load the configured export into the warehouse first "
            "(--no-load reads the warehouse file as it is).",
        ),
    ] = True,
    show_phi: Annotated[
        bool,
        typer.Option(
            "--show-phi",
            help="Show names, email addresses and postal codes in the sample; "
            "recorded in the audit log.",
        ),
    ] = False,
    config: ConfigOption = Path(CONFIG_FILE),
    as_json: JsonOption = False,
) -> None:
    """Count a segment by stage, state and age band and show a masked sample."""
    settings = _settings(config)
    run_date = _parse_date(as_of) if as_of else date.today()
    audit = _audit_log(settings) if show_phi else None
    try:
        library = _library(settings)
        library.compile(name, stage)
        with _warehouse(settings, load) as conn:
            result = _preview(conn, library, name, run_date, stage, audit)
    except CarepostError as exc:
        _fail(exc)
    finally:
        if audit is not None:
            audit.close()
    if as_json:
        typer.echo(json.dumps(result.to_dict(), default=_json_value))
    else:
        _print_preview(result)


def _preview(
    conn: duckdb.DuckDBPyConnection,
    library: Any,
    name: str,
    run_date: date,
    stage: str | None,
    audit: Any,
) -> SegmentPreview:
    """Preview masked; with an audit log, record the ids, then reveal them."""
    from carepost.segments.preview import preview_segment

    masked = preview_segment(conn, library, name, as_of=run_date, stage=stage)
    if audit is None:
        return masked
    ids = [row["profile_id"] for row in masked.sample]
    audit.append(
        action=PHI_ACTION,
        target=f"segment:{name}",
        details={
            "as_of": run_date.isoformat(),
            "stage": stage,
            "profile_ids": ",".join(ids),
            "profiles": len(ids),
        },
    )
    return preview_segment(
        conn, library, name, as_of=run_date, stage=stage, reveal_phi=True
    )


def _audit_log(settings: Settings) -> Any:
    """Open the audit log, or reject --show-phi when the module is missing."""
    try:
        from carepost.ledger.audit import AuditLog
    except ImportError:
        _fail(
            "--show-phi needs the audit log (carepost.ledger.audit), which this "
            "installation lacks; run the preview without --show-phi"
        )
    return AuditLog(settings.ledger_url)


def _library(settings: Settings) -> Any:
    from carepost.segments import SegmentLibrary

    folder = settings.path(settings.segments_dir)
    if not folder.is_dir():
        raise CarepostError(
            f"segment folder {folder} not found",
            hint="set segments_dir in carepost.yaml",
        )
    return SegmentLibrary(folder)


class _warehouse:
    """Open the warehouse file, syncing every configured source first if asked."""

    def __init__(self, settings: Settings, load: bool) -> None:
        self.settings = settings
        self.load = load
        self.conn: duckdb.DuckDBPyConnection | None = None

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        import asyncio

        import duckdb
        from carepost.core.schema import create_tables
        from carepost.flows import prefect_runtime

        path = self.settings.warehouse_path
        if not self.load and not path.exists():
            raise CarepostError(
                f"warehouse {path} does not exist yet",
                hint="run the preview without --no-load to load the export",
            )
        self.conn = duckdb.connect(str(path))
        create_tables(self.conn)
        if self.load:
            # flows.sync imports Prefect, which must see carepost's settings.
            prefect_runtime.configure(self.settings.state_path)
            from carepost.flows.sync import sync_named_source

            for name in self.settings.named_sources():
                asyncio.run(sync_named_source(self.settings, self.conn, name))
        return self.conn

    def __exit__(self, *_exc: object) -> None:
        if self.conn is not None:
            self.conn.close()


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        errors.print(
            f"error: --as-of {text!r} is not a date; use YYYY-MM-DD, "
            "for example 2024-02-15",
            markup=False,
        )
        raise typer.Exit(2) from None


def _json_value(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    return value


def _print_preview(result: SegmentPreview) -> None:
    title = result.segment + (f" / {result.stage}" if result.stage else "")
    console.print(
        f"[bold]{title}[/bold] ({result.kind}) as of {result.as_of}: "
        f"[bold]{result.count}[/bold] profiles",
        highlight=False,
    )
    breakdowns = [
        ("stage", result.by_stage),
        ("state", result.by_state),
        ("age band", result.by_age_band),
    ]
    for label, counts in breakdowns:
        if counts is None:
            continue
        table = Table(title=f"by {label}", title_justify="left")
        table.add_column(label)
        table.add_column("profiles", justify="right")
        for key, total in counts.items():
            table.add_row(key, str(total))
        console.print(table)
    _print_sample(result)


def _print_sample(result: SegmentPreview) -> None:
    if not result.sample:
        return
    if result.phi_shown:
        errors.print(
            "PHI shown; recorded in the audit log as " + PHI_ACTION, markup=False
        )
    else:
        console.print(
            "sample (PHI masked; --show-phi reveals it and records "
            "that in the audit log):",
            markup=False,
        )
    for row in result.sample:
        name = f"{row['first_name'] or ''} {row['last_name'] or ''}".strip()
        parts = [
            row["profile_id"],
            row.get("stage"),
            row["state"],
            row["age_band"],
            name,
            row["email"],
            row["postal_code"],
        ]
        line = "  " + "  ".join("-" if part is None else str(part) for part in parts)
        # Text() keeps a value such as "[bold]" from being read as markup.
        console.print(Text(line), soft_wrap=True)
