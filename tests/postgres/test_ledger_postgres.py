"""The delivery ledger on a real PostgreSQL server.

The SQLite tests of ``tests/ledger`` run here again unchanged: they are
imported below and get this folder's ``ledger`` fixture, a ledger in a
fresh PostgreSQL schema. The tests after them cover what only a server
with several connections can show.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from sqlalchemy import DateTime, bindparam, func, select
from sqlalchemy.dialects import postgresql
from sqlmodel import Session

from carepost.core.states import DeliveryState, Purpose
from carepost.ledger import ClaimStatus, Delivery, Ledger, Settlement
from carepost.ledger.ledger import ClaimRequest, insert_skipping_duplicates
from carepost.ledger.models import Suppression
from tests.ledger.test_ledger import (  # noqa: F401  run again on PostgreSQL
    test_begin_send_wins_only_once,
    test_claim_then_claim_again_reports_state,
    test_deferred_row_may_be_claimed_again,
    test_ledger_rows_hold_no_address,
    test_sent_since_counts_other_runs,
    test_settle_writes_event_once,
    test_suppression_is_scoped,
)

pytestmark = pytest.mark.postgres

T = TypeVar("T")


def run_together(count: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(0..count-1)`` in threads released at once; re-raise errors."""
    barrier = threading.Barrier(count)
    results: dict[int, T] = {}
    errors: list[BaseException] = []

    def run(number: int) -> None:
        barrier.wait()
        try:
            results[number] = work(number)
        except BaseException as exc:  # noqa: BLE001  re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [results[number] for number in range(count)]


def requests(profile_ids: list[str], run_key: str = "2024-02-15") -> list[ClaimRequest]:
    return [ClaimRequest("checkup_reminder", run_key, profile_id, Purpose.CARE,
                         {"template": "checkup"})
            for profile_id in profile_ids]


def test_claim_many_keeps_order(ledger: Ledger) -> None:
    first = ledger.claim_many(requests(["p-2", "p-4"]))
    ledger.begin_send(first[1].delivery_id)
    ledger.settle(first[0].delivery_id, Settlement(DeliveryState.SENT))

    claims = ledger.claim_many(requests(["p-1", "p-2", "p-3", "p-4"]))

    assert [claim.status for claim in claims] == [
        ClaimStatus.CLAIMED, ClaimStatus.DONE, ClaimStatus.CLAIMED,
        ClaimStatus.AMBIGUOUS]
    assert claims[1].delivery_id == first[0].delivery_id
    assert claims[3].delivery_id == first[1].delivery_id
    assert len({claim.delivery_id for claim in claims}) == 4


def test_begin_send_race_across_engines(ledger_url: str, ledger: Ledger) -> None:
    """Two workers (two engines, two connection pools) race for each row."""
    claims = ledger.claim_many(requests([f"p-{n}" for n in range(20)]))
    workers = [Ledger(ledger_url), Ledger(ledger_url)]

    def send_all(number: int) -> list[bool]:
        return [workers[number].begin_send(claim.delivery_id) for claim in claims]

    try:
        first, second = run_together(2, send_all)
    finally:
        for worker in workers:
            worker.close()

    assert [a + b for a, b in zip(first, second)] == [1] * len(claims)
    assert ledger.state_counts("checkup_reminder", "2024-02-15") == {
        "sending": len(claims)}


def test_concurrent_claims_in_other_orders(ledger_url: str, ledger: Ledger) -> None:
    """Two claims of the same keys in opposite orders must not deadlock."""
    workers = [Ledger(ledger_url) for _ in range(2)]
    profile_ids = [f"p-{n:04}" for n in range(2000)]

    def claim_all(number: int) -> list[int]:
        order = profile_ids if number == 0 else profile_ids[::-1]
        claims = workers[number].claim_many(requests(order))
        by_profile = dict(zip(order, claims))
        return [by_profile[profile_id].delivery_id for profile_id in profile_ids]

    try:
        first, second = run_together(2, claim_all)
    finally:
        for worker in workers:
            worker.close()

    assert first == second
    assert len(set(first)) == len(profile_ids)


