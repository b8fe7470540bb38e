"""Deliver one batch of recipients: check -> claim -> render -> send -> settle.

Plain async functions, so they are tested without Prefect; the Prefect
task in ``flows/campaign.py`` is a thin wrapper. Each step is one concern:

1. send-time checks (deceased, address, consent for the purpose,
   suppression list, frequency cap): re-read at send time, never trusted
   from segment time;
2. claim the ledger row (idempotency key) so a re-run finds it;
3. render; a missing field settles the row ``render_failed``;
4. move the row to ``sending`` (committed) and hand it to the TLS sender;
5. settle the row with the outcome and queue its CDP event.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import duckdb
from sqlmodel import Session

from carepost.connectors.smtp import EnvelopeError, SendOutcome, TlsSender
from carepost.connectors.smtp_retry import EXPIRED_PREFIX, RetryPolicy, expired_reason
from carepost.core.campaign import Campaign
from carepost.core.phi import PHI
from carepost.core.settings import Settings
from carepost.core.states import DeliveryState, Purpose
from carepost.core.tokens import issue_token
from carepost.flows.audit_trail import record_batch
from carepost.flows.context import Recipient, load_recipients
from carepost.ledger import (
    AuditLog,
    ClaimStatus,
    Delivery,
    Ledger,
    Settlement,
    hash_address,
    outbox_event,
)
from carepost.ledger.ledger import Claim, ClaimRequest
from carepost.segments.recipients import REASON_TEXT
from carepost.templates import (
    Envelope,
    HeaderInjectionError,
    RenderFailed,
    Tracking,
    build_message,
)

if TYPE_CHECKING:
    from carepost.flows.schedule import SendHold

log = logging.getLogger(__name__)

# Events pushed back to the CDP for each final state.
_EVENT_FOR_STATE = {
    DeliveryState.SENT: "email_sent",
    DeliveryState.DROPPED_NO_TLS: "email_dropped_no_tls",
    DeliveryState.BOUNCED: "email_bounced",
}


@dataclass
class RunContext:
    """Everything a batch needs, built once per campaign run."""

    settings: Settings
    campaign: Campaign
    template: Any
    run_key: str
    run_date: date
    ledger: Ledger
    warehouse: duckdb.DuckDBPyConnection
    sender: TlsSender
    address_key: bytes
    token_keys: dict[str, bytes]
    # Receives one ``delivery.batch`` entry per batch (ids and counts only).
    audit: AuditLog | None = None
    # Send-window rule of scheduled and triggered runs; None sends at once.
    hold: SendHold | None = None


def _skip_reason(run: RunContext, recipient: Recipient, address_hash: str | None
                 ) -> str | None:
    """Return why this recipient must not get this campaign, or None."""
    purpose = run.campaign.purpose
    if recipient.deceased:
        return REASON_TEXT["deceased"]
    if recipient.address is None or address_hash is None:
        return REASON_TEXT["no_address"]
    # Contact consent is the floor for any email; marketing needs its own
    # authorisation on top of it.
    if not recipient.consent_contact:
        return REASON_TEXT["no_contact_consent"]
    if purpose is Purpose.MARKETING and not recipient.consent_marketing:
        return REASON_TEXT["no_marketing_consent"]
    if run.ledger.is_suppressed(address_hash, purpose):
        return REASON_TEXT["suppressed"]
    cap = run.campaign.frequency_cap
    if cap is not None:
        since = datetime.now(UTC) - timedelta(days=cap.per_days)
        sent = run.ledger.sent_since(recipient.profile_id, since, purpose=purpose,
                                     excluding_run=(run.campaign.name, run.run_key))
        if sent >= cap.max_messages:
            return REASON_TEXT["frequency_cap"]
    reentry = run.campaign.reentry_days
    if reentry is not None:
        since = datetime.now(UTC) - timedelta(days=reentry)
        if run.ledger.sent_since(recipient.profile_id, since,
                                 campaign=run.campaign.name,
                                 excluding_run=(run.campaign.name, run.run_key)):
            return f"already sent this campaign within {reentry} days"
    return None


def _message_id(run: RunContext, profile_id: str) -> str:
    digest = hashlib.sha256(
        f"{run.campaign.name}/{run.run_key}/{profile_id}".encode()
    ).hexdigest()[:32]
    domain = run.settings.sender.address.rpartition("@")[2]
    return f"<{digest}@{domain}>"


def _envelope(run: RunContext, recipient: Recipient, delivery_id: int,
              message_id: str) -> Envelope:
    token = issue_token(run.token_keys, delivery_id, "u")
    base = run.settings.tracking.base_url.rstrip("/")
    return Envelope(
        from_address=run.settings.sender.address,
        from_name=run.settings.sender.name,
        to_address=recipient.address.reveal(),
        message_id=message_id,
        unsubscribe_url=f"{base}/u/{token}",
        unsubscribe_post=True,
        date=datetime.now(UTC),
    )


def _render(run: RunContext, recipient: Recipient, delivery_id: int,
            message_id: str) -> bytes:
    envelope = _envelope(run, recipient, delivery_id, message_id)
    context: dict[str, Any] = dict(recipient.context)
    # NOTE: a profile without a time zone gets the practice's; the ledger
    # does not record that this fallback was used.
    context.setdefault("timezone", PHI(run.settings.practice.timezone))
    context["unsubscribe_url"] = envelope.unsubscribe_url
    context["message_id"] = message_id
    # The renderer gets a signing callable, never the tracking keys.
    tracking = Tracking(run.settings.tracking.base_url,
                        partial(issue_token, run.token_keys, delivery_id))
    content = run.template.render(context, profile_id=recipient.profile_id,
                                  tracking=tracking)
    if content.sender_name is not None:
        envelope = replace(envelope, from_name=content.sender_name)
    return build_message(content, envelope)


def _settle(run: RunContext, recipient: Recipient, delivery_id: int,
            result: Settlement) -> str:
    event_type = _EVENT_FOR_STATE.get(result.state)
    events = []
    if event_type is not None:
        events.append(outbox_event(
            event_type, delivery_id=delivery_id, campaign=run.campaign.name,
            profile_id=recipient.profile_id,
            properties={
                "campaign": run.campaign.name,
                "run": run.run_key,
                "template": run.template.name,
                "template_version": run.template.version,
                "machine": False,
                "reason": result.reason,
            },
        ))
    run.ledger.settle(delivery_id, result, events)
    return str(result.state)


def claim_request(run: RunContext, recipient: Recipient) -> ClaimRequest:
    """Build the ledger claim of this recipient's delivery in this run."""
    address_hash = (hash_address(run.address_key, recipient.address.reveal())
                    if recipient.address is not None else None)
    return _request_for(run, recipient.profile_id, address_hash)


