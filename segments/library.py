"""The folder of segment specs, validated as a whole when it is loaded."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import duckdb
from carepost.core.states import SegmentKind
from carepost.segments.checks import Reference, check_spec
from carepost.segments.compiler import CompiledSegment, compile_segment
from carepost.segments.errors import SegmentSpecError, UnknownSegmentError
from carepost.segments.spec import SegmentSpec
from carepost.segments.validation import validate_spec
from carepost.segments.vocabulary import NAME_PATTERN, suggest
from carepost.segments.yamlsource import SourceMap, load_spec_file


class SegmentLibrary:
    """Every ``*.yaml`` spec in one folder; the file name is the segment name.

    The constructor reads and validates every file, resolves ``in_segment``
    references and rejects cycles, so a library that exists is usable: the
    first invalid file raises SegmentSpecError and nothing is loaded.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise NotADirectoryError(f"segment folder not found: {self.folder}")
        self._specs: dict[str, SegmentSpec] = {}
        self._sources: dict[str, SourceMap] = {}
        references: dict[str, list[Reference]] = {}
        for path in sorted(self.folder.glob("*.yaml")):
            references[path.stem] = self._load(path)

        for name, found in references.items():
            for reference in found:
                self._check_reference(name, reference)
        self._reject_cycles(references)
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
        """Return the sorted ids of the profiles in a segment on the run date."""
        compiled = self.compile(name, stage)
        rows = conn.execute(compiled.sql, compiled.bind(_run_date(as_of))).fetchall()
        return sorted(row[0] for row in rows)

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

    def _load(self, path: Path) -> list[Reference]:
        if not NAME_PATTERN.match(path.stem):
            raise SegmentSpecError(
                path,
                1,
                1,
                "",
                "a file name of lower-case letters, digits and "
                "underscores, ending in .yaml",
                f"'{path.name}'",
            )
        data, source = load_spec_file(path)
        spec = validate_spec(data, source)
        found = check_spec(spec, source)
        self._specs[path.stem] = spec
        self._sources[path.stem] = source
        return found

    def _check_reference(self, name: str, reference: Reference) -> None:
        source = self._sources[name]
        target = self._specs.get(reference.segment)
        if target is None:
            raise source.error(
                (*reference.path, "in_segment"),
                f"the name of a segment file in {self.folder}",
                f"'{reference.segment}'",
                suggest(reference.segment, self._specs),
            )
        if reference.stage is None:
            return
        stage_names = [stage.name for stage in target.stages or []]
        if reference.stage not in stage_names:
            raise source.error(
                (*reference.path, "stage"),
                f"a stage of '{reference.segment}': "
                + (", ".join(stage_names) or "it has none"),
                f"'{reference.stage}'",
                suggest(reference.stage, stage_names),
            )

    def _reject_cycles(self, references: dict[str, list[Reference]]) -> None:
        finished: set[str] = set()
        for name in sorted(references):
            self._visit(name, [], references, finished)

    def _visit(
        self,
        name: str,
        trail: list[str],
        references: dict[str, list[Reference]],
        finished: set[str],
    ) -> None:
        """Depth-first search that raises at the reference closing a cycle."""
        if name in finished:
            return
        for reference in references[name]:
            if reference.segment in (*trail, name):
                cycle = " -> ".join([*trail, name, reference.segment])
                raise self._sources[name].error(
                    (*reference.path, "in_segment"),
                    "in_segment references without a cycle",
                    f"cycle {cycle}",
                )
            self._visit(reference.segment, [*trail, name], references, finished)
        finished.add(name)


def _run_date(as_of: date) -> date:
    """Accept a calendar date only, so a time of day cannot shift the windows."""
    if isinstance(as_of, datetime) or not isinstance(as_of, date):
        raise TypeError("as_of must be a datetime.date, not a datetime or text")
    return as_of
