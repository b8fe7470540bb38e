"""Checks run on every template source when the library loads.

The sandbox stops unsafe attribute access while rendering. These checks
reject the same templates earlier, with the file and line, so a bad
template cannot be published. They also enforce the front matter: a
template reads only the fields it declares, uses fallbacks only on
optional fields, and keeps health information out of the subject and
preheader.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from carepost.core.yamlio import NotUtf8Error, read_utf8_text
from carepost.templates.environment import filter_names
from carepost.templates.errors import TemplateSpecError
from carepost.templates.spec import ENGINE_NAMES, TemplateSpec
from jinja2 import TemplateNotFound, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The subject and preheader show on a lock screen, so they may address the
# recipient by first name but must not name a condition or treatment.
SUBJECT_NAMES = frozenset({"first_name", "practice"})
# NOTE: this list catches common condition and treatment words in English
# and Spanish. It cannot prove that a subject reveals nothing, so a person
# still reviews every new subject line.
_CONDITION_WORDS = re.compile(
    r"\b(diabet\w*|prediabet\w*|insulin|a1c|glucose|hypertension|"
    r"blood pressure|cholesterol|cancer|c[aá]ncer|oncolog\w*|tumou?r|hiv|vih|"
    r"aids|hepatitis|std|sti|pregnan\w*|embaraz\w*|prenatal|depressi\w*|"
    r"depresi[oó]n|anxiety|ansiedad|mental health|bipolar|schizophreni\w*|"
    r"addiction|opioid\w*|substance use|asthma|asma|copd|heart disease|"
    r"cardiac|stroke|dementia|alzheimer\w*|obes\w*|weight loss|dialysis|"
    r"kidney|arthritis|mammogra\w*|colonoscop\w*|hipertensi[oó]n|"
    r"presi[oó]n arterial|colesterol)\b",
    re.IGNORECASE,
)
_FALLBACK_FILTERS = frozenset({"default", "d"})


def condition_word(text: str) -> str | None:
    """Return the first condition or treatment word in ``text``, or None."""
    match = _CONDITION_WORDS.search(text)
    return match[0] if match else None

_FALLBACK_TESTS = frozenset({"defined", "undefined"})


@dataclass(frozen=True)
class SourceFile:
    """One library file a template uses, as Jinja loaded it."""

    name: str
    path: Path
    source: str


def load_sources(
    env: ImmutableSandboxedEnvironment, start: str, folder: Path
) -> list[SourceFile]:
    """Return ``start`` and every file it extends, includes or imports."""
    assert env.loader is not None
    seen: dict[str, SourceFile] = {}
    pending = [start]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        try:
            source, filename, _ = env.loader.get_source(env, name)
        except UnicodeDecodeError:
            raise _not_utf8(folder / name) from None
        except TemplateNotFound:
            raise TemplateSpecError(
                folder / start,
                None,
                f"'{name}' not found in the template folder",
                hint="extends, include and import take paths inside the library",
            ) from None
        path = Path(filename)
        seen[name] = SourceFile(name, path, source)
        tree = _parse(env, source, name, path)
        for reference in meta.find_referenced_templates(tree):
            if reference is None:
                raise TemplateSpecError(
                    path,
                    None,
                    "template names in extends/include/import must be literal",
                )
            pending.append(reference)
    return [seen[name] for name in sorted(seen)]


def _not_utf8(path: Path) -> TemplateSpecError:
    """Describe a layout or partial that Jinja's loader could not decode."""
    try:
        read_utf8_text(path)
    except NotUtf8Error as exc:
        return TemplateSpecError(path, None, f"{exc.problem}; save it as UTF-8")
    return TemplateSpecError(path, None, "not UTF-8 text; save it as UTF-8")


def check_file(
    env: ImmutableSandboxedEnvironment, spec: TemplateSpec, file: SourceFile
) -> None:
    """Check one file used by the template ``spec``."""
    tree = _parse(env, file.source, file.name, file.path)
    _check_nodes(tree, spec, file.path)
    allowed = ENGINE_NAMES | set(spec.fields) | _top_level_names(tree)
    for name in sorted(meta.find_undeclared_variables(tree) - allowed):
        raise TemplateSpecError(
            file.path,
            _first_use(tree, name),
            f"'{name}' is not a declared field of template '{spec.name}'",
            hint="add it to 'fields' in the front matter or remove it",
        )


