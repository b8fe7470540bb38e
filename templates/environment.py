"""Sandboxed Jinja environments and the filters templates may use.

Two environments share one configuration: the HTML one autoescapes every
expression, the text one (plain-text part, subject and preheader) does not.
Both are ``ImmutableSandboxedEnvironment`` with ``StrictUndefined``, no
globals, and a short list of filters, so a template can only format the
values it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound, pass_context
from jinja2.environment import Environment
from jinja2.exceptions import TemplateRuntimeError
from jinja2.environment import TemplateModule
from jinja2.runtime import Context, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment

HTML_SUFFIX = ".html.j2"
TEXT_SUFFIX = ".txt.j2"

# Built-in filters that only format or pick from values. Filters that
# reach attributes by name (attr, map, selectattr), mark text as trusted
# (safe) or dump objects (pprint, tojson) are left out.
_BUILTIN_FILTERS = (
    "capitalize",
    "d",
    "default",
    "e",
    "escape",
    "first",
    "int",
    "join",
    "last",
    "length",
    "lower",
    "replace",
    "round",
    "striptags",
    "title",
    "trim",
    "truncate",
    "upper",
    "urlencode",
    "wordwrap",
)

_MONTHS = {
    "en": (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
    "es": (
        "enero",
        "febrero",
        "marzo",
        "abril",
        "mayo",
        "junio",
        "julio",
        "agosto",
        "septiembre",
        "octubre",
        "noviembre",
        "diciembre",
    ),
}
_WEEKDAYS = {
    "en": (
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ),
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
}


class OutputIsNone(TemplateRuntimeError):
    """Error raised by the finalize hook when an expression prints ``None``."""


class FilterValueError(TemplateRuntimeError):
    """A date filter got a value it cannot format (the message has no value)."""


class LibraryLoader(FileSystemLoader):
    """Load one kind of file (HTML or text) from inside the library folder.

    ``FileSystemLoader`` already rejects ``..`` in names. This loader also
    rejects symlinks that resolve outside the folder. It blanks out front
    matter so that Jinja's line numbers still match the file.
    """

    def __init__(
        self,
        folder: Path,
        suffix: str,
        transform: Callable[[str, Path], str] | None = None,
    ) -> None:
        super().__init__(str(folder), encoding="utf-8", followlinks=False)
        self.root = folder.resolve()
        self.suffix = suffix
        # Applied to every source after the front matter is blanked; the
        # HTML environment uses it to inline the stylesheet once per load.
        self.transform = transform

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        if not template.endswith(self.suffix):
            raise TemplateNotFound(template)
        source, filename, uptodate = super().get_source(environment, template)
        if not Path(filename).resolve().is_relative_to(self.root):
            raise TemplateNotFound(template)
        source = blank_front_matter(source)
        if self.transform is not None:
            source = self.transform(source, Path(filename))
        return source, filename, uptodate


def split_front_matter(source: str) -> tuple[str | None, str]:
    """Split ``source`` into its front matter (or None) and its body."""
    lines = source.splitlines(keepends=True)
    if not lines or lines[0].rstrip("\r\n") != "---":
        return None, source
    for index in range(1, len(lines)):
        if lines[index].rstrip("\r\n") == "---":
            return "".join(lines[1:index]), "".join(lines[index + 1 :])
    return "".join(lines[1:]), ""


def blank_front_matter(source: str) -> str:
    front, body = split_front_matter(source)
    if front is None:
        return source
    # One newline per removed line: the two "---" lines and the YAML.
    return "\n" * (front.count("\n") + 2) + body


def finalize_output(value: Any) -> Any:
    """Raise instead of printing ``None`` (Jinja would print "None")."""
    if value is None:
        raise OutputIsNone("an expression printed None; use a declared default")
    return value


def _language(context: Context) -> str:
    value = context.get("language")
    if not isinstance(value, str):
        return "en"
    primary = value.replace("_", "-").split("-")[0].lower()
    return primary if primary in _MONTHS else "en"


def _zone_name(context: Context) -> str:
    name = context.get("timezone")
    if isinstance(name, str):
        return name
    practice = context.get("practice")
    return practice.timezone if practice is not None else "UTC"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise FilterValueError("timezone is not a known IANA time zone") from None


def _long_date(day: date, language: str) -> str:
    month = _MONTHS[language][day.month - 1]
    weekday = _WEEKDAYS[language][day.weekday()]
    if language == "es":
        return f"{weekday}, {day.day} de {month} de {day.year}"
    return f"{weekday}, {month} {day.day}, {day.year}"


@pass_context
def format_date(context: Context, value: object) -> str:
    """Format a date (or an aware datetime, in the recipient's zone)."""
    if isinstance(value, datetime):
        _check_aware(value)
        return _cached_date(value, _zone_name(context), _language(context))
    if not isinstance(value, date):
        raise FilterValueError("format_date expects a date")
    return _long_date(value, _language(context))


@pass_context
def format_datetime(context: Context, value: object) -> str:
    """Format an aware datetime in the recipient's time zone and language.

    English uses a 12-hour clock ("9:00 AM CST"), Spanish a 24-hour one
    ("09:00 CST").
    """
    if not isinstance(value, datetime):
        raise FilterValueError("format_datetime expects a datetime")
    _check_aware(value)
    return _cached_datetime(value, _zone_name(context), _language(context))


# A message prints the same time in its HTML and text parts, so the
# formatted text is cached (keys are values, zones and languages only).
@lru_cache(maxsize=256)
def _cached_date(value: datetime, zone: str, language: str) -> str:
    return _long_date(value.astimezone(_zone(zone)).date(), language)


@lru_cache(maxsize=256)
def _cached_datetime(value: datetime, zone: str, language: str) -> str:
    local = value.astimezone(_zone(zone))
    name = local.tzname() or ""
    if language == "es":
        return f"{_long_date(local.date(), language)}, {local:%H:%M} {name}".rstrip()
    clock = f"{local:%I:%M %p}".lstrip("0")
    return f"{_long_date(local.date(), language)} at {clock} {name}".rstrip()


def _check_aware(value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        # A naive time could be UTC or local; guessing would show a wrong hour.
        raise FilterValueError("datetime has no time zone")


@dataclass(frozen=True)
class PracticeView:
    """The practice details every template may print, as attributes.

    Plain attributes keep ``practice.name`` on the sandbox's fast path
    (see ``Sandbox``). With a mapping, Jinja would try the attribute, catch
    the error and then look the key up, on every access.
    """

    name: str
    postal_address: str
    timezone: str
    website: str


_PRACTICE_FIELDS = frozenset(PracticeView.__dataclass_fields__)


class Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with a fast path for two known-safe kinds.

    Every ``practice.name`` or ``blocks.footer`` goes through
    ``is_safe_attribute``, whose generic checks (internal attributes,
    known mutable types) took a quarter of a render in a profile. For
    public attributes of the practice view and of imported template
    modules those checks always return True, so they are skipped there.
    ``getattr`` returns a practice field or a module's macro directly, and
    ``call`` calls a macro directly: for these values the generic path
    returns the same object and finds a macro safe to call. Everything
    else takes the generic path.
    """

    fast_types: tuple[type, ...] = (TemplateModule, PracticeView)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if type(obj) in self.fast_types and not attr.startswith("_"):
            return True
        return super().is_safe_attribute(obj, attr, value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        kind = type(obj)
        if kind is PracticeView and attribute in _PRACTICE_FIELDS:
            # The values are plain str, so there is no str.format method to wrap.
            return getattr(obj, attribute)
        if kind is TemplateModule and not attribute.startswith("_"):
            value = obj.__dict__.get(attribute)
            if type(value) is Macro:
                return value
        return super().getattr(obj, attribute)

    def call(
        __self,  # noqa: B902 (Jinja's signature, so no keyword can clash)
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if type(__obj) is Macro:
            # What Context.call does for a callable without pass_context.
            kwargs.pop("_block_vars", None)
            kwargs.pop("_loop_vars", None)
            try:
                return __obj(*args, **kwargs)
            except StopIteration:
                return __context.environment.undefined(
                    "value was undefined because a callable raised a"
                    " StopIteration exception"
                )
        return super().call(__context, __obj, *args, **kwargs)


def _configure(env: ImmutableSandboxedEnvironment) -> ImmutableSandboxedEnvironment:
    env.globals.clear()
    env.filters = {name: env.filters[name] for name in _BUILTIN_FILTERS}
    env.filters["format_date"] = format_date
    env.filters["format_datetime"] = format_datetime
    return env


def html_environment(
    folder: Path, transform: Callable[[str, Path], str] | None = None
) -> ImmutableSandboxedEnvironment:
    env = Sandbox(
        loader=LibraryLoader(folder, HTML_SUFFIX, transform),
        undefined=StrictUndefined,
        autoescape=True,
        finalize=finalize_output,
        auto_reload=False,
        # A plain dict: every render looks its layout and partials up by
        # name, and the bounded LRU cache costs a lock and a reorder per
        # lookup. The library folder bounds the number of templates.
        cache_size=-1,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return _configure(env)


def text_environment(folder: Path) -> ImmutableSandboxedEnvironment:
    env = Sandbox(
        loader=LibraryLoader(folder, TEXT_SUFFIX),
        undefined=StrictUndefined,
        autoescape=False,
        finalize=finalize_output,
        auto_reload=False,
        cache_size=-1,  # a plain dict, as in html_environment
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return _configure(env)


def filter_names() -> frozenset[str]:
    return frozenset(_BUILTIN_FILTERS) | {"format_date", "format_datetime"}
