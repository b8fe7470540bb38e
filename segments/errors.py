"""Errors raised by the segment language.

    CarepostError
    ├── SegmentSpecError      a spec file is invalid (file, line, key path)
    └── UnknownSegmentError   a caller named a segment or stage that is not
                              in the library

Messages name files, lines, keys and the spec's own text. They never carry
a value read from a patient profile or event, because the compiler never
reads one.
"""

from __future__ import annotations

from pathlib import Path

from carepost.core.errors import CarepostError


class SegmentSpecError(CarepostError):
    """A segment spec is invalid; the fields locate the problem in the file.

    ``line`` and ``column`` are 1-based. ``key_path`` is the dotted path
    from the top of the file, with list positions in brackets, for example
    ``where.all[1].contains``.
    """

    def __init__(
        self,
        file: Path | str,
        line: int,
        column: int,
        key_path: str,
        expected: str,
        found: str,
        suggestion: str | None = None,
    ) -> None:
        self.file = str(file)
        self.line = line
        self.column = column
        self.key_path = key_path
        self.expected = expected
        self.found = found
        self.suggestion = suggestion
        where = f"{self.file}:{line}:{column}: {key_path or '(top level)'}"
        hint = f"did you mean {suggestion}?" if suggestion else None
        super().__init__(f"{where}: expected {expected}, found {found}", hint=hint)


class UnknownSegmentError(CarepostError, LookupError):
    """A caller asked for a segment or lifecycle stage the library lacks."""
