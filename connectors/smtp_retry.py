"""Backoff for deferred (4xx) deliveries and their ``send_by`` expiry.

A deferred message is tried again after ``base * 2**(attempt - 1)``
seconds, capped at ``max_seconds``, times a random factor in [0.5, 1.0)
so that many deferred messages do not come back at the same instant.
Once the next try would fall after the delivery's ``send_by`` deadline,
it expires: the delivery is settled ``suppressed`` with a reason that
starts with ``expired:``, the same state and prefix the send-window hold
uses for a deadline it cannot meet, so reports count both one way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime

from carepost.core.settings import SmtpSettings
from carepost.core.states import DeliveryState

__all__ = ["EXPIRED_PREFIX", "RetryPolicy", "expired_reason"]

EXPIRED_PREFIX = "expired:"


def expired_reason(deadline: datetime, last_reason: str | None) -> str:
    """Describe an expired delivery; ``last_reason`` is its last 4xx reason."""
    return (f"{EXPIRED_PREFIX} still deferred at the send_by deadline "
            f"{deadline:%Y-%m-%dT%H:%MZ} (last: {last_reason or 'no reason'})")


@dataclass
class RetryPolicy:
    """Backoff delays and the in-run retry budget, from the smtp settings."""

    base_seconds: float
    max_seconds: float
    in_run_seconds: float
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_settings(cls, settings: SmtpSettings) -> RetryPolicy:
        return cls(settings.retry_base_seconds, settings.retry_max_seconds,
                   settings.retry_in_run_seconds)

    def delay(self, attempt: int) -> float:
        """Return the seconds to wait after failed attempt number ``attempt``."""
        exponent = min(attempt - 1, 30)
        capped = min(self.max_seconds, self.base_seconds * 2 ** exponent)
        return capped * self.rng.uniform(0.5, 1.0)

    @staticmethod
    def retries(state: DeliveryState) -> bool:
        return state is DeliveryState.DEFERRED
