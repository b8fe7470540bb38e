"""The segment selection reading a PostgreSQL ledger through SQLAlchemy."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from carepost.core.campaign import FrequencyCap
from carepost.core.states import DeliveryState, Purpose
from carepost.ledger import Ledger, Settlement, hash_address
from carepost.segments import RecipientRules
from tests.segments.conftest import SegmentWorld, conn, world  # noqa: F401
from tests.segments.test_segment_recipients import (  # noqa: F401  fixture
    KEY,
    RUN_DATE,
    people,
)

pytestmark = pytest.mark.postgres

# A 7-day cap window for RUN_DATE (2024-06-15) starts here and ends at the
# end of the run date.
WINDOW_START = datetime(2024, 6, 9, tzinfo=UTC)


def send(ledger: Ledger, profile_id: str, run_key: str, when: datetime) -> None:
    claim = ledger.claim(campaign="other", run_key=run_key, profile_id=profile_id,
                         purpose=Purpose.CARE)
    ledger.settle(claim.delivery_id, Settlement(DeliveryState.SENT))
    with ledger.engine.begin() as connection:
        connection.execute(text("UPDATE deliveries SET updated_at = :when "
                                "WHERE id = :id"),
                           {"when": when, "id": claim.delivery_id})


def test_suppressed_and_capped_removed(people: SegmentWorld, ledger: Ledger,
                                       ledger_url: str) -> None:
    """The session zone is UTC+05:30, so the window start must be read as UTC.

    The last send to ``ok`` was three hours before the window. Read in the
    session zone, the window would start 5.5 hours earlier and cap ``ok``.
    """
    ledger.suppress(hash_address(KEY, "unsub@example.test"), scope="all",
                    reason="unsubscribed")
    send(ledger, "busy", "2024-06-12", WINDOW_START + timedelta(days=3))
    send(ledger, "ok", "2024-06-08", WINDOW_START - timedelta(hours=3))
    rules = RecipientRules(purpose=Purpose.CARE, ledger_url=ledger_url,
                           address_hash=functools.partial(hash_address, KEY),
                           frequency_cap=FrequencyCap(max_messages=1, per_days=7))

    selection = people.library().select_recipients(
        people.conn, "everyone", as_of=RUN_DATE, rules=rules)

    assert selection.ledger_read_by == "sqlalchemy"
    assert selection.profile_ids == ["ok"]
    assert selection.removed["suppressed"] == 1
    assert selection.removed["frequency_cap"] == 1