def _request_for(run: RunContext, profile_id: str,
                 address_hash: str | None) -> ClaimRequest:
    return ClaimRequest(
        campaign=run.campaign.name, run_key=run.run_key, profile_id=profile_id,
        purpose=run.campaign.purpose,
        fields={"template": run.template.name,
                "template_version": run.template.version,
                "message_id": _message_id(run, profile_id),
                "address_hash": address_hash})


async def deliver_one(run: RunContext, recipient: Recipient,
                      claim: Claim | None = None) -> str:
    """Take one recipient through every step and return the state it reached.

    Besides delivery states, ``already_done`` means an earlier execution
    settled this delivery and ``ambiguous`` that its outcome is unknown.
    ``claim`` is passed by callers that claimed a group of rows in one
    transaction (``Ledger.claim_many`` of ``claim_request``); without it
    this function claims the row itself.
    """
    request = claim_request(run, recipient)
    address_hash = request.fields["address_hash"]
    message_id = request.fields["message_id"]
    if claim is None:
        [claim] = run.ledger.claim_many([request])
    if claim.status is ClaimStatus.DONE:
        return "already_done"
    if claim.status is ClaimStatus.AMBIGUOUS:
        log.warning("delivery %s to profile %s is in 'sending' from an earlier "
                    "run; not resending", claim.delivery_id, recipient.profile_id)
        return "ambiguous"

    reason = _skip_reason(run, recipient, address_hash)
    if reason is not None:
        return _settle(run, recipient, claim.delivery_id,
                       Settlement(DeliveryState.SUPPRESSED, reason=reason))

    if run.hold is not None:
        held = run.hold.apply(run, recipient, claim.delivery_id)
        if held is not None:
            return held

    # A domain whose MX was seen without usable TLS today is not rendered.
    refusal = run.sender.tls_refusal(recipient.address.reveal())
    if refusal is not None:
        return _settle(run, recipient, claim.delivery_id,
                       Settlement(DeliveryState.DROPPED_NO_TLS, reason=refusal))

    try:
        data = _render(run, recipient, claim.delivery_id, message_id)
    except (RenderFailed, HeaderInjectionError) as exc:
        log.info("profile %s not rendered: %s", recipient.profile_id, exc)
        return _settle(run, recipient, claim.delivery_id,
                       Settlement(DeliveryState.RENDER_FAILED, reason=str(exc)))

    if not run.ledger.begin_send(claim.delivery_id):
        return "already_done"
    try:
        outcome = await _send_with_retries(run, recipient, claim.delivery_id, data)
    except EnvelopeError as exc:
        # The guard raised before any byte reached the server, so the
        # address is unusable rather than the delivery unknown.
        log.warning("profile %s not sent: %s", recipient.profile_id, exc)
        return _settle(run, recipient, claim.delivery_id,
                       Settlement(DeliveryState.SUPPRESSED, reason=str(exc)))
    if outcome is None:
        return "already_done"
    if outcome.suppress and address_hash is not None:
        # A 5xx bounce, a null MX or a missing domain: never mail it again.
        run.ledger.suppress(address_hash, scope="all", reason=f"bounced: {outcome.reason}",
                            profile_id=recipient.profile_id)
    return _settle_outcome(run, recipient, claim.delivery_id, outcome)


