"""Language versions: choice by the profile's language, fallback, load checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from carepost.templates import TemplateLibrary, TemplateSpecError

from .conftest import PRACTICE, front_matter

MESSAGE = {"unsubscribe_url": "https://u.example.test/x", "message_id": "<a@b>"}


def base(extra: str = "", fields: str = "[first_name, language]") -> str:
    defaults = "first_name: there" + ("\nlanguage: null" if "language" in fields else "")
    head = front_matter(fields=fields, defaults=defaults)
    return head.replace("---\n", "---\n" + extra, 1) if extra else head


def version(extra: str = "") -> str:
    return f"---\nsubject: Hola\npreheader: Una nota.\n{extra}---\n"


def write(folder: Path, name: str, head: str, body: str) -> None:
    (folder / name).write_text(head + body, "utf-8")


@pytest.mark.parametrize(
    ("language", "chosen"),
    [
        ("es", "es"),
        ("es-MX", "es"),
        ("ES_us", "es"),
        ("en", "en"),
        ("en-GB", "en"),
        ("fr", "en"),
        ("", "en"),
        (None, "en"),
        (float("nan"), "en"),
    ],
)
def test_version_chosen(
    shipped: TemplateLibrary, profile: dict[str, object], language: object, chosen: str
) -> None:
    profile["language"] = language
    content = shipped.get("missed_appointment").render(profile, profile_id="p17")

    assert content.language == chosen
    assert f'<html lang="{chosen}">' in content.html
    if chosen == "es":
        assert content.subject == "Busquemos una nueva hora para su visita"
        assert "Hola, Sam:" in content.text
        assert "Cancelar la suscripción: https://links.example.test/u/tok123" in content.text
        assert "martes, 14 de enero de 2025, 09:00 CST" in content.html
    else:
        assert content.subject == "Sam, let us find a new time for your visit"
        assert "Unsubscribe: https://links.example.test/u/tok123" in content.text


@pytest.mark.parametrize(
    "name", ["checkup_reminder", "diabetes_education", "missed_appointment",
             "refill_reminder"],
)
def test_spanish_versions_shipped(
    shipped: TemplateLibrary, profile: dict[str, object], name: str
) -> None:
    profile["language"] = "es"
    profile["first_name"] = None
    content = shipped.get(name).render(profile, profile_id="p17")

    assert shipped.get(name).languages == ("en", "es")
    assert content.language == "es"
    assert "Hola:" in content.html
    assert "Hola:" in content.text
    assert "Hi " not in content.text
    assert "Recibe este correo como paciente" in content.text


def test_fallback_language_declared(tmp_path: Path) -> None:
    write(tmp_path, "sample.html.j2", base("fallback_language: es\n"), "<p>en</p>\n")
    write(tmp_path, "sample.es.html.j2", version(), "<p>es</p>\n")
    template = TemplateLibrary(tmp_path, PRACTICE).get("sample")

    assert template.render({**MESSAGE, "language": "de"}, profile_id="p1").language == "es"
    assert template.render({**MESSAGE, "language": "en"}, profile_id="p1").language == "en"


def test_version_text_derived_when_absent(tmp_path: Path) -> None:
    write(tmp_path, "sample.html.j2", base(), "<p>English</p>\n")
    (tmp_path / "sample.txt.j2").write_text("Written English\n", "utf-8")
    write(tmp_path, "sample.es.html.j2", version(), "<p>Español</p>\n")
    template = TemplateLibrary(tmp_path, PRACTICE).get("sample")

    assert template.render({**MESSAGE, "language": "en"}, profile_id="p1").text == (
        "Written English\n"
    )
    assert template.render({**MESSAGE, "language": "es"}, profile_id="p1").text == (
        "Español\n"
    )


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"sample.html.j2": (base(), "x\n"),
          "sample.es.html.j2": (version("fields: [first_name]\n"), "x\n")},
         "'fields' cannot be set in a language version"),
        ({"sample.html.j2": (base(), "x\n"),
          "sample.es.html.j2": (version("purpose: marketing\n"), "x\n")},
         "'purpose' cannot be set"),
        ({"sample.html.j2": (base("fallback_language: de\n"), "x\n"),
          "sample.es.html.j2": (version(), "x\n")},
         "fallback language 'de' has no version"),
        ({"sample.html.j2": (base(fields="[first_name]"), "x\n"),
          "sample.es.html.j2": (version(), "x\n")},
         "does not declare 'language'"),
        ({"sample.es.html.j2": (version(), "x\n")}, "language version without"),
        ({"sample.html.j2": (base(), "x\n"),
          "sample.spanish.html.j2": (version(), "x\n")}, "invalid language"),
        ({"sample.html.j2": (base(), "x\n"), "sample.es.html.j2": ("", "x\n")},
         "missing front matter"),
        ({"sample.html.j2": (base(), "x\n"),
          "sample.es.html.j2": (version("defaults:\n  last_name: x\n"), "x\n")},
         "not in fields"),
        ({"sample.html.j2": (base("language: EN\n"), "x\n")},
         "lower-case language code"),
        ({"sample.html.j2": (base(), "x\n"),
          "sample.es.html.j2": (
              '---\nsubject: "Su diabetes"\npreheader: p\n---\n', "x\n")},
         "names a health condition"),
    ],
)
def test_version_errors(tmp_path: Path, files: dict[str, tuple[str, str]], problem: str) -> None:
    for name, (head, body) in files.items():
        write(tmp_path, name, head, body)
    with pytest.raises(TemplateSpecError, match=problem):
        TemplateLibrary(tmp_path, PRACTICE)


def test_sender_name_per_version(tmp_path: Path) -> None:
    write(tmp_path, "sample.html.j2", base("sender_name: Lakeside Care Team\n"), "x\n")
    write(tmp_path, "sample.es.html.j2", version("sender_name: Equipo Lakeside\n"), "x\n")
    template = TemplateLibrary(tmp_path, PRACTICE).get("sample")

    assert template.render({**MESSAGE, "language": "en"}, profile_id="p1").sender_name == (
        "Lakeside Care Team"
    )
    assert template.render({**MESSAGE, "language": "es"}, profile_id="p1").sender_name == (
        "Equipo Lakeside"
    )

