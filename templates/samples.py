"""Synthetic sample profiles (``samples.yaml``) for checks and previews.

The samples are invented people. ``carepost templates check`` renders
every template against every sample, and ``preview`` renders one. A
sample that lacks a field a template requires is not applicable to that
template, the way a profile outside a campaign's segment never meets it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from carepost.templates.errors import TemplateSpecError

SAMPLES_FILE = Path(__file__).resolve().parent / "samples.yaml"
# Per-message values a preview or check puts next to the profile fields.
PREVIEW_UNSUBSCRIBE_URL = "https://links.example.test/u/preview"
_SAMPLE_ID = re.compile(r"[a-z0-9][a-z0-9-]*\Z")


@dataclass(frozen=True)
class Sample:
    """One synthetic profile: its id, what it exercises and its fields."""

    id: str
    description: str
    profile: dict[str, Any] = field(repr=False)

    def context(self, practice_timezone: str) -> dict[str, Any]:
        """Return the render mapping the flow would build for this profile."""
        values = {key: value for key, value in self.profile.items() if value is not None}
        # The flow gives a profile without a time zone the practice's.
        values.setdefault("timezone", practice_timezone)
        values["unsubscribe_url"] = PREVIEW_UNSUBSCRIBE_URL
        values["message_id"] = f"<preview.{self.id}@carepost.localhost>"
        return values


def load_samples(path: Path = SAMPLES_FILE) -> list[Sample]:
    """Load and validate the sample file; errors name the file and sample."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateSpecError(path, None, f"cannot read samples: {exc}") from None
    items = raw.get("samples") if isinstance(raw, dict) else None
    if not isinstance(items, list) or not items:
        raise TemplateSpecError(path, None, "expected a non-empty 'samples' list")
    samples = [_sample(path, index, item) for index, item in enumerate(items)]
    ids = [sample.id for sample in samples]
    for sample_id in ids:
        if ids.count(sample_id) > 1:
            raise TemplateSpecError(path, None, f"sample id '{sample_id}' is repeated")
    return samples


def _sample(path: Path, index: int, item: object) -> Sample:
    if not isinstance(item, dict):
        raise TemplateSpecError(path, None, f"sample {index + 1} must be a mapping")
    sample_id = item.get("id")
    if not isinstance(sample_id, str) or not _SAMPLE_ID.match(sample_id):
        raise TemplateSpecError(
            path,
            None,
            f"sample {index + 1} has an invalid id",
            hint="use lower-case letters, digits and dashes",
        )
    profile = item.get("profile")
    if not isinstance(profile, dict):
        raise TemplateSpecError(path, None, f"sample '{sample_id}' needs a profile")
    return Sample(sample_id, str(item.get("description", "")), dict(profile))


def find_sample(samples: list[Sample], sample_id: str) -> Sample:
    for sample in samples:
        if sample.id == sample_id:
            return sample
    available = ", ".join(sample.id for sample in samples)
    raise TemplateSpecError(
        SAMPLES_FILE, None, f"no sample profile '{sample_id}'", hint=f"available: {available}"
    )
