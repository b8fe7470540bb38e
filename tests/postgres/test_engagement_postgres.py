"""Tracking routes, engagement rows and conversions on a PostgreSQL ledger.

The tracking route tests of ``tests/service`` (real uvicorn server) and the
conversion tests of ``tests/engagement`` run here again unchanged: their
``ledger`` fixture resolves to this folder's, a ledger in a fresh
PostgreSQL schema. The service fixtures are imported from their conftest.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from carepost.core.states import Purpose
from carepost.ledger import Ledger
from carepost.ledger.engagement import Engagement, Hit, Verdict
from tests.engagement.test_conversions import (  # noqa: F401  run again
    test_conversion_goes_to_last_human_touch,
    test_conversion_outside_window_is_unattributed,
    test_machine_touch_does_not_attribute,
    test_other_event_types_are_not_goals,
    test_repeated_event_id_counts_once,
)
from tests.service.conftest import (  # noqa: F401  fixtures of the tests below
    add_sent_delivery,
    client,
    secret,
    service,
    settings,
)
from tests.service.test_tracking_routes import (  # noqa: F401  run again
    test_click_redirects_to_signed_url,
    test_click_rejects_other_urls,
    test_click_soon_after_delivery_is_machine,
    test_link_burst_marks_every_click_machine,
    test_one_click_post_suppresses_its_category,
    test_open_from_proxy_is_machine,
    test_open_pixel_returns_gif_and_records_human,
    test_open_right_after_delivery_is_machine,
    test_store_holds_no_ip_or_user_agent,
    test_unsubscribe_get_changes_nothing,
    test_unsubscribe_post_without_one_click_is_400,
    test_unsubscribe_unknown_delivery_is_404,
)

pytestmark = pytest.mark.postgres

T0 = datetime(2024, 3, 1, 9, 0, 12, 345678, tzinfo=UTC)


def test_repeated_hit_recorded_once(ledger: Ledger) -> None:
    delivery_id = add_sent_delivery(ledger, "p-1", campaign="checkup_reminder",
                                    purpose=Purpose.CARE)
    engagement = Engagement(ledger)
    delivery = engagement.delivery(delivery_id)
    hit = Hit(kind="click", verdict=Verdict.HUMAN, rule=None, occurred_at=T0,
              link_index=2)

    first = engagement.record(delivery, hit)
    again = engagement.record(delivery, hit)
    clicks = engagement.clicks_since(delivery_id, T0 - timedelta(seconds=1))

    assert first is not None
    assert again is None
    assert [click.occurred_at for click in clicks] == [T0]
    assert len(ledger.pending_events()) == 1


def test_mark_machine_replaces_event(ledger: Ledger) -> None:
    delivery_id = add_sent_delivery(ledger, "p-1", campaign="checkup_reminder",
                                    purpose=Purpose.CARE)
    engagement = Engagement(ledger)
    delivery = engagement.delivery(delivery_id)
    row = engagement.record(delivery, Hit(kind="click", verdict=Verdict.HUMAN,
                                          rule=None, occurred_at=T0, link_index=0))

    assert engagement.mark_machine([row], "link_burst") == 1
    [event] = ledger.pending_events()
    assert '"machine": true' in event.payload
    assert engagement.clicks_since(delivery_id, T0)[0].verdict == "machine"


def test_dead_letter_counts_and_releases(ledger: Ledger) -> None:
    delivery_id = add_sent_delivery(ledger, "p-1", campaign="checkup_reminder",
                                    purpose=Purpose.CARE)
    engagement = Engagement(ledger)
    engagement.record(engagement.delivery(delivery_id),
                      Hit(kind="open", verdict=Verdict.HUMAN, rule=None,
                          occurred_at=T0))
    [event] = engagement.pending_events()

    assert engagement.dead_letter(event.event_id, sink="segment",
                                  reason="too large", size_bytes=40_000) == 1
    assert engagement.dead_letter(event.event_id, sink="segment",
                                  reason="too large", size_bytes=40_000) == 2
    assert engagement.pending_events() == []
    assert engagement.release_dead_letter(event.event_id)
    assert [queued.event_id for queued in engagement.pending_events()] == [
        event.event_id]
