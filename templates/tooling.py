"""The work behind ``carepost templates check``, ``lint`` and ``preview``.

``check_library`` loads every template (collecting every load error, not
only the first) and renders each against every synthetic sample profile
that has the template's required fields. ``lint_library`` adds the
disclosure rules: no condition name in a subject, preheader, sender name
or URL, and no profile value in a URL. URLs end up in browser histories,
proxy logs and the tracking token, which is signed but not encrypted.
``write_preview`` writes one rendered message as files a marketer opens.

Problems are reported as ``file:line: problem`` and never quote a profile
value: the messages name fields and samples only.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from urllib.parse import quote

from carepost.core.settings import Practice
from carepost.templates.checks import condition_word
from carepost.templates.errors import RenderFailed, TemplateSpecError
from carepost.templates.library import TemplateLibrary
from carepost.templates.mime import RenderedContent
from carepost.templates.rendering import MessageTemplate
from carepost.templates.samples import PREVIEW_UNSUBSCRIBE_URL, Sample

# Preferences, not health information: they may appear in a URL.
NON_SENSITIVE_FIELDS = frozenset({"timezone", "language"})
# Shorter values ("en", "35") would match unrelated URL text.
_MIN_VALUE_LENGTH = 3
_HTML_URL = re.compile(r"""\s(?:href|src)\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)
_TEXT_URL = re.compile(r"https?://[^\s<>\"']+")
PREVIEW_WIDTHS = (("desktop", 1200), ("mobile", 375))


@dataclass(frozen=True)
class Problem:
    """One finding of check or lint, printed as ``file:line: message``."""

    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else f"{self.path}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class CheckReport:
    """The loaded library and every problem found."""

    library: TemplateLibrary
    problems: list[Problem]
    renders: int
    not_applicable: list[tuple[str, str]]


def check_library(folder: Path, practice: Practice, samples: list[Sample]) -> CheckReport:
    """Compile every template and render it against every applicable sample."""
    library = TemplateLibrary(folder, practice, strict=False)
    problems = [Problem(exc.path, exc.line, exc.problem) for exc in library.problems]
    renders = 0
    skipped: list[tuple[str, str]] = []
    for name in library.names():
        template = library.get(name)
        applicable = [s for s in samples if _applicable(template, s)]
        skipped += [(name, s.id) for s in samples if s not in applicable]
        if not applicable:
            problems.append(
                Problem(template.spec.path, None, "no sample profile has every "
                        "required field; add one to samples.yaml")
            )
        for sample in applicable:
            renders += 1
            problem = _render_problem(template, sample, practice)
            if problem is not None:
                problems.append(problem)
    return CheckReport(library, problems, renders, skipped)


def _applicable(template: MessageTemplate, sample: Sample) -> bool:
    context = sample.context("UTC")
    required = set(template.fields) - set(template.spec.defaults)
    return all(context.get(name) is not None for name in required)


def _render_problem(
    template: MessageTemplate, sample: Sample, practice: Practice
) -> Problem | None:
    try:
        template.render(sample.context(practice.timezone), profile_id=sample.id)
    except RenderFailed as exc:
        path = exc.path or template.spec.path
        field = f" (field '{exc.field}')" if exc.field else ""
        return Problem(path, exc.line, f"sample '{sample.id}': {exc.reason}{field}")
    except TemplateSpecError as exc:
        return Problem(exc.path, exc.line, f"sample '{sample.id}': {exc.problem}")
    return None


def render_sample(
    template: MessageTemplate, sample: Sample, practice: Practice
) -> RenderedContent:
    return template.render(sample.context(practice.timezone), profile_id=sample.id)


