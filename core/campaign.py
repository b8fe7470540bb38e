"""Campaign specs: ``campaigns/<name>.yaml``, one file per campaign.

A campaign joins a segment (optionally one lifecycle stage of it), a
template and a purpose, and sets when it runs: on a ``schedule`` (cron in
an IANA zone) or on a ``trigger`` (a CDP event such as a missed
appointment). A triggered campaign has no segment, because the event names
its recipient. The file name is the campaign's name everywhere: ledger
rows, logs, CLI arguments.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from carepost.core.errors import ConfigError
from carepost.core.states import Purpose
from carepost.core.yamlio import describe_validation_error, load_yaml_file

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_DURATION = re.compile(r"^(\d+)\s*(m|h|d)$")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days"}

# How long after its scheduled time (or a trigger's due time) a send may
# still go out when the campaign sets no ``send_by``; later it expires.
DEFAULT_SEND_BY = timedelta(hours=12)


def parse_duration(value: object) -> object:
    """Turn ``"30m"``, ``"2h"`` or ``"7d"`` into a ``timedelta``."""
    if isinstance(value, timedelta):
        return value
    match = _DURATION.match(str(value).strip())
    if match is None:
        raise ValueError(f"invalid duration {value!r}; use minutes, hours or days "
                         "such as '30m', '2h' or '7d'")
    return timedelta(**{_DURATION_UNITS[match[2]]: int(match[1])})


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_CRON_FIELDS = ("minute (0-59), hour (0-23), day of month (1-31), "
                "month (1-12) and day of week (0-6, 0 is Sunday)")


class Schedule(_Strict):
    cron: str
    timezone: str

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        # Prefect's own model, so every expression accepted here is one that
        # ``carepost serve`` can schedule. Importing Prefect takes about a
        # second, which is why it happens here and not at module level.
        # NOTE: an expression naming no real date, such as '0 9 30 2 *',
        # passes this check and never runs.
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=value)
        except ValidationError:
            raise ValueError(
                f"{value!r} is not a valid cron expression; expected five "
                f"fields: {_CRON_FIELDS}, for example '0 9 * * 1' for "
                "Mondays at 09:00") from None
        return value

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
    """Local clock times (recipient's zone) between which mail may go out.

    ``start`` is inclusive and ``end`` exclusive. An ``end`` before
    ``start`` wraps past midnight; ``start == end`` is open all day. A
    recipient outside the window waits for the next opening (``defer``)
    or gets nothing from this run (``skip``).
    """

    start: time = time(8, 0)
    end: time = time(20, 0)
    outside: Literal["defer", "skip"] = "defer"


class FrequencyCap(_Strict):
    max_messages: int = Field(ge=1)
    per_days: int = Field(ge=1)


class Goal(_Strict):
    event: str
    within_days: int = Field(default=7, ge=1)


class CancelRule(_Strict):
    """An event that cancels a pending trigger send when it follows the trigger.

    ``match: key`` needs the same key property (``prescription_filled``
    for the same ``rx_id``); ``match: profile`` any such event of the
    profile (any ``appointment_booked`` after a no-show).
    """

    event: str
    match: Literal["key", "profile"] = "key"


class Escalation(_Strict):
    """Push ``event`` to the CDP after this many unanswered reminders."""

    after_reminders: int = Field(ge=1)
    event: str = "prescription_unfilled_escalated"


class Trigger(_Strict):
    """A CDP event that starts one send to its profile, after ``delay``.

    ``key`` names the event property that identifies what the message is
    about (``appointment_id``, ``rx_id``, ``form_id``): each key sends at
    most once per reminder, however often the event arrives. ``where``
    holds property equality conditions. ``cancel_if`` is re-checked at
    send time. With ``repeat_every``, a reminder repeats until a cancel
    rule matches, up to ``max_reminders``.
    """

    event: str
    key: str
    where: dict[str, str | int | bool] = {}
    delay: Duration = timedelta(0)
    cancel_if: tuple[CancelRule, ...] = ()
    repeat_every: Duration | None = None
    max_reminders: int = Field(default=1, ge=1, le=10)
    escalation: Escalation | None = None
    time_field: str | None = None  # template field that gets the event time

    @model_validator(mode="after")
    def _repeats_need_interval(self) -> Trigger:
        if self.max_reminders > 1 and self.repeat_every is None:
            raise ValueError("max_reminders above 1 needs repeat_every, "
                             "for example repeat_every: 3d")
        if self.escalation and self.escalation.after_reminders > self.max_reminders:
            raise ValueError("escalation.after_reminders is larger than "
                             "max_reminders, so it would never happen")
        return self


class Campaign(_Strict):
    name: str
    description: str = ""
    segment: str | None = None
    stage: str | None = None
    template: str
    purpose: Purpose
    schedule: Schedule | None = None
    trigger: Trigger | None = None
    send_window: SendWindow = SendWindow()
    send_by: Duration | None = None
    frequency_cap: FrequencyCap | None = None
    # A profile that got this campaign within this many days is skipped by
    # later runs, so a daily campaign over a 14-day segment mails once.
    reentry_days: int | None = Field(default=None, ge=1)
    goal: Goal | None = None

    @field_validator("purpose", mode="before")
    @classmethod
    def _known_purpose(cls, value: object) -> object:
        if value not in tuple(Purpose):
            raise ValueError(
                f"unknown purpose {value!r}; expected 'marketing' (needs "
                "marketing consent) or 'care' (appointment and refill "
                "reminders, needs contact consent only)")
        return value

    @model_validator(mode="after")
    def _one_way_to_run(self) -> Campaign:
        if self.trigger is not None and self.schedule is not None:
            raise ValueError("a campaign has a schedule or a trigger, not both")
        if self.trigger is not None and self.segment is not None:
            raise ValueError("a triggered campaign takes no segment: the event "
                             "names its recipient")
        if self.trigger is None and self.segment is None:
            raise ValueError("segment is required unless the campaign has a trigger")
        return self

    @property
    def send_deadline(self) -> timedelta:
        """How long after its scheduled or due time a send may still go out."""
        return self.send_by if self.send_by is not None else DEFAULT_SEND_BY


def load_campaign(path: Path) -> Campaign:
    """Parse one campaign file; the file name is the campaign name."""
    name = path.stem
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"{path}: campaign file name {name!r} is not a valid name",
            hint="use lower-case letters, digits and underscores",
        )
    document = load_yaml_file(path)
    raw = document.data or {}
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
        raise ConfigError(describe_validation_error(exc, document, "campaign")) from None


def load_campaigns(folder: Path) -> dict[str, Campaign]:
    """Load every ``*.yaml`` in ``folder``, sorted by name."""
    if not folder.is_dir():
        raise ConfigError(f"campaign folder {folder} not found")
    return {c.name: c for c in map(load_campaign, sorted(folder.glob("*.yaml")))}