def test_claims_under_repeatable_read_default(make_schema) -> None:
    """A server defaulting to REPEATABLE READ must not fail concurrent claims.

    There a claim that waited on another's insert of the same key raises
    "could not serialize access"; the ledger pins READ COMMITTED.
    """
    url = make_schema(default_transaction_isolation="repeatable read")
    Ledger(url).close()
    workers = [Ledger(url) for _ in range(3)]
    profile_ids = [f"p-{n}" for n in range(100)]
    try:
        results = run_together(3, lambda n: [
            claim.delivery_id for claim in workers[n].claim_many(requests(profile_ids))])
    finally:
        for worker in workers:
            worker.close()
    assert results[0] == results[1] == results[2]


def test_tables_created_by_concurrent_workers(ledger_url: str) -> None:
    """Workers starting at once on an empty schema do not race to create."""
    books = run_together(4, lambda _: Ledger(ledger_url))
    claims = [book.claim(campaign="c", run_key="r", profile_id="p-1",
                         purpose=Purpose.CARE) for book in books]
    for book in books:
        book.close()
    assert len({claim.delivery_id for claim in claims}) == 1


def test_settle_many_moves_retryable_only(ledger: Ledger) -> None:
    claims = ledger.claim_many(requests(["p-1", "p-2", "p-3"]))
    ids = [claim.delivery_id for claim in claims]
    ledger.begin_send(ids[2])

    moved = ledger.settle_many(ids, Settlement(DeliveryState.SUPPRESSED,
                                               reason="no contact consent"))

    assert moved == 2
    assert ledger.state_counts("checkup_reminder", "2024-02-15") == {
        "suppressed": 2, "sending": 1}
    assert [row.id for row in ledger.ambiguous("checkup_reminder")] == [ids[2]]
    assert ledger.ambiguous("other_campaign") == []


def test_settle_many_over_in_list_size(ledger: Ledger) -> None:
    claims = ledger.claim_many(requests([f"p-{n}" for n in range(2000)]))
    moved = ledger.settle_many([claim.delivery_id for claim in claims],
                               Settlement(DeliveryState.RENDER_FAILED))
    assert moved == 2000


def test_insert_skipping_duplicates_dialect(ledger: Ledger) -> None:
    statement = insert_skipping_duplicates(ledger.engine, Suppression.__table__,
                                           ["address_hash", "scope"])
    sql = str(statement.compile(dialect=postgresql.dialect()))
    row = {"address_hash": "h-1", "scope": "all", "reason": "bounced",
           "profile_id": None, "created_at": datetime.now(UTC)}

    counted = statement.returning(Suppression.__table__.c.id)
    with ledger.engine.begin() as connection:
        first = connection.execute(counted, [row]).all()
        again = connection.execute(counted, [row, {**row, "scope": "care"}]).all()

    assert "ON CONFLICT (address_hash, scope) DO NOTHING" in sql
    assert len(first) == 1
    assert len(again) == 1
    assert ledger.is_suppressed("h-1", Purpose.CARE)


def test_times_exact_in_other_session_zone(ledger: Ledger) -> None:
    """The fixture's session zone is UTC+05:30; times must not move by it."""
    before = datetime.now(UTC)
    claim = ledger.claim(campaign="c", run_key="r", profile_id="p-1",
                         purpose=Purpose.CARE)
    ledger.settle(claim.delivery_id, Settlement(DeliveryState.SENT))
    after = datetime.now(UTC)

    with Session(ledger.engine) as session:
        stored = session.exec(select(Delivery.updated_at)).one()[0]
        # A naive bound time, as the segment selection's cap window binds
        # it, must mean UTC: an hour ahead of now counts nothing.
        naive_now = datetime.now(UTC).replace(tzinfo=None)
        counts = [session.exec(
            select(func.count(Delivery.id))
            .where(Delivery.updated_at >= bindparam("since", naive_now + shift,
                                                   type_=DateTime()))).one()[0]
            for shift in (timedelta(hours=-1), timedelta(hours=1))]
    minute = timedelta(minutes=1)

    assert before <= stored <= after
    assert counts == [1, 0]
    assert ledger.sent_since("p-1", datetime.now(UTC) - minute) == 1
    assert ledger.sent_since("p-1", datetime.now(UTC) + minute) == 0
