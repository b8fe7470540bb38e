"""Load, check and compile every template in the library folder.

A template is ``NAME.html.j2`` (with front matter) at the top of the
folder, with an optional ``NAME.txt.j2`` (without one, the text part is
derived from the HTML). ``NAME.es.html.j2`` (and ``NAME.es.txt.j2``) is
its Spanish version; any ISO 639 code works the same way. ``layouts/``
and ``partials/`` hold the files they share, and ``layouts/styles.css``
the stylesheet that is inlined into the HTML sources once, at load.
Everything is validated when the library is constructed, so a bad
template stops start-up instead of a campaign.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from carepost.core.settings import Practice
from carepost.core.yamlio import NotUtf8Error, read_utf8_text
from carepost.templates.checks import check_file, check_headline, load_sources
from carepost.templates.environment import (
    HTML_SUFFIX,
    TEXT_SUFFIX,
    html_environment,
    split_front_matter,
    text_environment,
)
from carepost.templates.errors import HeaderInjectionError, TemplateSpecError
from carepost.templates.mime import check_header_value
from carepost.templates.rendering import (
    CompiledVersion,
    MessageTemplate,
    practice_view,
)
from carepost.templates.spec import TemplateSpec, parse_spec, parse_version_spec
from carepost.templates.styles import STYLESHEET, Stylesheet, source_transform
from jinja2 import Template, TemplateError, meta

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_LANGUAGE = re.compile(r"[a-z]{2,3}\Z")
_VERSION_LENGTH = 12


class TemplateLibrary:
    """All templates of one library folder, validated at construction.

    With ``strict=False`` a template that fails its checks is left out and
    its error kept in ``problems``, so ``carepost templates check`` can
    report them all. Otherwise the first error is raised. ``inline_css=False``
    keeps the stylesheet out of the sources; the tests use it to compare
    with inlining each rendered message.
    """

    def __init__(
        self,
        folder: Path,
        practice: Practice,
        *,
        strict: bool = True,
        inline_css: bool = True,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise TemplateSpecError(self.folder, None, "template folder not found")
        self.stylesheet = Stylesheet(self.folder / STYLESHEET)
        transform = source_transform(self.stylesheet) if inline_css else None
        self._html_env = html_environment(self.folder, transform)
        self._text_env = text_environment(self.folder)
        self._practice = practice_view(practice)
        self._templates: dict[str, MessageTemplate] = {}
        self.problems: list[TemplateSpecError] = []
        for name, paths in _discover(self.folder).items():
            try:
                self._templates[name] = self._load(name, paths)
            except TemplateSpecError as exc:
                if strict:
                    raise
                self.problems.append(exc)
        if not self._templates and not self.problems:
            raise TemplateSpecError(
                self.folder, None, f"no *{HTML_SUFFIX} templates found"
            )

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._templates))

    def get(self, name: str) -> MessageTemplate:
        try:
            return self._templates[name]
        except KeyError:
            raise TemplateSpecError(
                self.folder,
                None,
                f"no template named '{name}'",
                hint=f"available: {', '.join(self.names())}",
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._templates

    def _load(self, name: str, paths: dict[str, Path]) -> MessageTemplate:
        if "" not in paths:
            first = next(iter(paths.values()))
            raise TemplateSpecError(
                first, None, f"language version without {name}{HTML_SUFFIX}"
            )
        base_path = paths.pop("")
        spec = parse_spec(name, base_path, _front(base_path))
        specs = {spec.language: spec}
        for language, path in sorted(paths.items()):
            if language in specs:
                raise TemplateSpecError(
                    path,
                    None,
                    f"the base file already declares language '{language}'",
                    hint=f"remove this file or change 'language' in {base_path.name}",
                )
            specs[language] = parse_version_spec(spec, language, path, _front(path))
        _check_languages(spec, specs)

        digest = hashlib.sha256(self.stylesheet.css.encode())
        versions = {}
        for language, version_spec in specs.items():
            versions[language] = self._compile_version(version_spec, digest)
        version = digest.hexdigest()[:_VERSION_LENGTH]
        return MessageTemplate(spec, versions, version, self._practice)

    def _compile_version(
        self, spec: TemplateSpec, digest: hashlib._Hash
    ) -> CompiledVersion:
        html_name = spec.path.name
        text_name = html_name.removesuffix(HTML_SUFFIX) + TEXT_SUFFIX
        has_text = _check_text_file(spec.path.with_name(text_name))

        files = load_sources(self._html_env, html_name, self.folder)
        for file in files:
            check_file(self._html_env, spec, file)
        if has_text:
            text_files = load_sources(self._text_env, text_name, self.folder)
            for file in text_files:
                check_file(self._text_env, spec, file)
            files += text_files
        check_headline(self._text_env, spec, "subject", spec.subject)
        check_headline(self._text_env, spec, "preheader", spec.preheader)

        digest.update(spec.path.read_bytes())
        for file in files:
            digest.update(b"\0" + file.name.encode() + b"\0" + file.source.encode())
        subject = self._compile(spec, lambda: self._text_env.from_string(spec.subject))
        preheader = self._compile(
            spec, lambda: self._text_env.from_string(spec.preheader)
        )
        return CompiledVersion(
            spec=spec,
            subject=subject,
            preheader=preheader,
            html=self._compile(spec, lambda: self._html_env.get_template(html_name)),
            text=(
                self._compile(spec, lambda: self._text_env.get_template(text_name))
                if has_text
                else None
            ),
            fixed_subject=self._fixed_line("Subject", spec.subject, subject),
            fixed_preheader=self._fixed_line(None, spec.preheader, preheader),
        )

    def _fixed_line(
        self, header: str | None, source: str, template: Template
    ) -> str | None:
        """Render a subject or preheader now if it reads no profile field.

        Returns None when it reads one, or when rendering it fails, so the
        per-message render runs and reports the problem with the profile id.
        """
        names = meta.find_undeclared_variables(self._text_env.parse(source))
        if not names <= {"practice"}:
            return None
        try:
            line = template.render({"practice": self._practice}).strip()
            if header is not None:
                check_header_value(header, line)
        except (TemplateError, HeaderInjectionError, ArithmeticError, LookupError,
                TypeError, ValueError):
            return None
        return line

    def _compile(self, spec: TemplateSpec, build: Callable[[], Template]) -> Template:
        try:
            return build()
        except TemplateError as exc:
            raise TemplateSpecError(
                spec.path,
                getattr(exc, "lineno", None),
                f"cannot compile: {exc.message}",
            ) from None


def _discover(folder: Path) -> dict[str, dict[str, Path]]:
    """Group the top-level HTML files by template name, then by language."""
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.glob(f"*{HTML_SUFFIX}")):
        name, _, language = path.name.removesuffix(HTML_SUFFIX).partition(".")
        if not _NAME.match(name):
            raise TemplateSpecError(
                path,
                None,
                f"invalid template name '{name}'",
                hint="use lower-case letters, digits and underscores",
            )
        if language and not _LANGUAGE.match(language):
            raise TemplateSpecError(
                path,
                None,
                f"invalid language '{language}' in the file name",
                hint="name a language version NAME.es.html.j2 (ISO 639 code)",
            )
        groups.setdefault(name, {})[language] = path
    return groups


def _front(path: Path) -> str | None:
    return split_front_matter(_read_source(path))[0]


def _read_source(path: Path) -> str:
    try:
        return read_utf8_text(path)
    except NotUtf8Error as exc:
        raise TemplateSpecError(path, None, f"{exc.problem}; save it as UTF-8") from None


def _check_languages(spec: TemplateSpec, specs: dict[str, TemplateSpec]) -> None:
    if len(specs) > 1 and "language" not in spec.fields:
        raise TemplateSpecError(
            spec.path,
            spec.line_of("fields"),
            "the template has language versions but does not declare 'language'",
            hint="add language to 'fields' (with a null default if optional)",
        )
    if spec.fallback_language not in specs:
        raise TemplateSpecError(
            spec.path,
            spec.line_of("fallback_language"),
            f"fallback language '{spec.fallback_language}' has no version",
            hint=f"available: {', '.join(sorted(specs))}",
        )


def _check_text_file(text_path: Path) -> bool:
    """Return whether the text file exists; reject front matter in it."""
    if not text_path.is_file():
        return False
    front, _ = split_front_matter(_read_source(text_path))
    if front is not None:
        raise TemplateSpecError(
            text_path, 1, "front matter belongs in the .html.j2 file only"
        )
    return True
