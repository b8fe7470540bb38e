"""MIME building: structure, headers, line length and header injection."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from datetime import datetime, timezone
from email.message import EmailMessage

import carepost.templates
import pytest
from carepost.core.phi import PHI
from carepost.core.states import Purpose
from carepost.templates import (
    Envelope,
    HeaderInjectionError,
    RenderedContent,
    TemplateLibrary,
    build_message,
)
from .conftest import WriteLibrary

ENVELOPE = Envelope(
    from_address="news@lakeside.example.test",
    from_name="Lakeside Family Clinic",
    to_address="sam@example.org",
    message_id="<run7.p17@carepost.localhost>",
    unsubscribe_url="https://links.example.test/u/tok123",
    unsubscribe_post=True,
    date=datetime(2025, 1, 14, 16, 0, tzinfo=timezone.utc),
)
CONTENT = RenderedContent(
    subject="Sam, hello",
    preheader="p",
    html="<p>Hi</p>",
    text="Hi\n",
    purpose=Purpose.MARKETING,
)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def wire_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n")


def decoded(part: EmailMessage | None) -> str:
    """Return a part's text with wire CRLF line ends turned back into LF."""
    assert part is not None
    return part.get_content().replace("\r\n", "\n")


@pytest.mark.parametrize(
    "name", ["diabetes_education", "checkup_reminder", "missed_appointment"]
)
def test_shipped_message_parses(
    shipped: TemplateLibrary, profile: dict[str, object], name: str
) -> None:
    template = shipped.get(name)
    content = template.render(profile, profile_id="p17")
    envelope = replace(ENVELOPE, unsubscribe_post=template.purpose is Purpose.MARKETING)
    message = parse(build_message(content, envelope))

    assert message.defects == []
    assert message.get_content_type() == "multipart/alternative"
    assert message["Subject"] == content.subject
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None
    assert decoded(plain) == content.text
    assert decoded(html).rstrip("\n") == content.html.rstrip("\n")
    assert all(part.defects == [] for part in message.walk())


def test_headers(shipped: TemplateLibrary, profile: dict[str, object]) -> None:
    content = shipped.get("diabetes_education").render(profile, profile_id="p17")
    raw = build_message(content, ENVELOPE)
    message = parse(raw)

    assert message["From"] == "Lakeside Family Clinic <news@lakeside.example.test>"
    assert message["To"] == "sam@example.org"
    assert message["Message-ID"] == "<run7.p17@carepost.localhost>"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"] == "Tue, 14 Jan 2025 16:00:00 +0000"
    assert message["List-Unsubscribe"] == "<https://links.example.test/u/tok123>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert len(message.get_all("To") or []) == 1
    assert b"\r\nCc:" not in raw
    assert b"\r\nBcc:" not in raw


def test_parts_are_utf8() -> None:
    spanish = replace(CONTENT, text="Cancelar la suscripción\n")
    for content in (CONTENT, spanish):
        message = parse(build_message(content, ENVELOPE))
        for part in message.iter_parts():
            assert part.get_content_charset() == "utf-8"
            assert part["Content-Transfer-Encoding"] in ("7bit", "base64")


def test_non_ascii_display_name_encoded() -> None:
    envelope = replace(ENVELOPE, from_name="Clínica del Lago")
    raw = build_message(CONTENT, envelope)

    assert b"=?utf-8?" in raw.split(b"\r\n\r\n")[0]
    assert raw.split(b"\r\n\r\n")[0].isascii()
    assert parse(raw)["From"].addresses[0].display_name == "Clínica del Lago"


def test_long_html_line_wrapped() -> None:
    links = "".join(
        f'<a href="https://links.example.test/c/{i:04d}?u=tok&amp;v=abcdefghij">l{i}</a>'
        for i in range(60)
    )
    html = "<table><tr><td>" + links + "</td></tr></table>"
    html = html + "x" * (5000 - len(html))
    assert len(html) == 5000
    assert "\n" not in html
    raw = build_message(replace(CONTENT, html=html), ENVELOPE)

    # One 5,000-character line is too long for 7bit, so the part is base64.
    assert max(len(line) for line in wire_lines(raw)) <= 78
    html_part = parse(raw).get_body(("html",))
    assert html_part is not None
    assert html_part["Content-Transfer-Encoding"] == "base64"
    body = decoded(html_part)
    assert body.rstrip("\n") == html
    for i in range(60):
        assert (
            f'href="https://links.example.test/c/{i:04d}?u=tok&amp;v=abcdefghij"'
            in body
        )


