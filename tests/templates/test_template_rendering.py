"""Rendering: shipped templates, missing values, escaping, dates."""

from __future__ import annotations

import email
import email.policy
import math
import shutil
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError
from carepost.core.phi import PHI
from carepost.core.settings import Practice
from carepost.core.states import Purpose
from carepost.templates import (
    HeaderInjectionError,
    RenderFailed,
    TemplateLibrary,
    TemplateSpecError,
)
from carepost.templates.rendering import is_missing
from .conftest import SHIPPED, WriteLibrary

SUBJECTS = {
    "diabetes_education": "Sam, a free class to help you stay well",
    "checkup_reminder": "Sam, it is time for your yearly checkup",
    "missed_appointment": "Sam, let us find a new time for your visit",
    "refill_reminder": "Sam, a quick reminder from Lakeside Family Clinic",
}


def test_shipped_names(shipped: TemplateLibrary) -> None:
    assert shipped.names() == tuple(sorted(SUBJECTS))


@pytest.mark.parametrize("name", sorted(SUBJECTS))
def test_shipped_template_renders(
    shipped: TemplateLibrary, profile: dict[str, object], name: str
) -> None:
    content = shipped.get(name).render(profile, profile_id="p17")

    assert content.subject == SUBJECTS[name]
    assert "Hi Sam," in content.text
    assert "Hi Sam," in content.html
    assert "Lakeside Family Clinic" in content.text
    assert "100 Main St, Springfield, IL 62701" in content.html
    assert 'href="https://links.example.test/u/tok123"' in content.html
    assert "<style" not in content.html
    assert 'style="' in content.html


def test_shipped_purposes(shipped: TemplateLibrary) -> None:
    assert shipped.get("diabetes_education").purpose is Purpose.MARKETING
    assert shipped.get("checkup_reminder").purpose is Purpose.CARE
    assert shipped.get("missed_appointment").purpose is Purpose.CARE


def test_version_is_short_hash(shipped: TemplateLibrary) -> None:
    versions = {shipped.get(name).version for name in shipped.names()}
    assert len(versions) == len(SUBJECTS)
    assert all(len(version) == 12 for version in versions)