async def _send_with_retries(run: RunContext, recipient: Recipient, delivery_id: int,
                             data: bytes) -> SendOutcome | None:
    """Send, retrying a 4xx deferral with backoff until the send_by deadline.

    Waits at most ``smtp.retry_in_run_seconds`` in this run; a delivery
    still deferred then stays ``deferred`` for the next run of the same
    date. None means another execution took the row between attempts.
    """
    policy = RetryPolicy.from_settings(run.settings.smtp)
    deadline = _send_by(run, delivery_id)
    budget_ends = time.monotonic() + policy.in_run_seconds
    attempt = 0
    while True:
        if _now(run) > deadline:
            return SendOutcome(DeliveryState.SUPPRESSED, reason=expired_reason(
                deadline, _last_reason(run, delivery_id)))
        attempt += 1
        outcome = await run.sender.send(
            envelope_from=run.settings.sender.address,
            recipient=recipient.address.reveal(), data=data,
            profile_id=recipient.profile_id)
        delay = policy.delay(attempt)
        if not policy.retries(outcome.state) or time.monotonic() + delay > budget_ends:
            return outcome
        if _now(run) + timedelta(seconds=delay) > deadline:
            return SendOutcome(DeliveryState.SUPPRESSED,
                               reason=expired_reason(deadline, outcome.reason))
        run.ledger.settle(delivery_id, Settlement(
            DeliveryState.DEFERRED, reason=outcome.reason, smtp_code=outcome.smtp_code))
        log.info("delivery %s to profile %s deferred (%s); attempt %d in %.1f s",
                 delivery_id, recipient.profile_id, outcome.smtp_code, attempt + 1,
                 delay)
        await asyncio.sleep(delay)
        if not run.ledger.begin_send(delivery_id):
            return None


def _last_reason(run: RunContext, delivery_id: int) -> str | None:
    with Session(run.ledger.engine) as session:
        return session.get(Delivery, delivery_id).reason


def _now(run: RunContext) -> datetime:
    """Return the time the hold's deadline is measured against."""
    return run.hold.clock() if run.hold is not None else datetime.now(UTC)


def _send_by(run: RunContext, delivery_id: int) -> datetime:
    """Return the delivery's deadline: the hold's, else first claim + send_by."""
    if run.hold is not None:
        return run.hold.deadline
    with Session(run.ledger.engine) as session:
        created = session.get(Delivery, delivery_id).created_at
    created = created if created.tzinfo else created.replace(tzinfo=UTC)
    return created + run.campaign.send_deadline


