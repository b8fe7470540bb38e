"""Render one message for one recipient.

The profile mapping is cut down to the template's declared fields (the
minimum necessary). PHI wrappers are removed here and nowhere earlier.
Every kind of missing value becomes one "missing" state before Jinja
renders anything. Any failure becomes ``RenderFailed`` with the profile id,
the template and, when known, the field; never with a value.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn

import css_inline
from carepost.core.phi import reveal
from carepost.core.settings import Practice
from carepost.core.states import Purpose
from carepost.templates.environment import FilterValueError, OutputIsNone
from carepost.templates.errors import RenderFailed
from carepost.templates.mime import RenderedContent, check_header_value
from carepost.templates.spec import TemplateSpec
from jinja2 import Template, TemplateError, UndefinedError
from jinja2.exceptions import SecurityError

# Per-message values the flow puts in the mapping next to the profile
# fields. They are ids and links, not PHI.
MESSAGE_KEYS = ("unsubscribe_url", "message_id")
_UNDEFINED_NAME = re.compile(r"'([a-z][a-z0-9_]*)' is undefined")

# CSS is inlined per message, after rendering. Inlining the Jinja source
# once per version would need an HTML parser to keep Jinja tags in place,
# and html5ever moves text out of <table> (foster parenting), which breaks
# loops over rows. Measured cost: about 0.04 ms of a 0.15 ms render for
# the 2 KB missed_appointment email (2,000 renders, css-inline 0.24,
# Python 3.11, shared 2-core machine), small next to an SMTP round trip.
# One inliner is shared; it never loads remote stylesheets.
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False)


@dataclass(frozen=True)
class CompiledParts:
    """The compiled Jinja templates of one library template."""

    subject: Template
    preheader: Template
    html: Template
    text: Template


class MessageTemplate:
    """One validated template of the library, ready to render."""

    def __init__(
        self,
        spec: TemplateSpec,
        parts: CompiledParts,
        version: str,
        practice: Mapping[str, str],
    ) -> None:
        self._spec = spec
        self._parts = parts
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

    def __repr__(self) -> str:
        return f"MessageTemplate(name={self.name!r}, version={self.version!r})"

    def render(
        self, profile: Mapping[str, object], *, profile_id: str
    ) -> RenderedContent:
        """Render subject, preheader, HTML and text for one recipient.

        ``profile`` contains the profile fields (plain or wrapped in ``PHI``)
        and the per-message ``unsubscribe_url`` and ``message_id``.
        """
        context = self._context(profile, profile_id)
        subject = self._run(self._parts.subject, context, profile_id).strip()
        preheader = self._run(self._parts.preheader, context, profile_id).strip()
        check_header_value("Subject", subject)

        page = {**context, "subject": subject, "preheader": preheader}
        html = self._inline(self._run(self._parts.html, page, profile_id), profile_id)
        text = self._run(self._parts.text, page, profile_id)
        return RenderedContent(subject, preheader, html, text, self.purpose)

    def _context(
        self, profile: Mapping[str, object], profile_id: str
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

        for name in self._spec.fields:
            value = reveal(profile.get(name))
            if not is_missing(value):
                context[name] = value
            elif name not in self._spec.defaults:
                self._fail(profile_id, "required field is missing", name)
            elif self._spec.defaults[name] is not None:
                context[name] = self._spec.defaults[name]
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
                self._fail(profile_id, reason, match[1])
            self._fail(profile_id, "undefined variable, attribute or item")
        except OutputIsNone:
            self._fail(profile_id, "an expression printed None")
        except (SecurityError, FilterValueError) as exc:
            # Both messages are built from template names and types only.
            self._fail(profile_id, f"{type(exc).__name__}: {exc.message}")
        except (
            TemplateError,
            ArithmeticError,
            LookupError,
            TypeError,
            ValueError,
        ) as exc:
            # Other messages may quote a value, so only the type is kept.
            self._fail(profile_id, f"render error ({type(exc).__name__})")

    def _inline(self, html: str, profile_id: str) -> str:
        try:
            return _INLINER.inline(html)
        except css_inline.InlineError:
            self._fail(profile_id, "CSS inlining failed")

    def _fail(self, profile_id: str, reason: str, name: str | None = None) -> NoReturn:
        raise RenderFailed(
            profile_id=profile_id, template=self.name, reason=reason, field=name
        ) from None


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


def practice_view(practice: Practice) -> Mapping[str, str]:
    """Return the read-only practice details every template may print."""
    return MappingProxyType(practice.model_dump())
