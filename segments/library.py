"""The folder of segment specs, validated as a whole when it is loaded."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import duckdb
from carepost.core.states import SegmentKind
from carepost.segments.compiler import CompiledSegment, compile_segment
from carepost.segments.errors import UnknownSegmentError
from carepost.segments.folder import load_folder
from carepost.segments.recipients import (
    RecipientRules,
    RecipientSelection,
    select_recipients,
)
from carepost.segments.spec import SegmentSpec
from carepost.segments.vocabulary import suggest


class SegmentLibrary:
    """Every ``*.yaml`` spec in one folder; the file name is the segment name.

    The constructor reads and validates every file, resolves ``in_segment``
    references and rejects cycles, so a library that exists is usable: the
    first problem raises SegmentSpecError and nothing is loaded.
    ``folder.load_folder`` returns every problem instead.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise NotADirectoryError(f"segment folder not found: {self.folder}")
        loaded = load_folder(self.folder)
        if loaded.problems:
            raise loaded.problems[0]
        self._specs: dict[str, SegmentSpec] = loaded.specs
        self._compiled: dict[tuple[str, str | None], CompiledSegment] = {}

    def names(self) -> list[str]:
        """Return the segment names, sorted."""
        return sorted(self._specs)

    def get(self, name: str) -> SegmentSpec:
        """Return one validated spec, or raise UnknownSegmentError."""
        if name not in self._specs:
            guess = suggest(name, self._specs)
            raise UnknownSegmentError(
                f"segment '{name}' not found in {self.folder}",
                hint=f"did you mean {guess}?" if guess else None,
            )
        return self._specs[name]

    def stages(self, name: str) -> list[str]:
        """Return a lifecycle's stage names in order; empty for other kinds."""
        return [stage.name for stage in self.get(name).stages or []]

    def compile(self, name: str, stage: str | None = None) -> CompiledSegment:
        """Compile a segment, or one stage of a lifecycle, to one query."""
        spec = self.get(name)
        if stage is not None and stage not in self.stages(name):
            raise UnknownSegmentError(
                f"segment '{name}' has no stage '{stage}'",
                hint="stages: " + (", ".join(self.stages(name)) or "none"),
            )
        key = (name, stage)
        if key not in self._compiled:
            self._compiled[key] = compile_segment(spec, self.get, stage)
        return self._compiled[key]

    def select(
        self,
        conn: duckdb.DuckDBPyConnection,
        name: str,
        *,
        as_of: date,
        stage: str | None = None,
    ) -> list[str]:
        """Return the sorted ids of the profiles in a segment on the run date.

        The query sorts them (byte order, which for UTF-8 is code point
        order). Fetching one NumPy column is cheaper than a tuple per row.
        """
        compiled = self.compile(name, stage)
        result = conn.execute(compiled.sql, compiled.bind(_run_date(as_of)))
        ids: list[str] = result.fetchnumpy()["profile_id"].tolist()
        return ids

    def select_recipients(
        self,
        conn: duckdb.DuckDBPyConnection,
        name: str,
        *,
        as_of: date,
        rules: RecipientRules,
        stage: str | None = None,
    ) -> RecipientSelection:
        """Select a segment and drop everyone the campaign must not reach.

        ``rules`` names the purpose, the ledger, the address hash function
        and the frequency cap; see ``recipients.py`` for the checks.
        """
        compiled = self.compile(name, stage)
        return select_recipients(conn, compiled, as_of=_run_date(as_of), rules=rules)

    def stage_counts(
        self, conn: duckdb.DuckDBPyConnection, name: str, *, as_of: date
    ) -> dict[str, int]:
        """Count a lifecycle's profiles per stage, in stage order, zeros included."""
        if self.get(name).kind is not SegmentKind.LIFECYCLE:
            raise UnknownSegmentError(
                f"segment '{name}' is not a lifecycle",
                hint="stage_counts needs kind: lifecycle",
            )
        compiled = self.compile(name)
        rows = conn.execute(compiled.sql, compiled.bind(_run_date(as_of))).fetchall()
        counts = dict.fromkeys(self.stages(name), 0)
        for _profile_id, stage in rows:
            counts[stage] += 1
        return counts


def _run_date(as_of: date) -> date:
    """Accept a calendar date only, so a time of day cannot shift the windows."""
    if isinstance(as_of, datetime) or not isinstance(as_of, date):
        raise TypeError("as_of must be a datetime.date, not a datetime or text")
    return as_of
