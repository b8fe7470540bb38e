"""select_recipients: the rules no segment can forget, against a real ledger."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from carepost.core.campaign import FrequencyCap
from carepost.core.states import DeliveryState, Purpose
from carepost.ledger import Ledger, Settlement, hash_address
from carepost.segments import RecipientRules

if TYPE_CHECKING:
    from .conftest import SegmentWorld

KEY = b"test-address-key"
RUN_DATE = date(2024, 6, 15)
SPEC = "kind: condition\ndescription: everyone\nwhere: {trait: age, gte: 0}\n"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield opened
    opened.close()


@pytest.fixture
def people(world: SegmentWorld) -> SegmentWorld:
    born = date(1980, 1, 1)
    world.profile("ok", birth_date=born, email="ok@example.test", consent_contact=True)
    world.profile(
        "dead",
        birth_date=born,
        email="dead@example.test",
        consent_contact=True,
        deceased_at="2030-01-01 00:00:00+00",
    )
    world.profile("noaddr", birth_date=born, email=" ", consent_contact=True)
    world.profile("noconsent", birth_date=born, email="nc@example.test")
    world.profile(
        "unsub", birth_date=born, email="Unsub@Example.test", consent_contact=True
    )
    world.profile(
        "busy", birth_date=born, email="busy@example.test", consent_contact=True
    )
    world.write("everyone", SPEC)
    return world


def rules(
    ledger: Ledger, purpose: Purpose = Purpose.CARE, **extra: object
) -> RecipientRules:
    return RecipientRules(
        purpose=purpose,
        ledger_url=str(ledger.engine.url),
        address_hash=functools.partial(hash_address, KEY),
        **extra,  # type: ignore[arg-type]
    )


def send(
    ledger: Ledger,
    profile_id: str,
    run_key: str,
    when: datetime,
    purpose: Purpose = Purpose.CARE,
    campaign: str = "other",
) -> None:
    claim = ledger.claim(
        campaign=campaign, run_key=run_key, profile_id=profile_id, purpose=purpose
    )
    ledger.settle(claim.delivery_id, Settlement(DeliveryState.SENT))
    with ledger.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE deliveries SET updated_at = ? WHERE id = ?",
            (when.replace(tzinfo=None).isoformat(sep=" "), claim.delivery_id),
        )


def test_each_rule_removes(people: SegmentWorld, ledger: Ledger) -> None:
    ledger.suppress(
        hash_address(KEY, "unsub@example.test"), scope="all", reason="unsubscribed"
    )
    for day in (10, 12):
        send(ledger, "busy", f"2024-06-{day}", datetime(2024, 6, day, 9, tzinfo=UTC))
    cap = FrequencyCap(max_messages=2, per_days=7)
    selection = people.library().select_recipients(
        people.conn, "everyone", as_of=RUN_DATE, rules=rules(ledger, frequency_cap=cap)
    )
    assert selection.profile_ids == ["ok"]
    assert selection.segment_size == 6
    assert selection.removed == {
        "deceased": 1,
        "no_address": 1,
        "no_consent": 1,
        "suppressed": 1,
        "frequency_cap": 1,
    }
    assert selection.ledger_read_by == "sqlalchemy"


def test_without_ledger_rows(people: SegmentWorld, ledger: Ledger) -> None:
    selection = people.library().select_recipients(
        people.conn, "everyone", as_of=RUN_DATE, rules=rules(ledger)
    )
    assert selection.profile_ids == ["busy", "ok", "unsub"]


def test_suppression_scope(people: SegmentWorld, ledger: Ledger) -> None:
    ledger.suppress(
        hash_address(KEY, "unsub@example.test"),
        scope="marketing",
        reason="unsubscribed",
    )
    library = people.library()
    care = library.select_recipients(
        people.conn, "everyone", as_of=RUN_DATE, rules=rules(ledger)
    )
    assert "unsub" in care.profile_ids
    people.conn.execute("UPDATE profiles SET consent_marketing = true")
    marketing = library.select_recipients(
        people.conn,
        "everyone",
        as_of=RUN_DATE,
        rules=rules(ledger, purpose=Purpose.MARKETING),
    )
    assert "unsub" not in marketing.profile_ids
    assert marketing.removed["suppressed"] == 1


def test_consent_follows_purpose(people: SegmentWorld, ledger: Ledger) -> None:
    people.conn.execute(
        "UPDATE profiles SET consent_marketing = (profile_id = 'noconsent')"
    )
    marketing = people.library().select_recipients(
        people.conn,
        "everyone",
        as_of=RUN_DATE,
        rules=rules(ledger, purpose=Purpose.MARKETING),
    )
    # Marketing needs contact consent as well, which 'noconsent' lacks.
    assert marketing.profile_ids == []
    assert marketing.removed_ids["noconsent"] == "no contact consent"
    assert marketing.removed_ids["ok"] == "no marketing consent"
    assert marketing.removed["no_consent"] == 4

    people.conn.execute(
        "UPDATE profiles SET consent_contact = true WHERE profile_id = 'noconsent'"
    )
    marketing = people.library().select_recipients(
        people.conn,
        "everyone",
        as_of=RUN_DATE,
        rules=rules(ledger, purpose=Purpose.MARKETING),
    )
    assert marketing.profile_ids == ["noconsent"]


def test_removed_ids_carry_reasons(people: SegmentWorld, ledger: Ledger) -> None:
    ledger.suppress(
        hash_address(KEY, "unsub@example.test"), scope="all", reason="unsubscribed"
    )
    selection = people.library().select_recipients(
        people.conn, "everyone", as_of=RUN_DATE, rules=rules(ledger)
    )
    assert selection.removed_ids == {
        "dead": "deceased",
        "noaddr": "no email address",
        "noconsent": "no contact consent",
        "unsub": "address on the suppression list",
    }


def test_cap_window_and_purpose(people: SegmentWorld, ledger: Ledger) -> None:
    run_end = datetime(2024, 6, 16, tzinfo=UTC)
    send(ledger, "busy", "old", run_end - timedelta(days=8))
    send(ledger, "busy", "recent", run_end - timedelta(days=6))
    send(
        ledger,
        "busy",
        "marketing",
        run_end - timedelta(days=1),
        purpose=Purpose.MARKETING,
    )
    cap = FrequencyCap(max_messages=2, per_days=7)
    selection = people.library().select_recipients(
        people.conn, "everyone", as_of=RUN_DATE, rules=rules(ledger, frequency_cap=cap)
    )
    assert "busy" in selection.profile_ids

    send(ledger, "busy", "recent2", run_end - timedelta(days=2))
    capped = people.library().select_recipients(
        people.conn, "everyone", as_of=RUN_DATE, rules=rules(ledger, frequency_cap=cap)
    )
    assert "busy" not in capped.profile_ids


def test_cap_skips_same_run(people: SegmentWorld, ledger: Ledger) -> None:
    run_end = datetime(2024, 6, 16, tzinfo=UTC)
    send(ledger, "busy", "2024-06-15", run_end - timedelta(hours=3))
    cap = FrequencyCap(max_messages=1, per_days=7)
    rerun = people.library().select_recipients(
        people.conn,
        "everyone",
        as_of=RUN_DATE,
        rules=rules(ledger, frequency_cap=cap, excluded_run=("other", "2024-06-15")),
    )
    assert "busy" in rerun.profile_ids
    other = people.library().select_recipients(
        people.conn,
        "everyone",
        as_of=RUN_DATE,
        rules=rules(ledger, frequency_cap=cap, excluded_run=("other", "2024-06-16")),
    )
    assert "busy" not in other.profile_ids


def test_cap_counts_other_campaign_same_date(
    people: SegmentWorld, ledger: Ledger
) -> None:
    """Another campaign's run of the same date counts towards the cap."""
    run_end = datetime(2024, 6, 16, tzinfo=UTC)
    send(ledger, "busy", "2024-06-15", run_end - timedelta(hours=3), campaign="cap_a")
    cap = FrequencyCap(max_messages=1, per_days=7)
    second = people.library().select_recipients(
        people.conn,
        "everyone",
        as_of=RUN_DATE,
        rules=rules(ledger, frequency_cap=cap, excluded_run=("cap_b", "2024-06-15")),
    )
    assert "busy" not in second.profile_ids
    assert second.removed_ids["busy"] == "frequency cap reached"


