"""Load-time checks: sandbox escapes, subject rules and front matter."""

from __future__ import annotations

from pathlib import Path

import pytest
from carepost.core.settings import Practice
from carepost.templates import RenderFailed, TemplateLibrary, TemplateSpecError
from .conftest import WriteLibrary

MESSAGE = {"unsubscribe_url": "https://u.example.test/x", "message_id": "<a@b>"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "{{ cycler.__init__.__globals__.os.environ }}\n",
            "'__globals__' is not allowed",
        ),
        (
            "{{ ''.__class__.__mro__[1].__subclasses__() }}\n",
            "'__\\w+__' is not allowed",
        ),
        ("{{ first_name['__class__'] }}\n", "'__class__'"),
        ("{{ first_name | attr('__class__') }}\n", "filter 'attr'"),
        ("{{ first_name | safe }}\n", "filter 'safe'"),
        ("{{ cycler }}\n", "'cycler' is not a declared field"),
        ("{{ range(10) | list }}\n", "filter 'list'"),
    ],
)
def test_escape_rejected_at_load(
    write_library: WriteLibrary, body: str, expected: str
) -> None:
    with pytest.raises(TemplateSpecError, match=expected) as caught:
        write_library(body)
    assert caught.value.path.name == "sample.html.j2"
    assert caught.value.line == 7


def test_sandbox_error_becomes_render_failed(write_library: WriteLibrary) -> None:
    library = write_library("{% set xs = [1] %}{{ xs.append(2) }}\n")
    with pytest.raises(RenderFailed, match="SecurityError"):
        library.get("sample").render({"first_name": "Sam", **MESSAGE}, profile_id="p1")


def test_no_globals(write_library: WriteLibrary) -> None:
    library = write_library(
        "{% if lipsum is defined %}x{% endif %}\n",
        fields="[lipsum]",
        defaults="lipsum: null",
    )
    # lipsum is a Jinja default global; declared as a field it is only ever
    # the profile's value, never Jinja's function.
    content = library.get("sample").render(MESSAGE, profile_id="p1")
    assert "x" not in content.html


@pytest.mark.parametrize(
    "subject",
    [
        "{{ first_name }}, your diabetes class",
        "Your A1C results are in",
        "Tu clase de diabetes, {{ first_name }}",
        "Managing blood pressure together",
    ],
)
def test_subject_rejects_condition_words(
    write_library: WriteLibrary, subject: str
) -> None:
    with pytest.raises(TemplateSpecError, match="names a health condition") as caught:
        write_library("x\n", subject=subject)
    assert caught.value.line == 2


def test_subject_rejects_other_fields(write_library: WriteLibrary) -> None:
    with pytest.raises(TemplateSpecError, match="'subject' may not use 'last_name'"):
        write_library(
            "x\n", subject="Hi {{ last_name }}", fields="[first_name, last_name]"
        )


def test_fallback_needs_declared_default(write_library: WriteLibrary) -> None:
    with pytest.raises(TemplateSpecError, match="declare it under 'defaults'"):
        write_library('Hi {{ first_name | default("there") }}\n')


@pytest.mark.parametrize(
    ("front", "expected", "line"),
    [
        (
            "---\nsubject: x\npurpose: care\nfields: []\n---\n",
            "missing key 'preheader'",
            2,
        ),
        (
            "---\nsubject: x\npreheader: y\npurpose: sales\nfields: []\n---\n",
            "invalid purpose",
            4,
        ),
        (
            "---\nsubject: x\npreheader: y\npurpose: care\nfields: []\n"
            "colour: red\n---\n",
            "unknown key 'colour'",
            6,
        ),
        (
            "---\nsubject: x\npreheader: y\npurpose: care\nfields: [Name]\n---\n",
            "invalid field name",
            5,
        ),
        (
            "---\nsubject: x\npreheader: y\npurpose: care\nfields: [practice]\n---\n",
            "provided by the engine",
            5,
        ),
        ("---\nsubject: [x\n---\n", "not valid YAML", 3),
        ("<p>no front matter</p>\n", "missing front matter", 1),
    ],
)
def test_front_matter_errors(
    tmp_path: Path, practice: Practice, front: str, expected: str, line: int
) -> None:
    (tmp_path / "bad.html.j2").write_text(front + "x\n", "utf-8")
    (tmp_path / "bad.txt.j2").write_text("x\n", "utf-8")
    with pytest.raises(TemplateSpecError, match=expected) as caught:
        TemplateLibrary(tmp_path, practice)
    assert caught.value.line == line
    assert caught.value.path.name == "bad.html.j2"


