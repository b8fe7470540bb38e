"""CSS inlined once into the sources equals css-inline run on every message."""

from __future__ import annotations

import textwrap
from html.parser import HTMLParser
from pathlib import Path

import css_inline
import pytest
from carepost.templates import TemplateLibrary, TemplateSpecError
from carepost.templates.samples import load_samples
from carepost.templates.tooling import _applicable

from .conftest import PRACTICE, SHIPPED, front_matter

SAMPLES = load_samples()


class _Elements(HTMLParser):
    """Collect (tag, attributes, text) of every element, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.items: list[tuple[str, ...]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        style = values.pop("style", None) or ""
        declarations = tuple(
            " ".join(part.split()) for part in style.split(";") if part.strip()
        )
        self.items.append((tag, repr(sorted(values.items())), *declarations))

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.items.append(("#text", " ".join(data.split())))


def elements(page: str) -> list[tuple[str, ...]]:
    parser = _Elements()
    parser.feed(page)
    parser.close()
    return parser.items


@pytest.fixture(scope="module")
def uninlined() -> TemplateLibrary:
    return TemplateLibrary(SHIPPED, PRACTICE, inline_css=False)


def per_message(library: TemplateLibrary, page: str) -> str:
    """Inline the way the engine did before: css-inline on the whole message."""
    styled = page.replace("</head>", f"<style>{library.stylesheet.css}</style></head>")
    return css_inline.inline(styled)


CASES = [
    (name, sample)
    for name in ("checkup_reminder", "diabetes_education", "missed_appointment",
                 "refill_reminder")
    for sample in SAMPLES
]


@pytest.mark.parametrize(("name", "sample"), CASES, ids=[f"{n}-{s.id}" for n, s in CASES])
def test_same_styles_as_per_message(
    shipped: TemplateLibrary, uninlined: TemplateLibrary, name: str, sample: object
) -> None:
    template = shipped.get(name)
    if not _applicable(template, sample):  # type: ignore[arg-type]
        pytest.skip("sample lacks a required field of this template")
    context = sample.context(PRACTICE.timezone)  # type: ignore[attr-defined]
    once = template.render(context, profile_id="p1").html
    plain = uninlined.get(name).render(context, profile_id="p1").html

    assert "<style" not in once
    assert 'style="' in once
    assert elements(once) == elements(per_message(uninlined, plain))


def test_stylesheet_part_of_version(tmp_path: Path, shipped: TemplateLibrary) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(SHIPPED, copy)
    css = copy / "layouts" / "styles.css"
    css.write_text(css.read_text() + "\n.unused { color: red; }\n", "utf-8")
    changed = TemplateLibrary(copy, PRACTICE)

    for name in shipped.names():
        assert changed.get(name).version != shipped.get(name).version


def write(folder: Path, css: str, body: str) -> None:
    (folder / "layouts").mkdir(parents=True, exist_ok=True)
    (folder / "layouts" / "styles.css").write_text(textwrap.dedent(css), "utf-8")
    (folder / "sample.html.j2").write_text(front_matter() + textwrap.dedent(body), "utf-8")
    (folder / "sample.txt.j2").write_text("x\n", "utf-8")


@pytest.mark.parametrize(
    ("css", "line", "problem"),
    [
        ("p { color: red; }\n.footer p { margin: 0; }\n", 2, "'.footer p' depends"),
        ("p { color: red; }\n\n@media (max-width: 600px) { p { margin: 0; } }\n", 3,
         "at-rules"),
        ("a:hover { color: red; }\n", 1, "'a:hover' depends"),
        ("p > a { color: red; }\n", 1, "'p > a' depends"),
        ("p { color: red; }\n}\n", 1, "invalid CSS rule"),
    ],
)
def test_structural_css_rejected(
    tmp_path: Path, css: str, line: int, problem: str
) -> None:
    write(tmp_path, css, "<p>x</p>\n")
    with pytest.raises(TemplateSpecError, match=problem) as caught:
        TemplateLibrary(tmp_path, PRACTICE)
    assert caught.value.path.name == "styles.css"
    assert caught.value.line == line


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("<p>a</p>\n<style>p { color: red; }</style>\n", "put styles in"),
        ('<p>a</p>\n<p {% if first_name %}title="x"{% endif %}>b</p>\n',
         "Jinja statements"),
        ('<p>a</p>\n<div class="{{ first_name }}">b</div>\n', "class attribute"),
        ('<p>a</p>\n<p style="color: {{ first_name }}">b</p>\n', "style must be literal"),
    ],
)
def test_dynamic_styled_tags_rejected(tmp_path: Path, body: str, problem: str) -> None:
    write(tmp_path, "p { margin: 0; }\n.card { padding: 4px; }\n", body)
    with pytest.raises(TemplateSpecError, match=problem) as caught:
        TemplateLibrary(tmp_path, PRACTICE)
    assert caught.value.line == 8  # the second line after 6 lines of front matter


def test_jinja_between_table_rows_kept(tmp_path: Path) -> None:
    write(
        tmp_path,
        "td { padding: 2px; }\n.row { color: #111111; }\n",
        """\
        <table>
        {% for n in [1, 2] %}
        <tr class="row"><td>{{ n }}</td></tr>
        {% endfor %}
        </table>
        """,
    )
    content = TemplateLibrary(tmp_path, PRACTICE).get("sample").render(
        {"unsubscribe_url": "https://u.example.test/x", "message_id": "<a@b>",
         "first_name": "Sam"},
        profile_id="p1",
    )
    row = '<tr class="row" style="color: #111111;"><td style="padding: 2px;">'
    assert content.html.count(row) == 2
    assert content.html.index("1</td>") < content.html.index("2</td>")


def test_existing_style_merged(tmp_path: Path) -> None:
    write(tmp_path, "p { margin: 0; color: red; }\n", '<p style="color: blue">x</p>\n')
    content = TemplateLibrary(tmp_path, PRACTICE).get("sample").render(
        {"unsubscribe_url": "https://u.example.test/x", "message_id": "<a@b>",
         "first_name": "Sam"},
        profile_id="p1",
    )
    assert '<p style="margin: 0;color: blue">x</p>' in content.html
