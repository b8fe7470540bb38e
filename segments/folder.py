"""Read and check every spec in a folder, collecting all problems.

``load_folder`` never stops at the first problem: it parses each file,
validates it against the model, checks its names and values, then
resolves ``in_segment`` references and looks for cycles across files. A
file with a problem is left out of ``specs`` but still counts as an
existing segment name, so a reference to it is not reported as missing.

``SegmentLibrary`` raises the first problem; ``carepost segments
validate`` prints them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from carepost.segments.checks import Reference, spec_check_problems
from carepost.segments.errors import SegmentSpecError
from carepost.segments.spec import SegmentSpec
from carepost.segments.validation import spec_problems
from carepost.segments.vocabulary import NAME_PATTERN, suggest
from carepost.segments.yamlsource import SourceMap, load_spec_file


@dataclass
class LoadedFolder:
    """The valid specs of one folder and every problem found in it."""

    folder: Path
    specs: dict[str, SegmentSpec] = field(default_factory=dict)
    sources: dict[str, SourceMap] = field(default_factory=dict)
    problems: list[SegmentSpecError] = field(default_factory=list)
    file_names: set[str] = field(default_factory=set)


def load_folder(folder: Path) -> LoadedFolder:
    """Load every ``*.yaml`` in ``folder``; problems are collected, not raised."""
    loaded = LoadedFolder(Path(folder))
    references: dict[str, list[Reference]] = {}
    paths = sorted(loaded.folder.glob("*.yaml"))
    loaded.file_names = {path.stem for path in paths}
    for path in paths:
        found = _load_file(loaded, path)
        if found is not None:
            references[path.stem] = found

    for name, found in references.items():
        for reference in found:
            _check_reference(loaded, name, reference)
    _find_cycles(loaded, references)
    return loaded


def _load_file(loaded: LoadedFolder, path: Path) -> list[Reference] | None:
    """Load one file; return its references, or None if it has a problem."""
    if not NAME_PATTERN.match(path.stem):
        loaded.problems.append(
            SegmentSpecError(
                path,
                1,
                1,
                "",
                "a file name of lower-case letters, digits and "
                "underscores, ending in .yaml",
                f"'{path.name}'",
            )
        )
        return None
    try:
        data, source = load_spec_file(path)
    except SegmentSpecError as exc:
        loaded.problems.append(exc)
        return None

    problems = list(source.problems)
    spec, model_problems = spec_problems(data, source)
    problems.extend(model_problems)
    references: list[Reference] = []
    if spec is not None:
        references, check_problems = spec_check_problems(spec, source)
        problems.extend(check_problems)
    loaded.problems.extend(problems)
    if problems or spec is None:
        return None
    loaded.specs[path.stem] = spec
    loaded.sources[path.stem] = source
    return references


def _check_reference(loaded: LoadedFolder, name: str, reference: Reference) -> None:
    source = loaded.sources[name]
    if reference.segment not in loaded.file_names:
        loaded.problems.append(
            source.error(
                (*reference.path, "in_segment"),
                f"the name of a segment file in {loaded.folder}",
                f"'{reference.segment}'",
                suggest(reference.segment, loaded.file_names),
            )
        )
        return
    target = loaded.specs.get(reference.segment)
    if reference.stage is None or target is None:
        return
    stage_names = [stage.name for stage in target.stages or []]
    if reference.stage not in stage_names:
        loaded.problems.append(
            source.error(
                (*reference.path, "stage"),
                f"a stage of '{reference.segment}': "
                + (", ".join(stage_names) or "it has none"),
                f"'{reference.stage}'",
                suggest(reference.stage, stage_names),
            )
        )


def _find_cycles(loaded: LoadedFolder, references: dict[str, list[Reference]]) -> None:
    finished: set[str] = set()
    for name in sorted(references):
        _visit(loaded, name, [], references, finished)


def _visit(
    loaded: LoadedFolder,
    name: str,
    trail: list[str],
    references: dict[str, list[Reference]],
    finished: set[str],
) -> None:
    """Depth-first search that reports the reference closing each cycle."""
    if name in finished or name not in references:
        return
    for reference in references[name]:
        if reference.segment in (*trail, name):
            cycle = " -> ".join([*trail, name, reference.segment])
            loaded.problems.append(
                loaded.sources[name].error(
                    (*reference.path, "in_segment"),
                    "in_segment references without a cycle",
                    f"cycle {cycle}",
                )
            )
            continue
        _visit(loaded, reference.segment, [*trail, name], references, finished)
    finished.add(name)
