"""``carepost templates ...``: check, lint and preview the message templates.

``check`` compiles every template and renders it against every synthetic
sample profile in ``templates/samples.yaml``. ``lint`` looks for health
information in subjects, preheaders, sender names and URLs. ``preview``
writes one rendered message (HTML, text and a desktop/mobile page) for a
sample profile. A real patient's profile (``--profile-id``) needs
``--show-phi``, and the audit log records it before anything renders.
"""

from __future__ import annotations

import json
import webbrowser
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

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

if TYPE_CHECKING:
    from carepost.templates import MessageTemplate, RenderedContent
    from carepost.templates.tooling import CheckReport, Problem

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Check, lint and preview the message templates in templates/library.",
)

SamplesOption = Annotated[
    Optional[Path],
    typer.Option(
        "--samples",
        help="Sample profile file (default: the synthetic templates/samples.yaml).",
    ),
]
PHI_ACTION = "template.preview_phi"


def _usage(message: str) -> None:
    errors.print("error: " + message, markup=False, highlight=False)
    raise typer.Exit(2)


def _report(settings: Settings, samples_path: Path | None) -> tuple[CheckReport, Any]:
    from carepost.templates.samples import SAMPLES_FILE, load_samples
    from carepost.templates.tooling import check_library

    samples = load_samples(samples_path or SAMPLES_FILE)
    folder = settings.path(settings.templates_dir)
    return check_library(folder, settings.practice, samples), samples


def _print_problems(problems: list[Problem], as_json: bool, summary: dict[str, Any]) -> None:
    if as_json:
        typer.echo(json.dumps({**summary, "problems": [str(p) for p in problems]}))
    else:
        for problem in problems:
            typer.echo(str(problem))
    if problems:
        raise typer.Exit(1)


@app.command()