def _settle_outcome(run: RunContext, recipient: Recipient, delivery_id: int,
                    outcome: SendOutcome) -> str:
    if outcome.state is DeliveryState.SENDING:
        # No reply after DATA: the row stays in 'sending' and is reported.
        log.warning("delivery %s to profile %s has an unknown outcome: %s",
                    delivery_id, recipient.profile_id, outcome.reason)
        return "ambiguous"
    if outcome.mx_host is not None and outcome.state is DeliveryState.SENT:
        run.sender.status_store.record_route(
            delivery_id, outcome.mx_host, cert_verified=bool(outcome.cert_verified),
            mta_sts_mode=outcome.mta_sts_mode)
    state = _settle(run, recipient, delivery_id, Settlement(
        state=outcome.state, reason=outcome.reason, smtp_code=outcome.smtp_code,
        tls_version=outcome.tls_version, tls_cipher=outcome.tls_cipher,
        cert_sha256=outcome.cert_sha256,
    ))
    expired = (outcome.reason or "").startswith(EXPIRED_PREFIX)
    return "expired" if expired else state


def settle_removed(run: RunContext, removed: dict[str, str]) -> Counter[str]:
    """Record the segment members the selection removed; return their counts.

    ``removed`` maps profile ids to their reason in ``REASON_TEXT``, the
    texts ``_skip_reason`` returns too. These profiles are never loaded or rendered, but each still
    gets its ledger row, settled ``suppressed``, so the run's counts and a
    re-run read the same as when the send-time check removes someone.
    """
    counts: Counter[str] = Counter()
    ids = sorted(removed)
    size = max(1, run.settings.batch_size)
    for start in range(0, len(ids), size):
        chunk = ids[start:start + size]
        # The address of a removed profile is not read, so its hash stays empty.
        claims = run.ledger.claim_many([_request_for(run, pid, None) for pid in chunk])
        outcomes: dict[str, str] = {}
        by_reason: dict[str, list[int]] = {}
        for profile_id, claim in zip(chunk, claims):
            if claim.status is ClaimStatus.DONE:
                outcomes[profile_id] = "already_done"
            elif claim.status is ClaimStatus.AMBIGUOUS:
                log.warning("delivery %s to profile %s is in 'sending' from an "
                            "earlier run; leaving it", claim.delivery_id, profile_id)
                outcomes[profile_id] = "ambiguous"
            else:
                by_reason.setdefault(removed[profile_id], []).append(claim.delivery_id)
                outcomes[profile_id] = str(DeliveryState.SUPPRESSED)
        for reason, delivery_ids in by_reason.items():
            run.ledger.settle_many(delivery_ids, Settlement(DeliveryState.SUPPRESSED,
                                                            reason=reason))
        if run.audit is not None:
            record_batch(run.audit, run.ledger, campaign=run.campaign.name,
                         run_key=run.run_key, outcomes=outcomes)
        counts.update(outcomes.values())
    return counts


async def deliver_batch(run: RunContext, profile_ids: list[str]) -> Counter[str]:
    """Deliver to every profile of one batch; return this batch's counts."""
    run.sender.use_ledger(run.ledger.engine)
    recipients = load_recipients(run.warehouse, profile_ids, run.run_date)
    missing = len(profile_ids) - len(recipients)
    if missing:
        log.warning("%d profile ids of the batch are not in the warehouse", missing)
    # One transaction claims the whole batch; each row still moves to
    # ``sending`` on its own just before its SMTP transaction.
    claims = run.ledger.claim_many([claim_request(run, r) for r in recipients])
    states = await asyncio.gather(*(deliver_one(run, recipient, claim)
                                    for recipient, claim in zip(recipients, claims)))
    if run.audit is not None:
        outcomes = dict(zip((r.profile_id for r in recipients), states))
        record_batch(run.audit, run.ledger, campaign=run.campaign.name,
                     run_key=run.run_key, outcomes=outcomes)
    return Counter(states)
