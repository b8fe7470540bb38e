"""Render one message for one recipient.

The profile mapping is cut down to the template's declared fields (the
minimum necessary). PHI wrappers are removed here and nowhere earlier.
Every kind of missing value becomes one "missing" state before Jinja
renders anything. Any failure becomes ``RenderFailed`` with the profile id,
the template and, when known, the field and template line; never with a
value.

CSS is already in the compiled templates' ``style`` attributes (see
``styles.py``), so a render is Jinja, link rewriting and, for templates
without a text part, the HTML-to-text conversion.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from carepost.core.phi import reveal
from carepost.core.settings import Practice
from carepost.core.states import Purpose
from carepost.templates.environment import (
    FilterValueError,
    OutputIsNone,
    PracticeView,
)
from carepost.templates.errors import RenderFailed
from carepost.templates.links import LinkRewriter, Tracking
from carepost.templates.mime import RenderedContent, check_header_value
from carepost.templates.plaintext import html_to_text
from carepost.templates.spec import TemplateSpec
from jinja2 import Template, TemplateError, UndefinedError
from jinja2.exceptions import SecurityError

# Per-message values the flow puts in the mapping next to the profile
# fields. They are ids and links, not PHI.
MESSAGE_KEYS = ("unsubscribe_url", "message_id")
_UNDEFINED_NAME = re.compile(r"'([a-z][a-z0-9_]*)' is undefined")


@dataclass(frozen=True)
class CompiledVersion:
    """The compiled templates of one language version of a library template.

    ``text`` is None when the version has no text file: the text part is
    then derived from the rendered HTML. ``fixed_subject`` and
    ``fixed_preheader`` hold the rendered line when it reads no profile
    field (only ``practice``, which is the same for every message), so it
    is rendered once at load instead of once per message.
    """

    spec: TemplateSpec
    subject: Template
    preheader: Template
    html: Template
    text: Template | None
    fixed_subject: str | None = None
    fixed_preheader: str | None = None

    @property
    def language(self) -> str:
        return self.spec.language


class MessageTemplate:
    """One validated template of the library, ready to render."""

    def __init__(
        self,
        spec: TemplateSpec,
        versions: Mapping[str, CompiledVersion],
        version: str,
        practice: PracticeView,
    ) -> None:
        self._spec = spec
        self._versions = dict(versions)
        self._practice = practice
        self.version = version

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def purpose(self) -> Purpose:
        return self._spec.purpose

    @property
    def fields(self) -> tuple[str, ...]:
        return self._spec.fields

    @property
    def spec(self) -> TemplateSpec:
        return self._spec

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted(self._versions))

    def version_spec(self, language: str) -> TemplateSpec:
        return self._versions[language].spec

    def __repr__(self) -> str:
        return f"MessageTemplate(name={self.name!r}, version={self.version!r})"

    def choose(self, language: object) -> CompiledVersion:
        """Return the version for a profile's ``language`` ("es-MX" -> "es")."""
        value = reveal(language)
        if isinstance(value, str) and value.strip():
            primary = value.strip().replace("_", "-").split("-")[0].lower()
            if primary in self._versions:
                return self._versions[primary]
        return self._versions[self._spec.fallback_language]

    def render(
        self,
        profile: Mapping[str, object],
        *,
        profile_id: str,
        tracking: Tracking | None = None,
    ) -> RenderedContent:
        """Render subject, preheader, HTML and text for one recipient.

        ``profile`` contains the profile fields (plain or wrapped in ``PHI``)
        and the per-message ``unsubscribe_url`` and ``message_id``. With
        ``tracking``, links and the open pixel point at the tracking
        service; without it (previews, checks) links keep their address.
        """
        language = profile.get("language") if "language" in self.fields else None
        compiled = self.choose(language)
        context = self._context(compiled.spec, profile, profile_id)
        subject = compiled.fixed_subject
        if subject is None:
            subject = self._run(compiled.subject, context, profile_id).strip()
            check_header_value("Subject", subject)
        preheader = compiled.fixed_preheader
        if preheader is None:
            preheader = self._run(compiled.preheader, context, profile_id).strip()

        page = {
            **context,
            "subject": subject,
            "preheader": preheader,
            "message_language": compiled.language,
        }
        links = LinkRewriter(tracking, context["unsubscribe_url"])
        # The front matter leaves blank lines before the layout's doctype.
        html = self._run(compiled.html, page, profile_id).lstrip()
        html = links.rewrite_html(html)
        if compiled.text is None:
            text = html_to_text(html)
        else:
            text = links.rewrite_text(self._run(compiled.text, page, profile_id))
        if not text.strip():
            self._fail(profile_id, "the text part is empty")
        return RenderedContent(
            subject,
            preheader,
            html,
            text,
            self.purpose,
            language=compiled.language,
            sender_name=compiled.spec.sender_name,
        )

    def _context(
        self, spec: TemplateSpec, profile: Mapping[str, object], profile_id: str
    ) -> dict[str, Any]:
        context: dict[str, Any] = {"practice": self._practice}
        for key in MESSAGE_KEYS:
            value = reveal(profile.get(key))
            if not isinstance(value, str) or not value:
                self._fail(profile_id, f"{key} is missing", key)
            context[key] = value
        if not context["unsubscribe_url"].startswith("https://"):
            self._fail(
                profile_id, "unsubscribe_url must be an https URL", "unsubscribe_url"
            )

        for name in spec.fields:
            value = reveal(profile.get(name))
            if not is_missing(value):
                context[name] = value
            elif name not in spec.defaults:
                self._fail(profile_id, "required field is missing", name)
            elif spec.defaults[name] is not None:
                context[name] = spec.defaults[name]
        return context

    def _run(self, template: Template, context: dict[str, Any], profile_id: str) -> str:
        try:
            return template.render(context)
        except UndefinedError as exc:
            # "'x' has no attribute 'y'" can quote a value used as a key, so
            # only the "'name' is undefined" form is passed on.
            match = _UNDEFINED_NAME.fullmatch(exc.message or "")
            if match and match[1] in self.fields:
                reason = "value is missing and the template has no fallback"
                self._fail(profile_id, reason, match[1], exc)
            self._fail(profile_id, "undefined variable, attribute or item", None, exc)
        except OutputIsNone as exc:
            self._fail(profile_id, "an expression printed None", None, exc)
        except (SecurityError, FilterValueError) as exc:
            # Both messages are built from template names and types only.
            reason = f"{type(exc).__name__}: {exc.message}"
            self._fail(profile_id, reason, None, exc)
        except (
            TemplateError,
            ArithmeticError,
            LookupError,
            TypeError,
            ValueError,
        ) as exc:
            # Other messages may quote a value, so only the type is kept.
            self._fail(profile_id, f"render error ({type(exc).__name__})", None, exc)

    def _fail(
        self,
        profile_id: str,
        reason: str,
        name: str | None = None,
        cause: BaseException | None = None,
    ) -> NoReturn:
        path, line = _template_line(cause.__traceback__ if cause else None)
        raise RenderFailed(
            profile_id=profile_id,
            template=self.name,
            reason=reason,
            field=name,
            path=path,
            line=line,
        ) from None


def _template_line(trace: TracebackType | None) -> tuple[Path | None, int | None]:
    """Return the innermost template file and line of a Jinja traceback.

    Jinja rewrites tracebacks so that template frames carry the template's
    file name and line number.
    """
    found: tuple[Path | None, int | None] = (None, None)
    while trace is not None:
        filename = trace.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            found = (Path(filename), trace.tb_lineno)
        trace = trace.tb_next
    return found


def is_missing(value: object) -> bool:
    """Return True for None, NaN, pandas NA/NaT and blank text."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, float):
        return math.isnan(value)
    pandas = sys.modules.get("pandas")
    if pandas is None:
        # pandas was never imported, so the value cannot be one of its NAs.
        return False
    return bool(pandas.api.types.is_scalar(value) and pandas.isna(value))


def practice_view(practice: Practice) -> PracticeView:
    """Return the read-only practice details every template may print."""
    return PracticeView(
        name=practice.name,
        postal_address=practice.postal_address,
        timezone=practice.timezone,
        website=practice.website,
    )
