"""Transfer encoding of the direct MIME builder: 7bit or base64 per part."""

from __future__ import annotations

import re
from dataclasses import replace
from functools import partial
from html import unescape

import pytest
from carepost.core.phi import PHI
from carepost.core.settings import Practice
from carepost.core.tokens import issue_token, verify_token
from carepost.templates import TemplateLibrary, Tracking, build_message
from carepost.templates.samples import load_samples
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import WriteLibrary
from .test_template_mime import CONTENT, ENVELOPE
from .test_template_wire import (
    assert_same_message,
    assert_wire_clean,
    body,
    parse,
    transfer_encodings,
)

KEYS = {"k1": b"0123456789abcdef0123456789abcdef"}
BASE = "https://links.example.test"
HREF = re.compile(r'href="([^"]*)"')
SAMPLES = load_samples()
SHIPPED_NAMES = (
    "checkup_reminder",
    "diabetes_education",
    "missed_appointment",
    "refill_reminder",
)


def expected_body(text: str) -> str:
    """Return what a part decodes to: LF line ends and a final newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


def tracking(delivery_id: int) -> Tracking:
    return Tracking(BASE, partial(issue_token, KEYS, delivery_id))


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Hi Sam,\nsee you on Tuesday.\n", "7bit"),
        ("Hola María, su cita es el miércoles.\nCancelar la suscripción\n", "base64"),
        ("Hi Zoë Ångström-Nguyễn 中村 😀\n", "base64"),
        ("x" * 998 + "\n", "7bit"),
        ("x" * 999 + "\n", "base64"),
        ("short\n" + "y" * 5000, "base64"),
        ("a\x00b\n", "base64"),
        ("one\rtwo\r\nthree", "7bit"),
        (".\nFrom here\n..\n", "7bit"),
        ("trailing blanks  \t\n= sign =3D\n", "7bit"),
        ("", "7bit"),
    ],
    ids=[
        "ascii",
        "spanish",
        "non-ascii-name",
        "line-998",
        "line-999",
        "line-5000",
        "nul",
        "bare-cr",
        "dots-and-from",
        "blanks-and-equals",
        "empty",
    ],
)
def test_part_encoding(text: str, encoding: str) -> None:
    content = replace(CONTENT, text=text, html=text)
    raw = build_message(content, ENVELOPE)
    message = parse(raw)

    assert_wire_clean(raw)
    assert transfer_encodings(raw) == [encoding, encoding]
    assert message.defects == []
    assert all(part.defects == [] for part in message.walk())
    assert body(message, "plain") == expected_body(text)
    assert body(message, "html") == expected_body(text)
    assert_same_message(content)


def test_mixed_parts_encoded_separately() -> None:
    content = replace(CONTENT, text="Hi Sam\n", html="<p>Hola José</p>\n")
    raw = build_message(content, ENVELOPE)

    assert_wire_clean(raw)
    assert transfer_encodings(raw) == ["7bit", "base64"]
    assert body(parse(raw), "html") == "<p>Hola José</p>\n"


def test_boundary_in_body_forces_base64() -> None:
    boundary = parse(build_message(CONTENT, ENVELOPE)).get_boundary()
    assert boundary is not None
    text = f"before\n--{boundary}\nContent-Type: text/plain\n\nafter\n--{boundary}--\n"
    content = replace(CONTENT, text=text)
    raw = build_message(content, ENVELOPE)
    message = parse(raw)

    assert_wire_clean(raw)
    assert transfer_encodings(raw) == ["base64", "7bit"]
    assert len(list(message.iter_parts())) == 2
    assert body(message, "plain") == text
    assert_same_message(content)


# ASCII lines around the 998-octet limit, with the characters that
# quoted-printable would have escaped (=, tab, trailing blanks, CR, NUL).
ASCII_LINE = st.one_of(
    st.text(alphabet=st.sampled_from(list("ab =.\t-\r\x00<>&")), max_size=90),
    st.integers(min_value=990, max_value=1010).map(lambda length: "y" * length),
)
ASCII_BODY = st.lists(ASCII_LINE, max_size=6).map("\n".join)


@settings(max_examples=150, deadline=None)
@given(text=ASCII_BODY, html=ASCII_BODY)
def test_ascii_bodies_round_trip(text: str, html: str) -> None:
    content = replace(CONTENT, text=text, html=html)
    raw = build_message(content, ENVELOPE)
    message = parse(raw)

    assert_wire_clean(raw)
    assert message.defects == []
    assert all(part.defects == [] for part in message.walk())
    assert body(message, "plain") == expected_body(text)
    assert body(message, "html") == expected_body(html)
    assert_same_message(content)


@pytest.mark.parametrize("name", SHIPPED_NAMES)
@pytest.mark.parametrize("sample", SAMPLES, ids=[sample.id for sample in SAMPLES])
def test_shipped_samples_round_trip(
    shipped: TemplateLibrary, name: str, sample: object
) -> None:
    template = shipped.get(name)
    context = sample.context("America/Chicago")  # type: ignore[attr-defined]
    required = set(template.fields) - set(template.spec.defaults)
    if any(context.get(field) is None for field in required):
        pytest.skip("the sample lacks a required field of this template")
    content = template.render(context, profile_id="p17", tracking=tracking(5))
    raw = build_message(content, ENVELOPE)
    message = parse(raw)

    assert_wire_clean(raw)
    assert message.defects == []
    assert all(part.defects == [] for part in message.walk())
    assert body(message, "plain") == expected_body(content.text)
    assert body(message, "html") == expected_body(content.html)
    assert transfer_encodings(raw) == [
        "7bit" if content.text.isascii() else "base64",
        "7bit" if content.html.isascii() else "base64",
    ]
    assert_same_message(content)


def test_spanish_non_ascii_name_round_trip(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    profile["language"] = "es"
    profile["first_name"] = PHI("Zoë Ibáñez-Nguyễn")
    content = shipped.get("missed_appointment").render(
        profile, profile_id="p17", tracking=tracking(9)
    )
    raw = build_message(content, ENVELOPE)
    message = parse(raw)

    assert_wire_clean(raw)
    assert transfer_encodings(raw) == ["base64", "base64"]
    assert "Zoë Ibáñez-Nguyễn" in body(message, "html")
    assert "Cancelar la suscripción" in body(message, "html")
    assert body(message, "plain") == expected_body(content.text)
    assert_same_message(content)


LINKS = 40


def link_heavy_html(separator: str) -> str:
    links = separator.join(
        f'<a href="{{{{ practice.website }}}}/page/{index}?a=1&amp;b=2">Page {index}</a>'
        for index in range(LINKS)
    )
    return "<html><body>\n<p>Hi {{ first_name }},</p>\n<p>" + links + "</p>\n</body></html>\n"


@pytest.mark.parametrize(
    ("separator", "encoding"), [("\n", "7bit"), (" ", "base64")], ids=["lines", "one-line"]
)
def test_link_heavy_template(
    write_library: WriteLibrary,
    practice: Practice,
    profile: dict[str, object],
    separator: str,
    encoding: str,
) -> None:
    library = write_library(link_heavy_html(separator))
    content = library.get("sample").render(profile, profile_id="p17", tracking=tracking(77))
    raw = build_message(content, ENVELOPE)
    message = parse(raw)
    html = body(message, "html")

    assert_wire_clean(raw)
    assert transfer_encodings(raw)[1] == encoding
    assert html == expected_body(content.html)
    tokens = [unescape(href).rsplit("/", 1)[1] for href in HREF.findall(html)]
    claims = [verify_token(KEYS, token) for token in tokens]
    assert [claim.tag for claim in claims] == [f"c{index}" for index in range(LINKS)]
    assert [claim.url for claim in claims] == [
        f"{practice.website}/page/{index}?a=1&b=2" for index in range(LINKS)
    ]
    assert_same_message(content)
