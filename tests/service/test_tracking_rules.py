"""Human or machine: the classification rules on their own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from carepost.ledger.engagement import Verdict
from carepost.service.tracking_rules import RequestFacts, classify

SENT = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Safari/605.1"


@pytest.mark.parametrize("kind, method, agent, host, after, expected", [
    ("open", "GET", BROWSER, "198.51.100.7", 600, (Verdict.HUMAN, None)),
    ("click", "GET", BROWSER, "198.51.100.7", 600, (Verdict.HUMAN, None)),
    ("open", "HEAD", BROWSER, "198.51.100.7", 600, (Verdict.MACHINE, "head_request")),
    ("open", "GET", "Mozilla/5.0", "198.51.100.7", 600, (Verdict.MACHINE, "user_agent")),
    ("open", "GET", None, "198.51.100.7", 600, (Verdict.MACHINE, "user_agent")),
    ("click", "GET", "Mozilla/5.0 (compatible; Proofpoint URL Defense)", None, 600,
     (Verdict.MACHINE, "user_agent")),
    ("click", "GET", "python-httpx/0.27", None, 600, (Verdict.MACHINE, "user_agent")),
    ("open", "GET", BROWSER, "17.58.100.1", 600, (Verdict.MACHINE, "network")),
    ("open", "GET", BROWSER, "198.51.100.7", 1, (Verdict.MACHINE,
                                                 "open_before_delivery_window")),
    ("open", "GET", BROWSER, "198.51.100.7", 3, (Verdict.HUMAN, None)),
    ("click", "GET", BROWSER, "198.51.100.7", 5, (Verdict.MACHINE,
                                                  "click_after_delivery")),
    ("click", "GET", BROWSER, "198.51.100.7", 11, (Verdict.HUMAN, None)),
    ("click", "GET", BROWSER, "not-an-ip", 600, (Verdict.HUMAN, None)),
])
def test_classify_table(kind: str, method: str, agent: str | None, host: str | None,
                        after: float, expected: tuple) -> None:
    facts = RequestFacts(method=method, user_agent=agent, client_host=host)

    assert classify(kind, facts, SENT, SENT + timedelta(seconds=after)) == expected


def test_unknown_delivery_time_skips_timing() -> None:
    facts = RequestFacts(method="GET", user_agent=BROWSER, client_host=None)

    assert classify("click", facts, None, SENT) == (Verdict.HUMAN, None)


def test_naive_delivery_time_is_utc() -> None:
    facts = RequestFacts(method="GET", user_agent=BROWSER, client_host=None)
    naive = SENT.replace(tzinfo=None)

    assert classify("open", facts, naive, SENT + timedelta(seconds=1))[0] is Verdict.MACHINE