def test_long_unsubscribe_url_not_encoded() -> None:
    url = "https://links.example.test/u/" + "a" * 300
    raw = build_message(CONTENT, replace(ENVELOPE, unsubscribe_url=url))

    assert f"List-Unsubscribe: <{url}>".encode() in raw
    assert max(len(line) for line in wire_lines(raw)) <= 998


def test_subject_injection_via_first_name(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    profile["first_name"] = PHI("Sam\r\nBcc: all@example.org")
    with pytest.raises(HeaderInjectionError) as caught:
        shipped.get("checkup_reminder").render(profile, profile_id="p17")
    assert caught.value.header == "Subject"
    assert "all@example.org" not in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value", "header"),
    [
        ("from_name", "Clinic\r\nBcc: x@example.org", "From display name"),
        ("from_address", "news@example.test\n", "From"),
        ("to_address", "sam@example.org\r\nRCPT TO:<x@example.org>", "To"),
        ("to_address", "sam@example.org\x00", "To"),
        ("message_id", "<a@b>\u2028X: y", "Message-ID"),
        ("unsubscribe_url", "https://u.example.test/\rX", "List-Unsubscribe"),
    ],
)
def test_envelope_injection_rejected(field: str, value: str, header: str) -> None:
    with pytest.raises(HeaderInjectionError) as caught:
        build_message(CONTENT, replace(ENVELOPE, **{field: value}))
    assert caught.value.header == header


def test_subject_control_character_rejected() -> None:
    with pytest.raises(HeaderInjectionError, match="Subject"):
        build_message(replace(CONTENT, subject="Hi\x1b[31m"), ENVELOPE)


@pytest.mark.parametrize(
    "to_address", ["sam@example.org, eve@example.org", "sam", "@example.org", "a@b@c"]
)
def test_to_must_be_one_address(to_address: str) -> None:
    with pytest.raises(HeaderInjectionError, match="To") as caught:
        build_message(CONTENT, replace(ENVELOPE, to_address=to_address))
    assert "eve@example.org" not in str(caught.value)


def test_marketing_needs_one_click() -> None:
    with pytest.raises(ValueError, match="one-click"):
        build_message(CONTENT, replace(ENVELOPE, unsubscribe_post=False))


def test_care_without_one_click_header() -> None:
    content = replace(CONTENT, purpose=Purpose.CARE)
    message = parse(build_message(content, replace(ENVELOPE, unsubscribe_post=False)))
    assert message["List-Unsubscribe-Post"] is None
    assert message["List-Unsubscribe"] == "<https://links.example.test/u/tok123>"


def test_http_unsubscribe_rejected() -> None:
    with pytest.raises(HeaderInjectionError, match="https"):
        build_message(
            CONTENT, replace(ENVELOPE, unsubscribe_url="http://u.example.test/")
        )


def test_naive_date_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_message(CONTENT, replace(ENVELOPE, date=datetime(2025, 1, 14, 16, 0)))


def test_envelope_repr_hides_addresses() -> None:
    assert "sam@example.org" not in repr(ENVELOPE)


def test_public_api() -> None:
    assert sorted(carepost.templates.__all__) == [
        "Envelope",
        "HeaderInjectionError",
        "MessageTemplate",
        "RenderFailed",
        "RenderedContent",
        "TemplateLibrary",
        "TemplateSpecError",
        "Tracking",
        "build_message",
        "build_message_email",
    ]
    for name in carepost.templates.__all__:
        assert hasattr(carepost.templates, name)


def test_template_without_fields(write_library: WriteLibrary) -> None:
    library = write_library("<p>{{ practice.name }}</p>\n", fields="[]")
    raw = build_message(
        replace(
            library.get("sample").render(
                {"unsubscribe_url": "https://u.example.test/x", "message_id": "<a@b>"},
                profile_id="p1",
            ),
            purpose=Purpose.CARE,
        ),
        ENVELOPE,
    )
    assert parse(raw).defects == []
