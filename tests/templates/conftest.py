"""Fixtures for the template tests: a practice, sample profiles, and a
helper that writes a small template library into a temporary folder."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from carepost.core.phi import PHI
from carepost.core.settings import Practice
from carepost.templates import TemplateLibrary

SHIPPED = Path(__file__).resolve().parents[2] / "templates" / "library"
WriteLibrary = Callable[..., TemplateLibrary]


PRACTICE = Practice(
    name="Lakeside Family Clinic",
    postal_address="100 Main St, Springfield, IL 62701",
    timezone="America/Chicago",
    website="https://www.lakeside.example.test",
)


@pytest.fixture
def practice() -> Practice:
    return PRACTICE


@pytest.fixture(scope="session")
def shipped() -> TemplateLibrary:
    """The shipped library, loaded once: loading parses about 40 files."""
    return TemplateLibrary(SHIPPED, PRACTICE)


@pytest.fixture
def profile() -> dict[str, object]:
    """A winter profile in Chicago, with PHI values wrapped as the flow does."""
    return {
        "first_name": PHI("Sam"),
        "last_name": PHI("Rivera"),
        "timezone": "America/Chicago",
        "language": "en",
        "age": PHI(47),
        "last_checkup_date": PHI(date(2024, 3, 4)),
        "missed_appointment_at": PHI(datetime(2025, 1, 14, 15, 0, tzinfo=timezone.utc)),
        "unsubscribe_url": "https://links.example.test/u/tok123",
        "message_id": "<run7.p17@carepost.localhost>",
    }


def front_matter(
    subject: str = "Hello from {{ practice.name }}",
    fields: str = "[first_name]",
    defaults: str = "",
    purpose: str = "care",
) -> str:
    lines = [
        "---",
        f"subject: {subject!r}" if "'" not in subject else f'subject: "{subject}"',
        "preheader: A short note.",
        f"purpose: {purpose}",
        f"fields: {fields}",
    ]
    if defaults:
        lines.append("defaults:")
        lines.extend(f"  {line}" for line in defaults.splitlines())
    lines.append("---")
    return "\n".join(lines) + "\n"


@pytest.fixture
def write_library(tmp_path: Path, practice: Practice) -> WriteLibrary:
    """Write one template pair ``sample`` and load the folder."""

    def write(
        html: str, text: str = "{{ practice.name }}\n", **front: str
    ) -> TemplateLibrary:
        folder = tmp_path / "library"
        folder.mkdir(exist_ok=True)
        head = front_matter(**front)
        (folder / "sample.html.j2").write_text(head + textwrap.dedent(html), "utf-8")
        (folder / "sample.txt.j2").write_text(textwrap.dedent(text), "utf-8")
        return TemplateLibrary(folder, practice)

    return write
