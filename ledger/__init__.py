"""Delivery ledger, suppression list and CDP event outbox."""

from carepost.ledger.audit import AuditEntry, AuditError, AuditLog
from carepost.ledger.ledger import (
    Claim,
    ClaimStatus,
    Ledger,
    Settlement,
    delivery_key,
    hash_address,
    outbox_event,
)
from carepost.ledger.inbox import Inbox, InboxEvent, PendingSend, ScheduledRun
from carepost.ledger.models import Delivery, OutboxEvent, Suppression

# Imported for its tables: ``Ledger.__init__`` creates every table that
# ``SQLModel.metadata`` knows when the ledger is first opened.
from carepost.ledger import engagement  # noqa: E402,F401  isort: skip
# The sender's domain TLS status, MTA-STS cache and delivery routes.
from carepost.connectors import tls_status  # noqa: E402,F401  isort: skip

__all__ = [
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "Claim",
    "ClaimStatus",
    "Delivery",
    "Inbox",
    "InboxEvent",
    "Ledger",
    "OutboxEvent",
    "PendingSend",
    "ScheduledRun",
    "Settlement",
    "Suppression",
    "delivery_key",
    "engagement",
    "hash_address",
    "outbox_event",
]
