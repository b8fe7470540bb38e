"""Names shared by the ledger, the sender and the flows."""

from __future__ import annotations

from enum import StrEnum


class DeliveryState(StrEnum):
    """Where one (campaign run or trigger, profile) delivery stands.

    ``queued -> sending -> sent | deferred | bounced | dropped_no_tls``;
    ``suppressed`` and ``render_failed`` are settled before any SMTP work.
    A row left in ``sending`` means the outcome is unknown (a crash or a
    lost reply after DATA) and is reported, never resent automatically.
    """

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    DROPPED_NO_TLS = "dropped_no_tls"
    SUPPRESSED = "suppressed"
    RENDER_FAILED = "render_failed"

    @property
    def is_final(self) -> bool:
        return self not in (DeliveryState.QUEUED, DeliveryState.SENDING,
                            DeliveryState.DEFERRED)


class Purpose(StrEnum):
    """Why a message is sent; decides which consent it needs.

    ``marketing`` needs the patient's marketing authorisation; ``care``
    (appointment and refill reminders) needs contact consent only.
    """

    MARKETING = "marketing"
    CARE = "care"


class SegmentKind(StrEnum):
    CONDITION = "condition"
    LIFECYCLE = "lifecycle"
    BEHAVIOUR = "behaviour"