def test_version_follows_layout(
    tmp_path: Path, practice: Practice, shipped: TemplateLibrary
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(SHIPPED, copy)
    layout = copy / "layouts" / "base.html.j2"
    layout.write_text(layout.read_text() + "\n", "utf-8")
    changed = TemplateLibrary(copy, practice)

    for name in shipped.names():
        assert changed.get(name).version != shipped.get(name).version


def test_checkup_without_last_date(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    profile["last_checkup_date"] = None
    content = shipped.get("checkup_reminder").render(profile, profile_id="p17")

    assert "no wellness visit on file" in content.text
    assert "None" not in content.text
    assert "Monday, March 4, 2024" not in content.html


def test_checkup_shows_last_date(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    content = shipped.get("checkup_reminder").render(profile, profile_id="p17")
    assert "Monday, March 4, 2024" in content.text


def test_missing_required_field_fails(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    profile["missed_appointment_at"] = None
    with pytest.raises(RenderFailed) as caught:
        shipped.get("missed_appointment").render(profile, profile_id="p17")

    error = caught.value
    assert error.field == "missed_appointment_at"
    assert error.profile_id == "p17"
    assert error.template == "missed_appointment"
    assert "missed_appointment_at" in str(error)


def test_undefined_in_template_fails(write_library: WriteLibrary) -> None:
    library = write_library(
        "Your {{ last_checkup_date }} visit.\n",
        fields="[last_checkup_date]",
        defaults="last_checkup_date: null",
    )
    with pytest.raises(RenderFailed) as caught:
        library.get("sample").render(
            {"unsubscribe_url": "https://u.example.test/x", "message_id": "<a@b>"},
            profile_id="p1",
        )
    assert caught.value.field == "last_checkup_date"


@pytest.mark.parametrize(
    "value", [None, float("nan"), pd.NA, pd.NaT, "", "   ", PHI(None), PHI(math.nan)]
)
def test_missing_values_use_default(write_library: WriteLibrary, value: object) -> None:
    library = write_library(
        'Hi {{ first_name | default("there") }},\n',
        text='Hi {{ first_name | default("there") }},\n',
        defaults="first_name: null",
    )
    content = library.get("sample").render(
        {
            "first_name": value,
            "unsubscribe_url": "https://u.example.test/x",
            "message_id": "<a@b>",
        },
        profile_id="p1",
    )
    assert content.text.strip() == "Hi there,"
    assert "Hi there," in content.html


@pytest.mark.parametrize("value", [None, float("nan"), pd.NA, ""])
def test_missing_values_use_declared_default(
    shipped: TemplateLibrary, profile: dict[str, object], value: object
) -> None:
    profile["first_name"] = value
    content = shipped.get("checkup_reminder").render(profile, profile_id="p17")

    assert "Hi there," in content.text
    assert content.subject.startswith("there,")
    assert "nan" not in content.text
    assert "None" not in content.text


@pytest.mark.parametrize("value", [None, float("nan"), pd.NA, pd.NaT, ""])
def test_missing_required_value_fails(
    write_library: WriteLibrary, value: object
) -> None:
    library = write_library("Hi {{ first_name }},\n")
    with pytest.raises(RenderFailed) as caught:
        library.get("sample").render(
            {
                "first_name": value,
                "unsubscribe_url": "https://u.example.test/x",
                "message_id": "<a@b>",
            },
            profile_id="p1",
        )
    assert caught.value.field == "first_name"


def test_is_missing_keeps_real_values() -> None:
    assert not is_missing(0)
    assert not is_missing(0.0)
    assert not is_missing(False)
    assert not is_missing("x")
    assert not is_missing(date(2024, 1, 1))


def test_printing_none_fails(write_library: WriteLibrary) -> None:
    library = write_library(
        "{{ first_name | default(none) }}\n", defaults="first_name: null"
    )
    with pytest.raises(RenderFailed, match="printed None"):
        library.get("sample").render(
            {"unsubscribe_url": "https://u.example.test/x", "message_id": "<a@b>"},
            profile_id="p1",
        )


def test_failure_message_has_no_value(write_library: WriteLibrary) -> None:
    # Jinja's own message would quote the key: "has no attribute '<value>'".
    library = write_library("{{ practice[first_name] }}\n")
    marker = "Zebulon-Marker"
    with pytest.raises(RenderFailed) as caught:
        library.get("sample").render(
            {
                "first_name": PHI(marker),
                "unsubscribe_url": "https://u.example.test/x",
                "message_id": "<a@b>",
            },
            profile_id="p1",
        )
    assert marker not in str(caught.value)
    assert marker not in repr(caught.value)


def test_html_escapes_profile_markup(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    link = '<a href="https://evil.example.test/login">Confirm your insurance</a>'
    profile["first_name"] = PHI(link)
    content = shipped.get("checkup_reminder").render(profile, profile_id="p17")

    assert "&lt;a href=" in content.html
    assert 'evil.example.test/login">Confirm' not in content.html
    assert link in content.text


def test_undeclared_field_rejected_at_load(write_library: WriteLibrary) -> None:
    with pytest.raises(TemplateSpecError, match="'last_name' is not a declared field"):
        write_library("{{ first_name }}{% if last_name is defined %}LEAK{% endif %}\n")


def test_undeclared_field_dropped_at_render(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    # The load check already rejects templates that name an undeclared
    # field; this checks the second net, the context the renderer builds.
    template = shipped.get("diabetes_education")
    context = template._context(template.spec, profile, "p17")

    assert "last_name" not in context
    assert "age" not in context
    assert set(context) == {
        "practice",
        "unsubscribe_url",
        "message_id",
        "first_name",
        "language",
    }


def test_spanish_month_names(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    profile["language"] = "es-MX"
    checkup = shipped.get("checkup_reminder").render(profile, profile_id="p17")
    missed = shipped.get("missed_appointment").render(profile, profile_id="p17")

    assert "lunes, 4 de marzo de 2024" in checkup.text
    assert "martes, 14 de enero de 2025, 09:00 CST" in missed.text
    assert "March" not in checkup.text


def test_missed_time_in_recipient_zone(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    content = shipped.get("missed_appointment").render(profile, profile_id="p17")

    assert "Tuesday, January 14, 2025 at 9:00 AM CST" in content.text
    assert "3:00 PM" not in content.text
    assert "15:00" not in content.text


def test_missed_time_other_zone(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    profile["timezone"] = "America/Los_Angeles"
    profile["missed_appointment_at"] = PHI(
        datetime(2025, 7, 1, 15, 0, tzinfo=timezone.utc)
    )
    content = shipped.get("missed_appointment").render(profile, profile_id="p17")
    assert "Tuesday, July 1, 2025 at 8:00 AM PDT" in content.text


def test_naive_datetime_fails(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    profile["missed_appointment_at"] = datetime(2025, 1, 14, 15, 0)
    with pytest.raises(RenderFailed, match="no time zone"):
        shipped.get("missed_appointment").render(profile, profile_id="p17")


def test_missing_unsubscribe_url_fails(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    del profile["unsubscribe_url"]
    with pytest.raises(RenderFailed) as caught:
        shipped.get("diabetes_education").render(profile, profile_id="p17")
    assert caught.value.field == "unsubscribe_url"


def test_rendered_content_repr_masks(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    content = shipped.get("checkup_reminder").render(profile, profile_id="p17")
    assert "Sam" not in repr(content)


def test_parses_back_without_defects(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    # Kept here as a smoke check; the MIME tests cover the details.
    from carepost.templates import Envelope, build_message

    content = shipped.get("diabetes_education").render(profile, profile_id="p17")
    envelope = Envelope(
        from_address="news@lakeside.example.test",
        from_name="Lakeside Family Clinic",
        to_address="sam@example.org",
        message_id="<run7.p17@carepost.localhost>",
        unsubscribe_url="https://links.example.test/u/tok123",
        unsubscribe_post=True,
        date=datetime(2025, 1, 14, 16, 0, tzinfo=timezone.utc),
    )
    parsed = email.message_from_bytes(
        build_message(content, envelope), policy=email.policy.default
    )
    assert parsed.defects == []
    assert parsed["Subject"] == SUBJECTS["diabetes_education"]


def test_fixed_headlines_rendered_at_load(
    write_library: WriteLibrary, profile: dict[str, object]
) -> None:
    template = write_library("<p>Hi {{ first_name }}</p>\n").get("sample")
    version = template.choose(None)
    content = template.render(profile, profile_id="p17")

    assert version.fixed_subject == "Hello from Lakeside Family Clinic"
    assert version.fixed_preheader == "A short note."
    assert content.subject == "Hello from Lakeside Family Clinic"
    assert content.preheader == "A short note."


def test_personal_subject_rendered_per_message(
    write_library: WriteLibrary, profile: dict[str, object]
) -> None:
    library = write_library("<p>Hi</p>\n", subject="{{ first_name }}, hello")
    template = library.get("sample")
    profile["first_name"] = PHI("Zoë")

    assert template.choose(None).fixed_subject is None
    assert template.render(profile, profile_id="p17").subject == "Zoë, hello"


def test_fixed_subject_injection_still_fails(
    write_library: WriteLibrary, profile: dict[str, object]
) -> None:
    folder = write_library("<p>Hi</p>\n").folder
    name = "Clinic\r\nBcc: x@example.org"
    with pytest.raises(ValidationError):
        Practice(name=name, postal_address="1 Main St")
    # The configuration rejects it, and rendering still stops it if a
    # practice is ever built without that check.
    practice = Practice.model_construct(name=name, postal_address="1 Main St")
    template = TemplateLibrary(folder, practice).get("sample")

    assert template.choose(None).fixed_subject is None
    with pytest.raises(HeaderInjectionError) as caught:
        template.render(profile, profile_id="p17")
    assert caught.value.header == "Subject"
