"""Fixtures for the attack tests: a template folder and a real ledger."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from carepost.core.settings import Practice
from carepost.templates import TemplateLibrary

MESSAGE = {"unsubscribe_url": "https://links.example.test/u/tok",
           "message_id": "<m1@carepost.localhost>"}
WriteTemplate = Callable[[str], TemplateLibrary]


@pytest.fixture
def practice() -> Practice:
    return Practice(name="Lakeside Family Clinic",
                    postal_address="100 Main St, Springfield, IL 62701")


@pytest.fixture
def write_template(tmp_path: Path, practice: Practice) -> WriteTemplate:
    """Write a template ``probe`` whose HTML body is ``body`` and load it."""

    def write(body: str, subject: str = "Hello from {{ practice.name }}"
              ) -> TemplateLibrary:
        folder = tmp_path / "library"
        folder.mkdir(exist_ok=True)
        head = textwrap.dedent(f"""\
            ---
            subject: "{subject}"
            preheader: A short note.
            purpose: care
            fields: [first_name]
            ---
            """)
        (folder / "probe.html.j2").write_text(head + body, encoding="utf-8")
        (folder / "probe.txt.j2").write_text("{{ practice.name }}\n", encoding="utf-8")
        return TemplateLibrary(folder, practice)

    return write
