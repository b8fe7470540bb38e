"""Link rewriting: click URLs, untracked links, the open pixel, the flow wiring."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import replace
from functools import partial
from html import unescape
from types import SimpleNamespace
from typing import Any

import pytest
from carepost.core.phi import PHI
from carepost.core.states import Purpose
from carepost.core.tokens import issue_token, verify_token
from carepost.flows import delivery
from carepost.templates import TemplateLibrary, Tracking, build_message
from carepost.templates.links import LinkRewriter

from .conftest import WriteLibrary
from .test_template_mime import ENVELOPE

KEYS = {"k1": b"0123456789abcdef0123456789abcdef"}
BASE = "https://links.example.test"
UNSUBSCRIBE = "https://links.example.test/u/tok123"
HREF = re.compile(r'href="([^"]*)"')
CLICK = re.compile(r"https://links\.example\.test/c/([A-Za-z0-9_-]+)")


def tracking(delivery_id: int = 42) -> Tracking:
    return Tracking(BASE, partial(issue_token, KEYS, delivery_id))


def claims(url: str) -> Any:
    match = CLICK.fullmatch(url)
    assert match is not None, url
    return verify_token(KEYS, match[1])


def test_every_link_tracked(shipped: TemplateLibrary, profile: dict[str, object]) -> None:
    content = shipped.get("missed_appointment").render(
        profile, profile_id="p17", tracking=tracking()
    )
    hrefs = [unescape(href) for href in HREF.findall(content.html)]
    tracked = [href for href in hrefs if href != UNSUBSCRIBE]

    assert UNSUBSCRIBE in hrefs
    assert len(tracked) == 2
    destinations = [claims(href) for href in tracked]
    assert [claim.url for claim in destinations] == [
        "https://www.lakeside.example.test/appointments/reschedule",
        "https://www.lakeside.example.test/portal",
    ]
    assert [claim.tag for claim in destinations] == ["c0", "c1"]
    assert {claim.delivery_id for claim in destinations} == {42}
    assert "www.lakeside.example.test/appointments" not in content.html


def test_text_part_uses_same_numbers(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    content = shipped.get("missed_appointment").render(
        profile, profile_id="p17", tracking=tracking()
    )
    text_urls = CLICK.findall(content.text)

    assert [verify_token(KEYS, token).tag for token in text_urls] == ["c0", "c1"]
    assert f"Unsubscribe: {UNSUBSCRIBE}\n" in content.text
    assert "www.lakeside.example.test" not in content.text


def test_open_pixel_before_body_end(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    content = shipped.get("checkup_reminder").render(
        profile, profile_id="p17", tracking=tracking(7)
    )
    pixel = re.search(r'<img src="https://links\.example\.test/o/([^"]+)"[^>]*>', content.html)

    assert pixel is not None
    assert content.html.index(pixel[0]) < content.html.index("</body>")
    opened = verify_token(KEYS, pixel[1])
    assert (opened.delivery_id, opened.tag, opened.url) == (7, "o", None)
    assert 'width="1"' in pixel[0]
    assert 'alt=""' in pixel[0]


def test_untracked_marker(write_library: WriteLibrary, profile: dict[str, object]) -> None:
    library = write_library(
        '<a data-untracked href="https://a.example.test/x?y=1&amp;z=2">a</a>\n'
        "<a href='https://b.example.test/'>b</a>\n"
        '<a href="mailto:desk@example.test">mail</a>\n'
        '<a href="{{ unsubscribe_url }}">u</a>\n',
        text="https://a.example.test/x?y=1&z=2 and https://b.example.test/.\n",
    )
    content = library.get("sample").render(profile, profile_id="p17", tracking=tracking())

    assert "data-untracked" not in content.html
    assert 'href="https://a.example.test/x?y=1&amp;z=2"' in content.html
    assert 'href="mailto:desk@example.test"' in content.html
    assert f'href="{UNSUBSCRIBE}"' in content.html
    assert content.html.count("/c/") == 1
    assert content.text.startswith("https://a.example.test/x?y=1&z=2 and https://links.")
    assert content.text.endswith(".\n")
    assert claims(CLICK.search(content.text)[0]).url == "https://b.example.test/"


def test_preview_keeps_links_and_strips_marker() -> None:
    rewriter = LinkRewriter(None, UNSUBSCRIBE)
    page = rewriter.rewrite_html(
        '<body><a href="https://a.example.test/" data-untracked="yes">a</a></body>'
    )

    assert page == '<body><a href="https://a.example.test/">a</a></body>'
    assert rewriter.rewrite_text("see https://a.example.test/") == "see https://a.example.test/"


@pytest.mark.parametrize(("language", "encoding"), [("en", "7bit"), ("es", "base64")])
def test_tracked_links_survive_encoding(
    shipped: TemplateLibrary, profile: dict[str, object], language: str, encoding: str
) -> None:
    profile["language"] = language
    content = shipped.get("diabetes_education").render(
        profile, profile_id="p17", tracking=tracking(123456789)
    )
    raw = build_message(replace(content, purpose=Purpose.MARKETING), ENVELOPE)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    html_part = message.get_body(("html",))
    assert html_part is not None
    assert html_part["Content-Transfer-Encoding"] == encoding
    decoded = html_part.get_content()

    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    hrefs = [unescape(href) for href in HREF.findall(decoded) if href != UNSUBSCRIBE]
    assert hrefs
    for href in hrefs:
        assert claims(href).url == "https://www.lakeside.example.test/classes/healthy-living"


def test_flow_render_tracks_links(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    from carepost.core.settings import FileSource, Practice, SenderIdentity, Settings

    settings = Settings(
        practice=Practice(name="Lakeside", postal_address="100 Main St"),
        sender=SenderIdentity(address="care@lakeside.example.test", name="Lakeside"),
        source=FileSource(profiles="p.csv", events="e.parquet"),
        tracking={"base_url": BASE},
    )
    run = SimpleNamespace(
        settings=settings, template=shipped.get("missed_appointment"), token_keys=KEYS
    )
    recipient = SimpleNamespace(
        profile_id="p17",
        address=PHI("sam@example.org"),
        context={key: value for key, value in profile.items() if "_url" not in key},
    )
    raw = delivery._render(run, recipient, 99, "<m1@lakeside.example.test>")  # type: ignore[arg-type]
    message = email.message_from_bytes(raw, policy=email.policy.default)
    html_part = message.get_body(("html",))
    assert html_part is not None
    hrefs = [unescape(href) for href in HREF.findall(html_part.get_content())]

    unsubscribe = message["List-Unsubscribe"].strip("<>")
    assert unsubscribe in hrefs
    assert verify_token(KEYS, unsubscribe.rsplit("/", 1)[1]).tag == "u"
    clicks = [claims(href) for href in hrefs if href != unsubscribe]
    assert {claim.delivery_id for claim in clicks} == {99}
    assert "/o/" in html_part.get_content()


def test_repeated_tags_rewritten_each_message() -> None:
    page = (
        '<body><a data-untracked href="https://a.example.test/">a</a>\n'
        '<a class="b" href="https://b.example.test/?x=1&amp;y=2" id="b">b</a>\n'
        '<a href="https://links.example.test/u/{}">u</a></body>'
    )
    for delivery_id in (1, 2, 3):
        unsubscribe = f"https://links.example.test/u/{delivery_id}"
        rewriter = LinkRewriter(tracking(delivery_id), unsubscribe)
        html = rewriter.rewrite_html(page.format(delivery_id))
        hrefs = [unescape(href) for href in HREF.findall(html)]

        assert "data-untracked" not in html
        assert hrefs[0] == "https://a.example.test/"
        assert hrefs[2] == unsubscribe
        click = claims(hrefs[1])
        assert (click.delivery_id, click.tag) == (delivery_id, "c0")
        assert click.url == "https://b.example.test/?x=1&y=2"
        assert '<a class="b" href="https://links.example.test/c/' in html
        assert '" id="b">b</a>' in html
        assert rewriter.rewrite_text("https://a.example.test/") == "https://a.example.test/"


@pytest.mark.parametrize(
    ("page", "cut"),
    [
        ("<html><body>x</body></html>", "<html><body>x"),
        ("<body>x</BODY >\n</html>", "<body>x"),
        ("<body>a</body>b</body  ><!-- </bodyx> -->", "<body>a</body>b"),
        ("<p>no body end</p>", "<p>no body end</p>"),
    ],
)
def test_pixel_before_last_body_end(page: str, cut: str) -> None:
    html = LinkRewriter(tracking(), UNSUBSCRIBE).rewrite_html(page)

    pixel = re.search(r"<img [^>]*>\n?", html)

    assert pixel is not None
    assert html.startswith(cut + '<img src="https://links.example.test/o/')
    assert html.count("<img") == 1
    assert html.replace(pixel[0], "") == page