def lint_library(
    report: CheckReport,
    samples: list[Sample],
    practice: Practice,
    sender_names: Iterable[tuple[Path, str]],
) -> list[Problem]:
    """Return the disclosure problems of every loaded template."""
    problems = []
    for path, name in sender_names:
        problems += _words_in(path, None, "sender name", name)
    library = report.library
    for name in library.names():
        template = library.get(name)
        for language in template.languages:
            spec = template.version_spec(language)
            if spec.sender_name:
                line = spec.line_of("sender_name")
                problems += _words_in(spec.path, line, "sender_name", spec.sender_name)
        for sample in samples:
            if _applicable(template, sample):
                problems += _url_problems(template, sample, practice)
    return _unique(problems)


def _words_in(path: Path, line: int | None, what: str, text: str) -> list[Problem]:
    word = condition_word(text)
    if word is None:
        return []
    return [Problem(path, line, f"{what} names a health condition ('{word}')")]


def _url_problems(
    template: MessageTemplate, sample: Sample, practice: Practice
) -> list[Problem]:
    try:
        content = render_sample(template, sample, practice)
    except (RenderFailed, TemplateSpecError):
        return []  # check reports render failures
    path = template.version_spec(content.language).path
    sensitive = _sensitive_values(template, sample)
    problems = []
    for url in sorted(set(extract_urls(content))):
        if url == PREVIEW_UNSUBSCRIBE_URL:
            continue
        word = condition_word(url.replace("-", " ").replace("_", " "))
        if word is not None:
            problems.append(Problem(path, None, f"URL names a health condition "
                                    f"('{word}'): {url}"))
        for field, values in sensitive.items():
            if any(value in url.lower() for value in values):
                problems.append(Problem(path, None, f"a URL contains the profile "
                                        f"field '{field}' (sample '{sample.id}')"))
    return problems


def extract_urls(content: RenderedContent) -> Iterator[str]:
    """Yield every href and src of the HTML part and every URL of the text."""
    for match in _HTML_URL.finditer(content.html):
        yield html.unescape(match[1] if match[1] is not None else match[2])
    for match in _TEXT_URL.finditer(content.text):
        yield match[0].rstrip(".,;:!?)]}")


def _sensitive_values(template: MessageTemplate, sample: Sample) -> dict[str, set[str]]:
    values: dict[str, set[str]] = {}
    for field in template.fields:
        value = sample.profile.get(field)
        if field in NON_SENSITIVE_FIELDS or value is None:
            continue
        forms = {str(value)}
        if isinstance(value, (date, datetime)):
            forms.add(value.isoformat())
        found = {form.lower() for form in forms if len(form) >= _MIN_VALUE_LENGTH}
        found |= {quote(form, safe="").lower() for form in found}
        if found:
            values[field] = found
    return values


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: dict[str, Problem] = {}
    for problem in problems:
        seen.setdefault(str(problem), problem)
    return list(seen.values())


@dataclass(frozen=True)
class PreviewFiles:
    html: Path
    text: Path
    widths: Path


def write_preview(
    content: RenderedContent, out_dir: Path, stem: str, *, private: bool = False
) -> PreviewFiles:
    """Write the HTML part, the text part and a desktop/mobile side-by-side page.

    ``private`` files (a real patient's data) are created with mode 0600.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files = PreviewFiles(
        out_dir / f"{stem}.html", out_dir / f"{stem}.txt", out_dir / f"{stem}.widths.html"
    )
    _write(files.html, content.html, private)
    _write(files.text, content.text, private)
    _write(files.widths, _widths_page(files.html.name, content.subject), private)
    return files


def _write(path: Path, text: str, private: bool) -> None:
    if private:
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)
    path.write_text(text, encoding="utf-8")


def _widths_page(html_name: str, subject: str) -> str:
    frames = "\n".join(
        f'<figure><figcaption>{label}, {width} px</figcaption>'
        f'<iframe src="{html.escape(html_name)}" width="{width}" height="900" '
        f'style="border: 1px solid #999;"></iframe></figure>'
        for label, width in PREVIEW_WIDTHS
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Preview: {html.escape(subject)}</title></head>\n"
        '<body style="display: flex; gap: 24px; align-items: flex-start;">\n'
        f"{frames}\n</body></html>\n"
    )
