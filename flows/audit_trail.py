"""Audit entries the campaign flow writes: inputs, segment, batches.

One campaign run appends, in order:

- ``config.changed`` (target ``carepost.yaml``) and ``template.changed``
  (target the template name) when the file's SHA-256 or the template
  version differs from the one the last run recorded;
- ``segment.selected``: the segment name and the count, never the ids;
- ``delivery.batch``: one entry per batch of about 500 recipients with
  the run key, counts per outcome and the ledger delivery ids as compact
  ranges (``"1041-1530,1532"``), split over several entries when the
  ranges would pass ``MAX_DETAIL_LENGTH``. A million recipients give about
  2,000 entries, not a million, and each delivery id leads to its
  profile id in the ledger while the delivery row is kept;
- ``campaign.finished``: the summary counts.

Recipients settled by an earlier execution of the same run are counted as
``already_done`` and not listed again, because nothing was rendered or
disclosed for them this time.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

from sqlmodel import Session, select

from carepost.ledger import Ledger
from carepost.ledger.audit import (
    MAX_DETAIL_LENGTH,
    AuditLog,
    DetailValue,
    id_ranges,
    parse_id_ranges,
)
from carepost.ledger.models import Delivery

# Outcomes of ``deliver_one`` where the message reached the relay, or may
# have (``ambiguous``: no reply after DATA).
DISCLOSED = ("sent", "bounced", "deferred", "ambiguous")
# Settled by an earlier execution: nothing was read or sent this time.
NOT_TOUCHED = ("already_done",)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def config_path() -> Path:
    """Return the configuration file the flow loaded its settings from."""
    return Path(os.environ.get("CAREPOST_CONFIG", "carepost.yaml"))


def record_run_inputs(audit: AuditLog, *, campaign: str, run_key: str,
                      template_name: str, template_version: str) -> None:
    """Record carepost.yaml's hash and the template version if they changed."""
    config = config_path()
    if config.exists():
        audit.record_change(kind="config", target=config.name,
                            sha256=file_sha256(config),
                            details={"campaign": campaign, "run_key": run_key})
    audit.record_change(kind="template", target=template_name,
                        sha256=template_version,
                        details={"campaign": campaign, "run_key": run_key})


def record_segment(audit: AuditLog, *, campaign: str, run_key: str,
                   segment: str, count: int) -> None:
    audit.append(action="segment.selected", target=campaign,
                 details={"segment": segment, "run_key": run_key, "count": count})


def record_batch(audit: AuditLog, ledger: Ledger, *, campaign: str, run_key: str,
                 outcomes: Mapping[str, str]) -> None:
    """Append the ``delivery.batch`` entries for one batch's outcomes.

    ``outcomes`` maps profile ids to what ``deliver_one`` returned.
    """
    touched = [pid for pid, state in outcomes.items() if state not in NOT_TOUCHED]
    ids_by_profile = _delivery_ids(ledger, campaign, run_key, touched)
    counts = Counter(outcomes.values())
    sent_ids = [ids_by_profile[pid] for pid in touched
                if outcomes[pid] in DISCLOSED and pid in ids_by_profile]
    sent_set = set(sent_ids)

    chunks = _range_chunks(ids_by_profile.values())
    for part, ranges in enumerate(chunks, 1):
        chunk_sent = [i for i in parse_id_ranges(ranges) if i in sent_set]
        details: dict[str, DetailValue] = {
            "run_key": run_key,
            "profiles": len(outcomes),
            "delivery_ids": ranges,
            "sent_ids": id_ranges(chunk_sent),
        }
        if part == 1:
            details.update(dict(sorted(counts.items())))
        if len(chunks) > 1:
            details["part"] = f"{part}/{len(chunks)}"
        audit.append(action="delivery.batch", target=campaign, details=details)


def record_finished(audit: AuditLog, *, campaign: str, run_key: str,
                    segment_size: int, counts: Mapping[str, int],
                    events_pushed: int) -> None:
    details: dict[str, DetailValue] = {"run_key": run_key,
                                       "segment_size": segment_size,
                                       "events_pushed": events_pushed}
    details.update(dict(sorted(counts.items())))
    audit.append(action="campaign.finished", target=campaign, details=details)


def _delivery_ids(ledger: Ledger, campaign: str, run_key: str,
                  profile_ids: list[str]) -> dict[str, int]:
    if not profile_ids:
        return {}
    query = select(Delivery.profile_id, Delivery.id).where(
        Delivery.campaign == campaign, Delivery.run_key == run_key,
        Delivery.profile_id.in_(profile_ids))
    with Session(ledger.engine) as session:
        return {profile_id: delivery_id
                for profile_id, delivery_id in session.exec(query)}


def _range_chunks(ids: Iterable[int]) -> list[str]:
    """Return compact ranges of ``ids``, split so each fits one detail value."""
    chunks = [""]
    for part in filter(None, id_ranges(ids).split(",")):
        joined = f"{chunks[-1]},{part}" if chunks[-1] else part
        if len(joined) > MAX_DETAIL_LENGTH:
            chunks.append(part)
        else:
            chunks[-1] = joined
    return chunks
