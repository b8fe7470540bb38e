"""Campaign specs: ``campaigns/<name>.yaml``, one file per campaign.

A campaign joins a segment (optionally one lifecycle stage of it), a
template and a purpose, and says when it runs. The file name is the
campaign's name everywhere: ledger rows, logs, CLI arguments.
"""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from carepost.core.errors import ConfigError
from carepost.core.states import Purpose

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Schedule(_Strict):
    cron: str
    timezone: str

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown IANA time zone {value!r}; use a name such as "
                "'America/Chicago'"
            ) from None
        return value


class SendWindow(_Strict):
    """Local clock times (recipient's zone) between which mail may go out."""

    start: time = time(8, 0)
    end: time = time(20, 0)


class FrequencyCap(_Strict):
    max_messages: int = Field(ge=1)
    per_days: int = Field(ge=1)


class Goal(_Strict):
    event: str
    within_days: int = Field(default=7, ge=1)


class Campaign(_Strict):
    name: str
    description: str = ""
    segment: str
    stage: str | None = None
    template: str
    purpose: Purpose
    schedule: Schedule | None = None
    send_window: SendWindow = SendWindow()
    frequency_cap: FrequencyCap | None = None
    goal: Goal | None = None


def load_campaign(path: Path) -> Campaign:
    """Parse one campaign file; the file name is the campaign name."""
    name = path.stem
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"{path}: campaign file name {name!r} is not a valid name",
            hint="use lower-case letters, digits and underscores",
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    declared = raw.setdefault("name", name)
    if declared != name:
        raise ConfigError(
            f"{path}: name {declared!r} differs from the file name {name!r}",
            hint="rename the file or remove the name key",
        )
    try:
        return Campaign.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: invalid campaign: {problems}") from None


def load_campaigns(folder: Path) -> dict[str, Campaign]:
    """Load every ``*.yaml`` in ``folder``, sorted by name."""
    if not folder.is_dir():
        raise ConfigError(f"campaign folder {folder} not found")
    return {c.name: c for c in map(load_campaign, sorted(folder.glob("*.yaml")))}
