"""The segment language: YAML specs compiled to one DuckDB query each.

Engine modules sit at the top of this folder; the marketers' specs sit in
``library/``, one file per segment. ``README.md`` describes the language.

    from carepost.segments import SegmentLibrary
    library = SegmentLibrary(Path("segments/library"))
    ids = library.select(conn, "missed_appointment", as_of=date(2024, 6, 1))
"""

from __future__ import annotations

from carepost.segments.compiler import CompiledSegment
from carepost.segments.errors import SegmentSpecError, UnknownSegmentError
from carepost.segments.folder import LoadedFolder, load_folder
from carepost.segments.library import SegmentLibrary
from carepost.segments.recipients import RecipientRules, RecipientSelection
from carepost.segments.spec import SegmentSpec

__all__ = [
    "CompiledSegment",
    "LoadedFolder",
    "RecipientRules",
    "RecipientSelection",
    "SegmentLibrary",
    "SegmentSpec",
    "SegmentSpecError",
    "UnknownSegmentError",
    "load_folder",
]
