"""The direct MIME builder against EmailMessage and the standard parser."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import replace
from datetime import datetime, timezone
from email.utils import format_datetime
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import pytest
from carepost.core.states import Purpose
from carepost.templates import (
    HeaderInjectionError,
    RenderedContent,
    TemplateLibrary,
    build_message,
    build_message_email,
)
from carepost.templates.wire import encode_subject
from hypothesis import given, settings
from hypothesis import strategies as st

from .test_template_mime import CONTENT, ENVELOPE

COMPARED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Content-Language",
    "MIME-Version",
)
# Text that exercises quoted-printable: "=", trailing blanks, tabs,
# non-ASCII, lone dots and long lines.
BODY_TEXT = st.text(
    alphabet=st.sampled_from(list("ab =.\t\n<>&\"'é中😀\u00a0-")), max_size=400
)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None, f"no text/{subtype} part"
    return part.get_content().replace("\r\n", "\n")


def split_parts(raw: bytes) -> list[tuple[list[bytes], list[bytes]]]:
    """Split the wire bytes into (header lines, body lines) per part."""
    head = raw.partition(b"\r\n\r\n")[0]
    match = re.search(rb'boundary="([^"]+)"', head)
    assert match is not None, "no boundary parameter"
    delimiter = b"\r\n--" + match[1]
    sections = raw.split(delimiter)
    assert sections[-1] == b"--\r\n", "missing close delimiter"
    parts = []
    for section in sections[1:-1]:
        assert section.startswith(b"\r\n")
        part_head, _, part_body = section[2:].partition(b"\r\n\r\n")
        parts.append((part_head.split(b"\r\n"), part_body.split(b"\r\n")))
    return parts


def transfer_encodings(raw: bytes) -> list[str]:
    encodings = []
    for head, _ in split_parts(raw):
        values = [
            line.split(b":", 1)[1].strip().decode()
            for line in head
            if line.lower().startswith(b"content-transfer-encoding:")
        ]
        assert len(values) == 1, head
        encodings.append(values[0])
    return encodings


def assert_wire_clean(raw: bytes) -> None:
    """Check CRLF line ends and the line limits of headers and each part."""
    assert raw.isascii()
    assert raw.endswith(b"\r\n")
    assert b"\r\n" in raw
    assert re.search(rb"[^\r]\n", raw) is None, "bare LF on the wire"
    assert re.search(rb"\r[^\n]", raw) is None, "bare CR on the wire"
    for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        limit = 998 if line.startswith(b"List-Unsubscribe:") else 78
        assert len(line) <= limit, line[:80]
    for (head, lines), encoding in zip(split_parts(raw), transfer_encodings(raw)):
        assert all(len(line) <= 78 for line in head), head
        assert encoding in ("7bit", "base64"), encoding
        # RFC 2045: base64 lines of at most 76 characters; RFC 5322: any
        # line at most 998 octets.
        limit = 76 if encoding == "base64" else 998
        for line in lines:
            assert len(line) <= limit, line[:80]
            assert b"\0" not in line


def assert_same_message(content: RenderedContent) -> None:
    direct = parse(build_message(content, ENVELOPE))
    reference = parse(build_message_email(content, ENVELOPE))

    assert direct.defects == []
    assert all(part.defects == [] for part in direct.walk())
    for header in COMPARED_HEADERS:
        assert direct[header] == reference[header], header
    assert direct.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in direct.iter_parts()] == [
        "text/plain",
        "text/html",
    ]
    assert body(direct, "plain") == body(reference, "plain")
    assert body(direct, "html") == body(reference, "html")


@pytest.mark.parametrize(
    "name",
    ["diabetes_education", "checkup_reminder", "missed_appointment", "refill_reminder"],
)
def test_shipped_equivalent(
    shipped: TemplateLibrary, profile: dict[str, object], name: str
) -> None:
    template = shipped.get(name)
    content = template.render(profile, profile_id="p17")
    content = replace(content, purpose=Purpose.MARKETING)
    raw = build_message(content, ENVELOPE)

    assert_wire_clean(raw)
    assert_same_message(content)
    message = parse(raw)
    assert message["Subject"] == content.subject
    assert body(message, "plain") == content.text
    assert body(message, "html").rstrip("\n") == content.html.rstrip("\n")


def test_spanish_content_language(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    profile["language"] = "es"
    content = shipped.get("missed_appointment").render(profile, profile_id="p17")
    message = parse(build_message(replace(content, purpose=Purpose.CARE), ENVELOPE))

    assert message["Content-Language"] == "es"
    assert body(message, "plain") == content.text


@settings(max_examples=150, deadline=None)
@given(text=BODY_TEXT, html=BODY_TEXT)
def test_bodies_round_trip(text: str, html: str) -> None:
    content = replace(CONTENT, text=text, html=html)
    raw = build_message(content, ENVELOPE)
    message = parse(raw)

    assert_wire_clean(raw)
    assert message.defects == []
    assert all(part.defects == [] for part in message.walk())
    expected_text = text.replace("\r\n", "\n")
    expected_text += "" if expected_text.endswith("\n") else "\n"
    assert body(message, "plain") == expected_text
    assert body(message, "html").rstrip("\n") == html.rstrip("\n")
    assert_same_message(content)


@settings(max_examples=150, deadline=None)
@given(
    subject=st.text(
        alphabet=st.sampled_from(list("Sam, ñé中😀=?_-abc ")), min_size=1, max_size=160
    ).filter(lambda value: value.strip() == value and value)
)
def test_subject_round_trip(subject: str) -> None:
    raw = build_message(replace(CONTENT, subject=subject), ENVELOPE)

    assert_wire_clean(raw)
    assert parse(raw)["Subject"] == subject


@pytest.mark.parametrize(
    "subject",
    [
        "Sam, hello",
        "María, su cita es el miércoles",
        "x" * 200,
        "=?utf-8?q?not_a_word?=",
        "Zoë " * 30,
    ],
)
def test_subject_header(subject: str) -> None:
    encoded = encode_subject(subject)
    raw = build_message(replace(CONTENT, subject=subject), ENVELOPE)

    assert encoded.isascii()
    assert parse(raw)["Subject"] == subject
    if not subject.isascii() or len(subject) > 69 or "=?" in subject:
        assert encoded.startswith(b"=?utf-8?b?")
    else:
        assert encoded == subject.encode()


def test_long_line_links_survive() -> None:
    links = "".join(
        f'<a href="https://links.example.test/c/{i:03d}AbC-_x?v=1&amp;w=2">l{i}</a>'
        for i in range(80)
    )
    html = "<table><tr><td>" + links + "</td></tr></table>"
    assert len(html) > 5000
    raw = build_message(replace(CONTENT, html=html), ENVELOPE)

    assert_wire_clean(raw)
    decoded = body(parse(raw), "html")
    assert decoded.rstrip("\n") == html
    for i in range(80):
        assert f'href="https://links.example.test/c/{i:03d}AbC-_x?v=1&amp;w=2"' in decoded


def test_boundary_absent_from_bodies() -> None:
    raw = build_message(CONTENT, ENVELOPE)
    boundary = parse(raw).get_boundary()

    assert boundary is not None
    assert boundary.startswith("=_")
    # The Content-Type parameter, two delimiters and the close delimiter.
    assert raw.count(boundary.encode()) == 4


def test_same_delivery_same_bytes() -> None:
    assert build_message(CONTENT, ENVELOPE) == build_message(CONTENT, ENVELOPE)


def test_care_message_has_no_post_header() -> None:
    content = replace(CONTENT, purpose=Purpose.CARE)
    raw = build_message(content, replace(ENVELOPE, unsubscribe_post=False))

    assert b"List-Unsubscribe-Post" not in raw
    assert parse(raw)["List-Unsubscribe"] == "<https://links.example.test/u/tok123>"


@pytest.mark.parametrize(
    "to_address",
    [
        "sam@example.org, eve@example.org",
        "sam",
        "@example.org",
        "a@b@c",
        "sam@example.org\r\nBcc: eve@example.org",
        '"sam x"@example.org',
        "sám@example.org",
        "sam@-example.org",
    ],
)
def test_bad_recipient_rejected(to_address: str) -> None:
    with pytest.raises(HeaderInjectionError, match="To") as caught:
        build_message(CONTENT, replace(ENVELOPE, to_address=to_address))
    assert "example.org" not in str(caught.value)


def test_bad_language_rejected() -> None:
    with pytest.raises(HeaderInjectionError, match="Content-Language"):
        build_message(replace(CONTENT, language="es\r\nBcc: x"), ENVELOPE)


def test_non_ascii_sender_name() -> None:
    raw = build_message(CONTENT, replace(ENVELOPE, from_name="Clínica del Lago"))
    message = parse(raw)

    assert_wire_clean(raw)
    assert message["From"].addresses[0].display_name == "Clínica del Lago"
    assert message["From"].addresses[0].addr_spec == "news@lakeside.example.test"


@pytest.mark.parametrize(
    "date",
    [
        datetime(2025, 1, 14, 16, 0, 0, 999999, tzinfo=timezone.utc),
        datetime(2025, 7, 4, 9, 30, 15, 1, tzinfo=ZoneInfo("America/Chicago")),
        datetime(2024, 2, 29, 23, 59, 59, tzinfo=ZoneInfo("Asia/Kolkata")),
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=timezone.utc),
    ],
)
def test_date_header_matches_email_utils(date: datetime) -> None:
    raw = build_message(CONTENT, replace(ENVELOPE, date=date))

    assert f"\r\nDate: {format_datetime(date)}\r\n".encode() in raw
