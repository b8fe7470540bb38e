"""Text parts derived from HTML when a template has no text file."""

from __future__ import annotations

import pytest
from carepost.templates import RenderFailed, TemplateLibrary
from carepost.templates.plaintext import html_to_text

from .conftest import PRACTICE, WriteLibrary


def test_paragraphs_and_footnotes() -> None:
    text = html_to_text(
        "<html><head><title>t</title><style>p{}</style></head><body>"
        '<div style="display: none">preheader</div>'
        "<h1>Hi Sam,</h1><p>First   line\nstill first.</p>"
        '<p>Book <a href="https://a.example.test/x?y=1&amp;z=2">here</a> or '
        '<a href="https://b.example.test/">https://b.example.test/</a>.</p>'
        "<ul><li>one</li><li>two</li></ul>"
        '<p><a href="https://a.example.test/x?y=1&amp;z=2">again</a></p>'
        "</body></html>"
    )

    assert text == (
        "Hi Sam,\n\nFirst line still first.\n\n"
        "Book here [1] or https://b.example.test/.\n\n"
        "- one\n- two\n\nagain [1]\n\n"
        "[1] https://a.example.test/x?y=1&z=2\n"
    )


def test_hidden_and_head_skipped() -> None:
    text = html_to_text(
        '<head><title>Subject</title></head><body><div style="display:none;">'
        "<p>hidden <b>deep</b></p></div><p>shown</p></body>"
    )
    assert text == "shown\n"


def test_long_paragraph_wrapped_urls_whole() -> None:
    url = "https://links.example.test/c/" + "A" * 120
    text = html_to_text(f"<p>{'word ' * 40}{url} end</p>")

    assert url in text.splitlines()
    assert all(len(line) <= 76 for line in text.splitlines() if url not in line)


def test_label_and_number_kept_together() -> None:
    text = html_to_text(
        f'<p>{"x" * 66} <a href="https://u.example.test/u/t">Unsubscribe</a></p>'
    )
    assert "Unsubscribe [1]" in text


def test_images_use_alt_text() -> None:
    text = html_to_text(
        '<p><img src="https://a.example.test/logo.png" alt="Lakeside logo">'
        '<img src="https://links.example.test/o/t" alt=""></p>'
    )
    assert text == "Lakeside logo\n"


def test_no_visible_text_is_empty() -> None:
    assert html_to_text('<html><body><img src="x" alt=""></body></html>') == ""


def test_shipped_refill_text_derived(
    shipped: TemplateLibrary, profile: dict[str, object]
) -> None:
    content = shipped.get("refill_reminder").render(profile, profile_id="p17")

    assert content.text.startswith("Hi Sam,\n\n")
    assert "Request a refill [1]" in content.text
    assert "[1] https://www.lakeside.example.test/portal/refills\n" in content.text
    assert "[2] https://links.example.test/u/tok123\n" in content.text
    assert "Lakeside Family Clinic\n100 Main St, Springfield, IL 62701" in content.text
    assert "<" not in content.text
    assert "quick reminder" not in content.text  # the subject is in <title>


def test_empty_derived_text_fails(
    write_library: WriteLibrary, profile: dict[str, object]
) -> None:
    library = write_library('<img src="https://a.example.test/x.png" alt="">\n')
    (library.folder / "sample.txt.j2").unlink()
    library = TemplateLibrary(library.folder, PRACTICE)

    with pytest.raises(RenderFailed, match="text part is empty"):
        library.get("sample").render(profile, profile_id="p17")


def test_blank_written_text_fails(
    write_library: WriteLibrary, profile: dict[str, object]
) -> None:
    library = write_library("<p>Hi</p>\n", text="{% if false %}x{% endif %}\n\n")

    with pytest.raises(RenderFailed, match="text part is empty"):
        library.get("sample").render(profile, profile_id="p17")

