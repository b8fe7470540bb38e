"""Check what each campaign file refers to, for ``carepost campaigns --check``.

Loading a campaign validates its own fields only, so a wrong reference
fails only when the campaign runs. This module checks the references
first. The segment must exist, and so must the named stage of a
lifecycle segment. The template must exist, and its purpose must equal
the campaign's, because the purpose decides which consent the send-time
check requires. ``reject_purged_run`` checks one run date against the
ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from carepost.core.campaign import Campaign, load_campaign
from carepost.core.errors import CarepostError, ConfigError
from carepost.core.settings import Settings
from carepost.ledger import Ledger
from carepost.segments import SegmentLibrary
from carepost.templates import TemplateLibrary

__all__ = [
    "CampaignCheck",
    "CampaignProblem",
    "check_campaigns",
    "reference_problems",
    "reject_purged_run",
]


@dataclass(frozen=True)
class CampaignProblem:
    """One problem, printed as ``file: message``.

    ``file`` is None when the message already starts with the file's path,
    as the errors of a campaign file that does not load do.
    """

    file: Path | None
    message: str

    def __str__(self) -> str:
        return self.message if self.file is None else f"{self.file}: {self.message}"


@dataclass
class CampaignCheck:
    """The campaign files checked and every problem found, in file-name order."""

    files: list[Path] = field(default_factory=list)
    problems: list[CampaignProblem] = field(default_factory=list)


def check_campaigns(settings: Settings) -> CampaignCheck:
    """Check every campaign file; a file that does not load is one problem."""
    folder = settings.path(settings.campaigns_dir)
    if not folder.is_dir():
        raise ConfigError(f"campaign folder {folder} not found",
                          hint="set campaigns_dir in carepost.yaml")
    relative_folder = Path(settings.campaigns_dir)
    segments, segment_problem = _segment_library(settings)
    templates, template_problem = _template_library(settings)
    check = CampaignCheck()
    check.problems += [problem for problem in (segment_problem, template_problem)
                       if problem is not None]

    for path in sorted(folder.glob("*.yaml")):
        file = relative_folder / path.name
        check.files.append(file)
        try:
            campaign = load_campaign(path)
        except CarepostError as exc:
            check.problems.append(CampaignProblem(None, str(exc)))
            continue
        messages = _segment_messages(campaign, segments) if segments else []
        if templates is not None:
            messages += _template_messages(campaign, templates)
        check.problems += [CampaignProblem(file, message) for message in messages]
    return check


def reference_problems(settings: Settings, campaign: Campaign) -> list[str]:
    """Return the problems of one campaign's segment, stage and template."""
    segments, segment_problem = _segment_library(settings)
    templates, template_problem = _template_library(settings)
    problems = [str(problem) for problem in (segment_problem, template_problem)
                if problem is not None]
    if segments is not None:
        problems += _segment_messages(campaign, segments)
    if templates is not None:
        problems += _template_messages(campaign, templates)
    return problems


def _segment_library(
    settings: Settings,
) -> tuple[SegmentLibrary | None, CampaignProblem | None]:
    folder = settings.path(settings.segments_dir)
    try:
        return SegmentLibrary(folder), None
    except (CarepostError, NotADirectoryError) as exc:
        return None, CampaignProblem(Path(settings.segments_dir),
                                     f"segments not checked: {exc}")


def _template_library(
    settings: Settings,
) -> tuple[TemplateLibrary | None, CampaignProblem | None]:
    folder = settings.path(settings.templates_dir)
    try:
        library = TemplateLibrary(folder, settings.practice, strict=False,
                                  inline_css=False)
    except CarepostError as exc:
        return None, CampaignProblem(Path(settings.templates_dir),
                                     f"templates not checked: {exc}")
    return library, None


def _segment_messages(campaign: Campaign, segments: SegmentLibrary) -> list[str]:
    name = campaign.segment
    if name is None:
        return []
    known = segments.names()
    if name not in known:
        return [f"segment '{name}' not found (known: {', '.join(known)})"]
    stages = segments.stages(name)
    if campaign.stage is None or campaign.stage in stages:
        return []
    if not stages:
        return [f"stage '{campaign.stage}' given, but segment '{name}' is not "
                "a lifecycle segment and has no stages; remove stage:"]
    return [f"segment '{name}' has no stage '{campaign.stage}' "
            f"(stages: {', '.join(stages)})"]


def _template_messages(campaign: Campaign, templates: TemplateLibrary) -> list[str]:
    name = campaign.template
    if name not in templates:
        invalid = [problem for problem in templates.problems
                   if problem.path.name.startswith(f"{name}.")]
        if invalid:
            return [f"template '{name}' is invalid: {invalid[0]}"]
        known = ", ".join(templates.names())
        return [f"template '{name}' not found (known: {known})"]
    purpose = templates.get(name).purpose
    if purpose == campaign.purpose:
        return []
    return [f"template '{name}' has purpose '{purpose}' but the campaign has "
            f"purpose '{campaign.purpose}'; make them equal, because the "
            "purpose decides which consent a send needs"]


def reject_purged_run(ledger: Ledger, campaign: str, run_date: date) -> None:
    """Raise ``ConfigError`` when the purge removed this run's delivery rows.

    Without those rows the run cannot tell who already got the message,
    so running it again could mail every member a second time.
    """
    purged = ledger.purged_at(campaign, run_date.isoformat())
    if purged is not None:
        raise ConfigError(
            f"campaign {campaign} for {run_date.isoformat()} cannot run again: the "
            f"retention purge removed its delivery rows on {purged:%Y-%m-%d}",
            hint="run a later date; re-running this one could send twice")
