"""Delivery ledger on a real SQLite file."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from carepost.core.states import DeliveryState, Purpose
from carepost.ledger import (
    ClaimStatus,
    Delivery,
    Ledger,
    Settlement,
    hash_address,
    outbox_event,
)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    book = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield book
    book.close()


def _claim(ledger: Ledger, profile_id: str = "p-1", run_key: str = "2024-02-15"):
    return ledger.claim(campaign="checkup_reminder", run_key=run_key,
                        profile_id=profile_id, purpose=Purpose.CARE)


def test_claim_then_claim_again_reports_state(ledger: Ledger) -> None:
    first = _claim(ledger)
    assert first.status is ClaimStatus.CLAIMED

    assert ledger.begin_send(first.delivery_id)
    assert _claim(ledger).status is ClaimStatus.AMBIGUOUS

    ledger.settle(first.delivery_id, Settlement(DeliveryState.SENT))
    again = _claim(ledger)
    assert again.status is ClaimStatus.DONE
    assert again.delivery_id == first.delivery_id


def test_begin_send_wins_only_once(ledger: Ledger) -> None:
    claim = _claim(ledger)
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def race() -> None:
        barrier.wait()
        results.append(ledger.begin_send(claim.delivery_id))

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False, False, False, True]


def test_deferred_row_may_be_claimed_again(ledger: Ledger) -> None:
    claim = _claim(ledger)
    ledger.begin_send(claim.delivery_id)
    ledger.settle(claim.delivery_id,
                  Settlement(DeliveryState.DEFERRED, smtp_code=421))

    retry = _claim(ledger)

    assert retry.status is ClaimStatus.CLAIMED
    assert ledger.begin_send(retry.delivery_id)


def test_settle_writes_event_once(ledger: Ledger) -> None:
    claim = _claim(ledger)
    event = outbox_event("email_sent", delivery_id=claim.delivery_id,
                         campaign="checkup_reminder", profile_id="p-1",
                         properties={"machine": False})
    ledger.settle(claim.delivery_id, Settlement(DeliveryState.SENT), [event])
    ledger.settle(claim.delivery_id, Settlement(DeliveryState.SENT), [event])

    pending = ledger.pending_events()
    assert [e.event_id for e in pending] == [event.event_id]
    assert json.loads(pending[0].payload)["type"] == "email_sent"

    ledger.mark_pushed([event.event_id])
    assert ledger.pending_events() == []


def test_suppression_is_scoped(ledger: Ledger) -> None:
    address = hash_address(b"k", "Sam@Example.test ")
    ledger.suppress(address, scope="marketing", reason="unsubscribed")
    ledger.suppress(address, scope="marketing", reason="unsubscribed")

    assert ledger.is_suppressed(address, Purpose.MARKETING)
    assert not ledger.is_suppressed(address, Purpose.CARE)
    assert hash_address(b"k", "sam@example.test") == address


def test_sent_since_counts_other_runs(ledger: Ledger) -> None:
    for run_key in ("2024-02-01", "2024-02-08", "2024-02-15"):
        claim = _claim(ledger, run_key=run_key)
        ledger.settle(claim.delivery_id, Settlement(DeliveryState.SENT))
    week_ago = datetime.now(UTC) - timedelta(days=7)

    assert ledger.sent_since("p-1", week_ago, purpose=Purpose.CARE) == 3
    assert ledger.sent_since("p-1", week_ago, purpose=Purpose.CARE,
                             excluding_run=("checkup_reminder", "2024-02-15")) == 2
    assert ledger.sent_since("p-1", week_ago, purpose=Purpose.MARKETING) == 0


def test_sent_since_counts_other_campaigns_same_date(ledger: Ledger) -> None:
    """Another campaign's send on the same run date counts towards a cap."""
    claim = ledger.claim(campaign="cap_a", run_key="2024-02-15", profile_id="p-1",
                         purpose=Purpose.CARE)
    ledger.settle(claim.delivery_id, Settlement(DeliveryState.SENT))
    week_ago = datetime.now(UTC) - timedelta(days=7)

    assert ledger.sent_since("p-1", week_ago,
                             excluding_run=("cap_b", "2024-02-15")) == 1
    assert ledger.sent_since("p-1", week_ago,
                             excluding_run=("cap_a", "2024-02-15")) == 0


def test_ledger_rows_hold_no_address(ledger: Ledger) -> None:
    claim = ledger.claim(campaign="c", run_key="r", profile_id="p-9",
                         purpose=Purpose.CARE,
                         address_hash=hash_address(b"k", "zed@example.test"))
    with Session(ledger.engine) as session:
        row = session.exec(select(Delivery).where(Delivery.id == claim.delivery_id)).one()
    assert "zed" not in row.model_dump_json()


def _open_ledger_and_audit(url: str, barrier) -> None:
    from carepost.ledger import AuditLog

    barrier.wait()
    Ledger(url).close()
    AuditLog(url).close()


def test_new_sqlite_ledger_opened_by_several_processes(tmp_path) -> None:
    """Processes that open a new ledger file at once all get its tables."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'ledger-{attempt}.db'}"
        barrier = context.Barrier(4)
        workers = [context.Process(target=_open_ledger_and_audit, args=(url, barrier))
                   for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