def test_syntax_error_names_line(write_library: WriteLibrary) -> None:
    with pytest.raises(TemplateSpecError, match="syntax error") as caught:
        write_library("<p>\n{% if first_name %}\n</p>\n")
    assert caught.value.line is not None


def test_text_part_front_matter_rejected(tmp_path: Path, practice: Practice) -> None:
    (tmp_path / "solo.html.j2").write_text(
        "---\nsubject: x\npreheader: y\npurpose: care\nfields: []\n---\nx\n", "utf-8"
    )
    (tmp_path / "solo.txt.j2").write_text("---\nsubject: z\n---\nx\n", "utf-8")
    with pytest.raises(TemplateSpecError, match="front matter belongs"):
        TemplateLibrary(tmp_path, practice)


def test_loader_stays_in_folder(write_library: WriteLibrary) -> None:
    with pytest.raises(TemplateSpecError):
        write_library('{% include "../secret.html.j2" %}\n')


def test_symlink_outside_folder_rejected(
    tmp_path: Path, write_library: WriteLibrary
) -> None:
    outside = tmp_path / "outside.html.j2"
    outside.write_text("secret\n", "utf-8")
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "link.html.j2").symlink_to(outside)
    with pytest.raises(TemplateSpecError):
        write_library('{% include "link.html.j2" %}\n')


def test_unknown_template_name(shipped: TemplateLibrary) -> None:
    with pytest.raises(TemplateSpecError, match="no template named 'nope'"):
        shipped.get("nope")


def test_fast_path_keeps_private_attributes_out() -> None:
    from carepost.templates.environment import html_environment
    from carepost.templates.rendering import practice_view
    from jinja2 import Undefined

    from .conftest import PRACTICE, SHIPPED

    env = html_environment(SHIPPED)
    view = practice_view(PRACTICE)
    module = env.get_template("partials/blocks.html.j2").module

    assert env.getattr(view, "name") == "Lakeside Family Clinic"
    for target in (view, module):
        for name in ("__class__", "__init__", "__dict__", "_body_stream"):
            assert isinstance(env.getattr(target, name), Undefined)

    assert env.getattr(module, "footer") is module.footer
    assert isinstance(env.getattr(module, "no_such_macro"), Undefined)
    assert isinstance(env.getattr(view, "no_such_field"), Undefined)


MACRO_SOURCES = {
    "macros.html": (
        '{% macro card(title, body="none") -%}'
        "[{{ title }}|{{ body }}|{{ varargs | join(',') }}|{{ varargs | length }}]"
        "{%- endmacro %}"
        "{% macro wrap(label) -%}<{{ label }}:{{ caller() }}>{%- endmacro %}"
        "{% set constant = 'c' %}"
    ),
    "page.html": (
        '{% import "macros.html" as blocks %}'
        '{% macro local(x) %}({{ x }}){% endmacro %}'
        '{{ blocks.card("a") }} {{ blocks.card("b", body="<i>") }} '
        '{{ blocks.card("c", "d", "e", "f") }} {{ local(name) }} '
        '{% call blocks.wrap("w") %}inner {{ name }}{% endcall %} '
        "{{ blocks.constant }} {{ practice.name }} {{ practice.website }}"
    ),
}


def test_fast_paths_match_generic_sandbox() -> None:
    from carepost.templates.environment import Sandbox
    from carepost.templates.rendering import practice_view
    from jinja2 import DictLoader, StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from .conftest import PRACTICE

    context = {"name": "Zoë <b>", "practice": practice_view(PRACTICE)}
    outputs = []
    for kind in (Sandbox, ImmutableSandboxedEnvironment):
        env = kind(
            loader=DictLoader(MACRO_SOURCES),
            autoescape=True,
            undefined=StrictUndefined,
            cache_size=-1,
        )
        outputs.append(env.get_template("page.html").render(context))

    assert outputs[0] == outputs[1]
    assert "[b|&lt;i&gt;||0]" in outputs[0]
    assert "[c|d|e,f|2]" in outputs[0]
    assert "<w:inner Zoë &lt;b&gt;>" in outputs[0]


def test_unsafe_call_still_rejected() -> None:
    from carepost.templates.environment import Sandbox
    from jinja2 import DictLoader, StrictUndefined
    from jinja2.exceptions import SecurityError

    env = Sandbox(
        loader=DictLoader({"t": "{% set xs = [1] %}{{ xs.append(2) }}{{ xs.pop() }}"}),
        undefined=StrictUndefined,
    )
    with pytest.raises(SecurityError):
        env.get_template("t").render()
