"""Measure rendering and MIME building per message, on one core.

Usage: .venv/bin/python bench/render.py [--template missed_appointment]
       [--messages 5000] [--rounds 3] [--json]

Every path renders the shipped template for the synthetic sample profiles
of templates/samples.yaml in turn (values wrapped in ``PHI``, as the flow
passes them), in this one process:

- jinja: the compiled HTML and text templates only, from a ready context
  (the floor: no field checks, links, tracking or MIME);
- engine render: ``MessageTemplate.render`` with signed click and open
  tokens (field checks, language choice, link rewriting, pixel);
- render + per-message CSS: the engine render from an uninlined library,
  then css-inline on each message (the approach the once-per-load
  inlining replaced);
- render + EmailMessage: the engine render and ``build_message_email``;
- render + direct MIME: the engine render and ``build_message``, which is
  what the campaign flow sends.

Each figure is the best of ``--rounds`` rounds, in complete messages per
second of this process's CPU time (one core). Ratios compare against the
jinja floor and the EmailMessage path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import css_inline
from carepost.core.phi import PHI
from carepost.core.settings import Practice
from carepost.core.tokens import issue_token
from carepost.templates import (
    Envelope,
    TemplateLibrary,
    Tracking,
    build_message,
    build_message_email,
)
from carepost.templates.rendering import MESSAGE_KEYS, practice_view
from carepost.templates.samples import load_samples

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "templates" / "library"
PRACTICE = Practice(
    name="Prairie Family Health",
    postal_address="1200 O Street, Lincoln, NE 68508",
    timezone="America/Chicago",
    website="https://www.prairie-health.example.test",
)
KEYS = {"k1": b"bench-key-0123456789abcdef0123456789"}
BASE_URL = "https://links.prairie-health.example.test"


def contexts(template_name: str, library: TemplateLibrary) -> list[dict[str, Any]]:
    template = library.get(template_name)
    required = set(template.fields) - set(template.spec.defaults)
    found = []
    for sample in load_samples():
        context = sample.context(PRACTICE.timezone)
        if all(context.get(name) is not None for name in required):
            found.append(context)
    return found


def envelope(index: int, unsubscribe_url: str) -> Envelope:
    return Envelope(
        from_address="care@prairie-health.example.test",
        from_name="Prairie Family Health",
        to_address=f"patient-{index}@example.test",
        message_id=f"<bench.{index}@prairie-health.example.test>",
        unsubscribe_url=unsubscribe_url,
        unsubscribe_post=True,
        date=datetime(2024, 2, 15, 15, 0, tzinfo=UTC),
    )


def tracking(index: int) -> Tracking:
    return Tracking(BASE_URL, partial(issue_token, KEYS, index))


def measure(step: Callable[[int], object], messages: int, rounds: int) -> float:
    """Return the best messages-per-second of ``rounds`` runs of ``step``."""
    for index in range(min(200, messages)):
        step(index)  # warm caches and the allocator
    best = 0.0
    for _ in range(rounds):
        # Process CPU time: other load on a shared machine slows the wall
        # clock but is not this process's cost per message.
        start = time.process_time()
        for index in range(messages):
            step(index)
        best = max(best, messages / (time.process_time() - start))
    return best


def paths(name: str) -> dict[str, Callable[[int], object]]:
    library = TemplateLibrary(LIBRARY, PRACTICE)
    uninlined = TemplateLibrary(LIBRARY, PRACTICE, inline_css=False)
    template = library.get(name)
    plain_template = uninlined.get(name)
    samples = contexts(name, library)
    wrapped = [
        {key: value if key in MESSAGE_KEYS else PHI(value) for key, value in sample.items()}
        for sample in samples
    ]
    css = f"<style>{library.stylesheet.css}</style></head>"
    version = template.choose("en")
    jinja_context = {**samples[0], "practice": practice_view(PRACTICE),
                     "subject": "s", "preheader": "p", "message_language": "en"}

    def context(index: int) -> dict[str, Any]:
        # As in the flow: profile values wrapped in PHI, and one unsubscribe
        # token per message, shared by List-Unsubscribe and the footer link.
        mapping: dict[str, Any] = dict(wrapped[index % len(wrapped)])
        mapping["unsubscribe_url"] = f"{BASE_URL}/u/{issue_token(KEYS, index, 'u')}"
        return mapping

    def render_content(index: int) -> tuple[Any, Envelope]:
        mapping = context(index)
        content = template.render(mapping, profile_id="p", tracking=tracking(index))
        return content, envelope(index, mapping["unsubscribe_url"])

    def jinja(index: int) -> object:
        html = version.html.render(jinja_context)
        return html, version.text.render(jinja_context) if version.text else ""

    def render(index: int) -> object:
        return template.render(context(index), profile_id="p", tracking=tracking(index))

    def per_message_css(index: int) -> object:
        content = plain_template.render(
            context(index), profile_id="p", tracking=tracking(index)
        )
        return css_inline.inline(content.html.replace("</head>", css))

    def email_message(index: int) -> bytes:
        return build_message_email(*render_content(index))

    def direct(index: int) -> bytes:
        return build_message(*render_content(index))

    return {
        "jinja": jinja,
        "engine render": render,
        "render + per-message CSS": per_message_css,
        "render + EmailMessage": email_message,
        "render + direct MIME": direct,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", default="missed_appointment")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)

    results = {
        label: measure(step, args.messages, args.rounds)
        for label, step in paths(args.template).items()
    }
    sample = paths(args.template)["render + direct MIME"](0)
    report = {
        "template": args.template,
        "messages": args.messages,
        "rounds": args.rounds,
        "message_bytes": len(sample),  # type: ignore[arg-type]
        "python": platform.python_version(),
        # Other processes slow this one through shared caches and memory
        # bandwidth even in CPU time, so the load is part of the record.
        "load_average_1min": round(os.getloadavg()[0], 2),
        "messages_per_second": {label: round(rate) for label, rate in results.items()},
        "direct_vs_email_message": round(
            results["render + direct MIME"] / results["render + EmailMessage"], 2
        ),
        "direct_vs_jinja": round(results["render + direct MIME"] / results["jinja"], 2),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.template}: {args.messages} messages x {args.rounds} rounds, "
          f"{report['message_bytes']} bytes each, Python {report['python']}, "
          f"load average {report['load_average_1min']}")
    for label, rate in results.items():
        print(f"  {label:<26} {rate:>9,.0f} messages/s  {1e6 / rate:>7.1f} us/message")
    print(f"  direct MIME path vs EmailMessage path: {report['direct_vs_email_message']}x")
    print(f"  direct MIME path vs plain jinja:       {report['direct_vs_jinja']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