def check_headline(
    env: ImmutableSandboxedEnvironment, spec: TemplateSpec, key: str, source: str
) -> None:
    """Check the subject or preheader: first name only, no condition words."""
    line = spec.line_of(key)
    tree = _parse(env, source, f"{spec.name}:{key}", spec.path, fixed_line=line)
    _check_nodes(tree, spec, spec.path, fixed_line=line)
    used = meta.find_undeclared_variables(tree)
    for name in sorted(used - SUBJECT_NAMES):
        raise TemplateSpecError(
            spec.path,
            line,
            f"'{key}' may not use '{name}'",
            hint="the subject and preheader show on lock screens; use only "
            "first_name and practice",
        )
    for name in sorted(used - ENGINE_NAMES - set(spec.fields)):
        raise TemplateSpecError(spec.path, line, f"'{key}' uses undeclared '{name}'")
    for text in _literal_text(tree):
        word = condition_word(text)
        if word is not None:
            raise TemplateSpecError(
                spec.path,
                line,
                f"'{key}' names a health condition ('{word}')",
                hint="keep health information in the body, not the subject",
            )


def _parse(
    env: ImmutableSandboxedEnvironment,
    source: str,
    name: str,
    path: Path,
    fixed_line: int | None = None,
) -> nodes.Template:
    """Parse ``source``, reporting errors at ``fixed_line`` when it is given."""
    try:
        return env.parse(source, name, str(path))
    except TemplateSyntaxError as exc:
        line = fixed_line if fixed_line is not None else exc.lineno
        raise TemplateSpecError(
            path, line, f"template syntax error: {exc.message}"
        ) from None


def _check_nodes(
    tree: nodes.Template, spec: TemplateSpec, path: Path, fixed_line: int | None = None
) -> None:
    kinds = (nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Test)
    for node in tree.find_all(kinds):
        problem = _node_problem(node, spec)
        if problem:
            line = fixed_line if fixed_line is not None else node.lineno
            raise TemplateSpecError(path, line, problem)


def _node_problem(node: nodes.Node, spec: TemplateSpec) -> str | None:
    if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
        return f"access to attribute '{node.attr}' is not allowed"
    if isinstance(node, nodes.Getitem):
        key = node.arg.value if isinstance(node.arg, nodes.Const) else None
        if isinstance(key, str) and key.startswith("_"):
            return f"access to item '{key}' is not allowed"
    if isinstance(node, nodes.Filter) and node.name not in filter_names():
        return f"filter '{node.name}' is not available in templates"
    if isinstance(node, nodes.Filter) and node.name in _FALLBACK_FILTERS:
        return _fallback_problem(node.node, spec)
    if isinstance(node, nodes.Test) and node.name in _FALLBACK_TESTS:
        return _fallback_problem(node.node, spec)
    return None


def _fallback_problem(target: nodes.Node | None, spec: TemplateSpec) -> str | None:
    if not isinstance(target, nodes.Name) or target.name not in spec.fields:
        return None
    if target.name in spec.optional_fields:
        return None
    return (
        f"'{target.name}' has a fallback in the template but is required; "
        "declare it under 'defaults' to make it optional"
    )


def _top_level_names(tree: nodes.Template) -> set[str]:
    """Return names a file assigns outside blocks (imports, set, macros).

    Jinja's analysis reports them as undeclared inside blocks, but at run
    time the blocks find them in the template context.
    """
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, nodes.Import):
            names.add(node.target)
        elif isinstance(node, nodes.FromImport):
            names.update(n if isinstance(n, str) else n[1] for n in node.names)
        elif isinstance(node, nodes.Macro):
            names.add(node.name)
        elif isinstance(node, nodes.Assign):
            names.update(target.name for target in node.find_all(nodes.Name))
    return names


def _first_use(tree: nodes.Template, name: str) -> int | None:
    for node in tree.find_all(nodes.Name):
        if node.name == name:
            return node.lineno
    return None


def _literal_text(tree: nodes.Template) -> Iterator[str]:
    for data in tree.find_all(nodes.TemplateData):
        yield data.data
    for const in tree.find_all(nodes.Const):
        if isinstance(const.value, str):
            yield const.value
