"""Audit entries of behaviour passes: one ``delivery.batch`` per campaign.

Triggered sends are audited like the batches of a campaign run
(``flows/audit_trail.py``). Each pass appends, for every campaign whose
due sends it worked, an entry with action ``delivery.batch``, target the
campaign, and these details (ids and counts only):

- ``trigger``: ``behaviour``, which tells these entries from campaign
  batches;
- ``run_keys``: the run keys worked, comma separated
  (``appointment:ap-7,rx:rx-2#2``, or a date for a held scheduled send);
- ``profiles``: how many due sends were worked, and a count per outcome
  (``sent``, ``cancelled``, ``window_deferred`` ...);
- ``delivery_ids`` and ``sent_ids``: ledger delivery ids as compact ranges
  (``"1041-1049,1052"``); each leads to its profile id in the ledger.

Cancelled, expired, escalated and waiting sends touch no delivery row, so
they are counted but have no id. Deliveries an earlier pass settled
(``already_done``) are counted and not listed, as in campaign batches. A
pass whose run keys do not fit ``MAX_DETAIL_LENGTH`` is split into parts
(``"part": "2/3"``), each with its own keys, ids and counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from carepost.flows.audit_trail import DISCLOSED, NOT_TOUCHED
from carepost.ledger.audit import MAX_DETAIL_LENGTH, AuditLog, DetailValue, id_ranges

__all__ = ["PassItem", "record_pass"]


@dataclass(frozen=True)
class PassItem:
    """What a pass did with one due send of one campaign."""

    run_key: str
    outcome: str
    # None when the send touched no delivery row (cancelled, expired ...).
    delivery_id: int | None = None


def record_pass(audit: AuditLog, campaign: str, items: Sequence[PassItem]) -> int:
    """Append the pass's ``delivery.batch`` entries for one campaign.

    Returns how many entries were written (0 when ``items`` is empty).
    """
    parts = _split(items)
    for number, part in enumerate(parts, 1):
        listed = [item for item in part
                  if item.delivery_id is not None and item.outcome not in NOT_TOUCHED]
        details: dict[str, DetailValue] = {
            "trigger": "behaviour",
            "run_keys": ",".join(item.run_key for item in part),
            "profiles": len(part),
            "delivery_ids": id_ranges(item.delivery_id for item in listed),
            "sent_ids": id_ranges(item.delivery_id for item in listed
                                  if item.outcome in DISCLOSED),
        }
        details.update(dict(sorted(Counter(item.outcome for item in part).items())))
        if len(parts) > 1:
            details["part"] = f"{number}/{len(parts)}"
        audit.append(action="delivery.batch", target=campaign, details=details)
    return len(parts)


def _split(items: Sequence[PassItem]) -> list[list[PassItem]]:
    """Split items so each part's comma-joined run keys fit one detail value."""
    parts: list[list[PassItem]] = []
    length = 0
    for item in items:
        added = len(item.run_key) + 1
        if not parts or length + added > MAX_DETAIL_LENGTH:
            parts.append([])
            length = 0
        parts[-1].append(item)
        length += added
    return parts
