"""Load, check and compile every template in the library folder.

A template is a pair ``NAME.html.j2`` (with front matter) and
``NAME.txt.j2`` at the top of the folder; ``layouts/`` and ``partials/``
hold the files they share. Everything is validated when the library is
constructed, so a bad template stops start-up instead of a campaign.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from carepost.core.settings import Practice
from carepost.templates.checks import check_file, check_headline, load_sources
from carepost.templates.environment import (
    HTML_SUFFIX,
    TEXT_SUFFIX,
    html_environment,
    split_front_matter,
    text_environment,
)
from carepost.templates.errors import TemplateSpecError
from carepost.templates.rendering import CompiledParts, MessageTemplate, practice_view
from carepost.templates.spec import TemplateSpec, parse_spec
from jinja2 import TemplateError

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_VERSION_LENGTH = 12


class TemplateLibrary:
    """All templates of one library folder, validated at construction."""

    def __init__(self, folder: Path, practice: Practice) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise TemplateSpecError(self.folder, None, "template folder not found")
        self._html_env = html_environment(self.folder)
        self._text_env = text_environment(self.folder)
        self._practice = practice_view(practice)
        self._templates: dict[str, MessageTemplate] = {}
        for path in sorted(self.folder.glob(f"*{HTML_SUFFIX}")):
            template = self._load(path)
            self._templates[template.name] = template
        if not self._templates:
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

    def _load(self, path: Path) -> MessageTemplate:
        name = path.name.removesuffix(HTML_SUFFIX)
        if not _NAME.match(name):
            raise TemplateSpecError(
                path,
                None,
                f"invalid template name '{name}'",
                hint="use lower-case letters, digits and underscores",
            )
        raw = path.read_text(encoding="utf-8")
        spec = parse_spec(name, path, split_front_matter(raw)[0])
        self._check_text_file(path.with_name(name + TEXT_SUFFIX))

        html_files = load_sources(self._html_env, name + HTML_SUFFIX, self.folder)
        text_files = load_sources(self._text_env, name + TEXT_SUFFIX, self.folder)
        for file in html_files:
            check_file(self._html_env, spec, file)
        for file in text_files:
            check_file(self._text_env, spec, file)
        check_headline(self._text_env, spec, "subject", spec.subject)
        check_headline(self._text_env, spec, "preheader", spec.preheader)

        digest = hashlib.sha256(raw.encode())
        for file in [*html_files, *text_files]:
            digest.update(b"\0" + file.name.encode() + b"\0" + file.source.encode())
        version = digest.hexdigest()[:_VERSION_LENGTH]
        return MessageTemplate(spec, self._compile(spec), version, self._practice)

    def _check_text_file(self, text_path: Path) -> None:
        if not text_path.is_file():
            raise TemplateSpecError(
                text_path,
                None,
                "text part not found",
                hint="every NAME.html.j2 needs a NAME.txt.j2 next to it",
            )
        front, _ = split_front_matter(text_path.read_text(encoding="utf-8"))
        if front is not None:
            raise TemplateSpecError(
                text_path, 1, "front matter belongs in the .html.j2 file only"
            )

    def _compile(self, spec: TemplateSpec) -> CompiledParts:
        try:
            return CompiledParts(
                subject=self._text_env.from_string(spec.subject),
                preheader=self._text_env.from_string(spec.preheader),
                html=self._html_env.get_template(spec.name + HTML_SUFFIX),
                text=self._text_env.get_template(spec.name + TEXT_SUFFIX),
            )
        except TemplateError as exc:
            raise TemplateSpecError(
                spec.path,
                getattr(exc, "lineno", None),
                f"cannot compile: {exc.message}",
            ) from None