def check(
    config: ConfigOption = Path(CONFIG_FILE),
    samples: SamplesOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compile every template and render it with every sample; exit 1 on errors."""
    settings = _settings(config)
    try:
        report, loaded = _report(settings, samples)
    except CarepostError as exc:
        _fail(exc)
    names = report.library.names()
    summary = {
        "templates": list(names),
        "samples": len(loaded),
        "renders": report.renders,
        "not_applicable": [f"{name}/{sample}" for name, sample in report.not_applicable],
    }
    if not as_json and not report.problems:
        console.print(
            f"{len(names)} templates rendered {report.renders} times against "
            f"{len(loaded)} sample profiles: no problems.",
            highlight=False,
        )
    _print_problems(report.problems, as_json, summary)


@app.command()


def lint(
    config: ConfigOption = Path(CONFIG_FILE),
    samples: SamplesOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fail when a subject, preheader, sender name or URL reveals health data."""
    from carepost.templates.tooling import lint_library

    settings = _settings(config)
    try:
        report, loaded = _report(settings, samples)
        # Load errors include the subject and preheader rules.
        load_problems = [
            problem for problem in report.problems if "sample '" not in problem.message
        ]
        senders = [(config, settings.sender.name)]
        found: list[Problem] = load_problems + lint_library(
            report, loaded, settings.practice, senders
        )
    except CarepostError as exc:
        _fail(exc)
    if not as_json and not found:
        console.print(
            f"{len(report.library.names())} templates: no health information in "
            "subjects, preheaders, sender names or URLs.",
            highlight=False,
        )
    _print_problems(found, as_json, {"templates": list(report.library.names())})


@app.command()


def preview(
    name: Annotated[str, typer.Argument(help="Template name (file name in the library).")],
    profile: Annotated[
        Optional[str],
        typer.Option("--profile", help="Sample profile id from the samples file."),
    ] = None,
    profile_id: Annotated[
        Optional[str],
        typer.Option("--profile-id", help="A real profile id from the warehouse; "
                     "needs --show-phi."),
    ] = None,
    show_phi: Annotated[
        bool,
        typer.Option("--show-phi", help="Allow rendering a real patient's data; "
                     "recorded in the audit log."),
    ] = False,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="Output folder (default: <state folder>/preview)."),
    ] = None,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the desktop/mobile page in a browser.")
    ] = False,
    config: ConfigOption = Path(CONFIG_FILE),
    samples: SamplesOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write one rendered message as HTML and text files (sample data by default)."""
    if profile is not None and profile_id is not None:
        _usage("use either --profile (a sample) or --profile-id (a real profile)")
    if profile_id is not None and not show_phi:
        _usage("--profile-id renders a real patient's data; add --show-phi, which "
               "is recorded in the audit log, or use a sample with --profile")
    settings = _settings(config)
    out_dir = out or settings.state_path / "preview"
    try:
        template = _template(settings, name)
        if profile_id is not None:
            content = _render_real(settings, template, profile_id, out_dir)
            stem, private = f"{name}.profile-{_safe(profile_id)}", True
        else:
            content, sample_id = _render_sample(settings, template, profile, samples)
            stem, private = f"{name}.{sample_id}", False
    except CarepostError as exc:
        _fail(exc)
    _write_and_report(content, out_dir, stem, private, open_browser, as_json)


def _template(settings: Settings, name: str) -> MessageTemplate:
    from carepost.templates import TemplateLibrary

    library = TemplateLibrary(settings.path(settings.templates_dir), settings.practice)
    return library.get(name)


def _render_sample(
    settings: Settings, template: MessageTemplate, sample_id: str | None,
    samples_path: Path | None,
) -> tuple[RenderedContent, str]:
    from carepost.templates.samples import SAMPLES_FILE, find_sample, load_samples
    from carepost.templates.tooling import render_sample

    loaded = load_samples(samples_path or SAMPLES_FILE)
    sample = find_sample(loaded, sample_id) if sample_id else loaded[0]
    return render_sample(template, sample, settings.practice), sample.id


def _render_real(
    settings: Settings, template: MessageTemplate, profile_id: str, out_dir: Path
) -> RenderedContent:
    """Record the audit entry, then render the warehouse profile ``profile_id``."""
    import duckdb
    from carepost.flows.context import load_recipients
    from carepost.ledger.audit import AuditLog
    from carepost.templates.samples import PREVIEW_UNSUBSCRIBE_URL

    path = settings.warehouse_path
    if not path.exists():
        raise CarepostError(
            f"warehouse {path} does not exist yet",
            hint="run a campaign or 'carepost segments preview' to load the export",
        )
    conn = duckdb.connect(str(path), read_only=True)
    try:
        recipients = load_recipients(conn, [profile_id], date.today())
    finally:
        conn.close()
    if not recipients:
        raise CarepostError(f"profile id {profile_id} is not in the warehouse")
    with AuditLog(settings.ledger_url) as audit:
        audit.append(action=PHI_ACTION, target=f"profile:{profile_id}", details={
            "template": template.name,
            "template_version": template.version,
            "out_dir": str(out_dir),
        })
    context = dict(recipients[0].context)
    context.setdefault("timezone", settings.practice.timezone)
    context["unsubscribe_url"] = PREVIEW_UNSUBSCRIBE_URL
    context["message_id"] = "<preview.phi@carepost.localhost>"
    return template.render(context, profile_id=profile_id)


def _safe(profile_id: str) -> str:
    return "".join(char if char.isalnum() or char in "-_" else "_" for char in profile_id)


def _write_and_report(
    content: RenderedContent, out_dir: Path, stem: str, private: bool,
    open_browser: bool, as_json: bool,
) -> None:
    from carepost.templates.tooling import write_preview

    files = write_preview(content, out_dir, stem, private=private)
    if open_browser:
        webbrowser.open(files.widths.resolve().as_uri())
    if as_json:
        typer.echo(json.dumps({
            "html": str(files.html), "text": str(files.text),
            "widths": str(files.widths), "language": content.language,
        }))
        return
    if private:
        errors.print("warning: these files contain a patient's data (mode 0600); "
                     "delete them when done", markup=False)
    console.print(f"HTML:  {files.html}\nText:  {files.text}\n"
                  f"Desktop and mobile: {files.widths}", highlight=False)