def test_empty_ledger_file(people: SegmentWorld, tmp_path: Path) -> None:
    selection = people.library().select_recipients(
        people.conn,
        "everyone",
        as_of=RUN_DATE,
        rules=RecipientRules(
            purpose=Purpose.CARE,
            ledger_url=f"sqlite:///{tmp_path / 'new.db'}",
            address_hash=functools.partial(hash_address, KEY),
            frequency_cap=FrequencyCap(max_messages=1, per_days=1),
        ),
    )
    assert selection.profile_ids == ["busy", "ok", "unsub"]


def test_temporary_objects_removed(people: SegmentWorld, ledger: Ledger) -> None:
    people.library().select_recipients(
        people.conn, "everyone", as_of=RUN_DATE, rules=rules(ledger)
    )
    tables = people.conn.execute(
        "SELECT table_name FROM duckdb_tables() WHERE temporary"
    ).fetchall()
    assert tables == []
    functions = people.conn.execute(
        "SELECT function_name FROM duckdb_functions() "
        "WHERE function_name LIKE '_carepost_address_hash%'"
    ).fetchall()
    assert functions == []


def test_lifecycle_stage(world: SegmentWorld, ledger: Ledger) -> None:
    world.profile(
        "young",
        birth_date=date(2010, 1, 1),
        email="y@example.test",
        consent_contact=True,
    )
    world.profile(
        "old", birth_date=date(1950, 1, 1), email="o@example.test", consent_contact=True
    )
    world.write(
        "life",
        "kind: lifecycle\ndescription: x\nstages:\n"
        "  - {name: child, where: {trait: age, lt: 18}}\n"
        "  - {name: adult, where: {trait: age, gte: 18}}\n",
    )
    library = world.library()
    everyone = library.select_recipients(
        world.conn, "life", as_of=RUN_DATE, rules=rules(ledger)
    )
    assert everyone.profile_ids == ["old", "young"]
    adults = library.select_recipients(
        world.conn, "life", as_of=RUN_DATE, rules=rules(ledger), stage="adult"
    )
    assert adults.profile_ids == ["old"]


def test_cap_until_sets_window(people: SegmentWorld, ledger: Ledger) -> None:
    """A past-date run whose cap window ends now counts the send-time sends."""
    now = datetime.now(UTC)
    send(ledger, "busy", "older", now - timedelta(days=10))
    cap = FrequencyCap(max_messages=1, per_days=7)
    from_run_date = people.library().select_recipients(
        people.conn, "everyone", as_of=RUN_DATE, rules=rules(ledger, frequency_cap=cap)
    )
    assert "busy" not in from_run_date.profile_ids

    until_now = people.library().select_recipients(
        people.conn,
        "everyone",
        as_of=RUN_DATE,
        rules=rules(ledger, frequency_cap=cap, cap_until=now),
    )
    assert "busy" in until_now.profile_ids
