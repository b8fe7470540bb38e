"""Errors raised by the template engine.

    CarepostError
    ├── TemplateSpecError     a library file is invalid (file, line, problem)
    ├── RenderFailed          one recipient's message could not be rendered
    │                         (profile id, template, field, reason)
    └── HeaderInjectionError  a header value contains CR, LF or another
                              control character (header name)

Messages name files, lines, templates, fields, header names and profile
ids. They never contain a profile value or an email address, because the
flows record them in the ledger and in logs.
"""

from __future__ import annotations

from pathlib import Path

from carepost.core.errors import CarepostError


class TemplateSpecError(CarepostError):
    """A template, layout or partial in the library is invalid."""

    def __init__(
        self,
        path: Path | str,
        line: int | None,
        problem: str,
        *,
        hint: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {problem}", hint=hint)


class RenderFailed(CarepostError):
    """One recipient's message could not be rendered, so nothing is sent.

    ``field`` is the profile field at fault when one is known; ``reason``
    is a fixed description that never contains the field's value.
    ``path`` and ``line`` name the template line that failed, when Jinja's
    traceback gives one.
    """

    def __init__(
        self,
        *,
        profile_id: str,
        template: str,
        reason: str,
        field: str | None = None,
        path: Path | None = None,
        line: int | None = None,
    ) -> None:
        self.profile_id = profile_id
        self.template = template
        self.field = field
        self.reason = reason
        self.path = path
        self.line = line
        subject = f"field '{field}': " if field else ""
        super().__init__(
            f"template '{template}' failed for profile {profile_id}: {subject}{reason}"
        )


class HeaderInjectionError(CarepostError):
    """A header value would break out of its header line on the wire."""

    def __init__(self, header: str, problem: str) -> None:
        self.header = header
        super().__init__(
            f"invalid {header} header value: {problem}",
            hint="header values must be one line without control characters",
        )
