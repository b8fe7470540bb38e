"""The per-recipient pipeline against a real DuckDB file, SQLite ledger
and STARTTLS server, without Prefect.

Addresses are on the reserved example.test domain; the profiles are
written by the tests themselves.
"""

from __future__ import annotations

import asyncio
import mailbox
from datetime import date
from pathlib import Path

import duckdb
import pytest

from carepost.connectors.local_smtp import LocalTlsSmtpServer
from carepost.connectors.smtp import TlsSender
from carepost.core.campaign import Campaign, FrequencyCap
from carepost.core.schema import create_tables
from carepost.core.settings import load_settings
from carepost.core.states import DeliveryState, Purpose
from carepost.flows.delivery import RunContext, deliver_batch
from carepost.ledger import Ledger, hash_address
from carepost.templates import TemplateLibrary
from tests.conftest import REPO

RUN_DATE = date(2024, 2, 15)
PROFILES = [
    # profile_id, email, first_name, deceased_at, marketing, contact
    ("p-ok-1", "ok1@example.test", "Ana", None, True, True),
    ("p-ok-2", "ok2@example.test", "Ben", None, True, True),
    ("p-dead", "dead@example.test", "Cy", "2023-05-01 00:00:00+00", True, True),
    ("p-no-mkt", "nomkt@example.test", "Di", None, False, True),
    ("p-no-contact", "nocontact@example.test", "Ed", None, True, False),
    ("p-no-email", None, "Flo", None, True, True),
    ("p-suppressed", "gone@example.test", "Gus", None, True, True),
]


@pytest.fixture
def smtp_server(tmp_path: Path):
    with LocalTlsSmtpServer(tmp_path / "mailbox") as server:
        yield server


@pytest.fixture
def warehouse(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    create_tables(conn)
    for pid, email, first, deceased, marketing, contact in PROFILES:
        conn.execute(
            "INSERT INTO profiles (profile_id, email, first_name, timezone, language,"
            " deceased_at, consent_marketing, consent_contact, traits)"
            " VALUES (?, ?, ?, 'America/Chicago', 'en', ?, ?, ?, '{}')",
            [pid, email, first, deceased, marketing, contact],
        )
    yield conn
    conn.close()


def _run(tmp_path: Path, warehouse, sender, ledger, campaign: Campaign) -> RunContext:
    settings = load_settings(REPO / "carepost.yaml")
    library = TemplateLibrary(REPO / "templates/library", settings.practice)
    return RunContext(
        settings=settings, campaign=campaign, template=library.get(campaign.template),
        run_key=RUN_DATE.isoformat(), run_date=RUN_DATE, ledger=ledger,
        warehouse=warehouse, sender=sender, address_key=b"test-key",
        token_keys={"k1": b"test-secret"},
    )


def _smtp(server: LocalTlsSmtpServer):
    settings = load_settings(REPO / "carepost.yaml").smtp
    return settings.model_copy(update={
        "host": server.host, "port": server.port, "ca_file": str(server.ca_file),
        "username": None, "password_env": None})


MARKETING = Campaign(name="diabetes_education", segment="s",
                     template="diabetes_education", purpose=Purpose.MARKETING)
CARE = Campaign(name="checkup_reminder", segment="s",
                template="checkup_reminder", purpose=Purpose.CARE)


async def test_send_time_checks(tmp_path, warehouse, smtp_server) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.suppress(hash_address(b"test-key", "gone@example.test"),
                    scope="marketing", reason="unsubscribed")
    async with TlsSender(_smtp(smtp_server)) as sender:
        run = _run(tmp_path, warehouse, sender, ledger, MARKETING)
        counts = await deliver_batch(run, [p[0] for p in PROFILES])

    assert counts["sent"] == 2
    assert counts["suppressed"] == 5
    reasons = {row.profile_id: row.reason for row in _rows(ledger)}
    assert reasons["p-dead"] == "deceased"
    assert reasons["p-no-mkt"] == "no marketing consent"
    assert reasons["p-no-contact"] == "no contact consent"
    assert reasons["p-no-email"] == "no email address"
    assert reasons["p-suppressed"] == "address on the suppression list"
    assert smtp_server.messages_received == 2


async def test_care_needs_contact_consent(tmp_path, warehouse, smtp_server) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    async with TlsSender(_smtp(smtp_server)) as sender:
        run = _run(tmp_path, warehouse, sender, ledger, CARE)
        counts = await deliver_batch(run, ["p-no-mkt", "p-no-contact"])

    assert counts == {"sent": 1, "suppressed": 1}
    reasons = {row.profile_id: row.reason for row in _rows(ledger)}
    assert reasons["p-no-contact"] == "no contact consent"


async def test_concurrent_executions_send_once(tmp_path, warehouse,
                                               smtp_server) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ids = ["p-ok-1", "p-ok-2", "p-no-mkt"]
    async with TlsSender(_smtp(smtp_server)) as first, \
            TlsSender(_smtp(smtp_server)) as second:
        runs = [_run(tmp_path, warehouse, s, ledger, CARE) for s in (first, second)]
        results = await asyncio.gather(*(deliver_batch(r, ids) for r in runs))

    total = results[0] + results[1]
    assert total["sent"] == 3
    assert smtp_server.messages_received == 3
    assert len(mailbox.Maildir(smtp_server.maildir)) == 3


async def test_frequency_cap(tmp_path, warehouse, smtp_server) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    capped = MARKETING.model_copy(update={
        "frequency_cap": FrequencyCap(max_messages=1, per_days=7)})
    async with TlsSender(_smtp(smtp_server)) as sender:
        first = _run(tmp_path, warehouse, sender, ledger, capped)
        await deliver_batch(first, ["p-ok-1"])
        second = _run(tmp_path, warehouse, sender, ledger, capped)
        second.run_key = "2024-02-16"
        counts = await deliver_batch(second, ["p-ok-1"])

    assert counts == {"suppressed": 1}
    assert smtp_server.messages_received == 1


async def test_frequency_cap_across_campaigns_same_date(tmp_path, warehouse,
                                                       smtp_server) -> None:
    """Two capped campaigns run for the same date mail a patient once."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    cap = FrequencyCap(max_messages=1, per_days=7)
    first_campaign = CARE.model_copy(update={"name": "cap_a", "frequency_cap": cap})
    second_campaign = CARE.model_copy(update={"name": "cap_b", "frequency_cap": cap})
    async with TlsSender(_smtp(smtp_server)) as sender:
        await deliver_batch(_run(tmp_path, warehouse, sender, ledger, first_campaign),
                            ["p-ok-1"])
        counts = await deliver_batch(
            _run(tmp_path, warehouse, sender, ledger, second_campaign), ["p-ok-1"])

    assert counts == {"suppressed": 1}
    assert smtp_server.messages_received == 1


def _rows(ledger: Ledger):
    from sqlmodel import Session, select

    from carepost.ledger import Delivery

    with Session(ledger.engine) as session:
        return list(session.exec(select(Delivery)))


async def test_sent_rows_carry_tls_proof(tmp_path, warehouse, smtp_server) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    async with TlsSender(_smtp(smtp_server)) as sender:
        await deliver_batch(_run(tmp_path, warehouse, sender, ledger, CARE), ["p-ok-1"])

    (row,) = _rows(ledger)
    assert row.state == DeliveryState.SENT
    assert row.tls_version in ("TLSv1.2", "TLSv1.3")
    assert row.tls_cipher
    assert len(row.cert_sha256) == 64


async def test_injected_address_never_reaches_server(tmp_path, warehouse,
                                                     smtp_server) -> None:
    # The files connector quarantines such a value; this row bypasses it to
    # prove the MIME builder and the sender's guard stop it later.
    warehouse.execute(
        "INSERT INTO profiles (profile_id, email, first_name, timezone, language,"
        " consent_marketing, consent_contact, traits) VALUES (?, ?, 'Hal',"
        " 'America/Chicago', 'en', true, true, '{}')",
        ["p-inject", "sam@example.test>\r\nRCPT TO:<leak@evil.example.test"],
    )
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    async with TlsSender(_smtp(smtp_server)) as sender:
        run = _run(tmp_path, warehouse, sender, ledger, CARE)
        counts = await deliver_batch(run, ["p-inject", "p-ok-1"])

    assert counts["sent"] == 1
    assert smtp_server.messages_received == 1
    (row,) = [r for r in _rows(ledger) if r.profile_id == "p-inject"]
    assert row.state in (DeliveryState.RENDER_FAILED, DeliveryState.SUPPRESSED)
    assert "leak" not in (row.reason or "")


async def test_reentry_skips_recent_recipient(tmp_path, warehouse, smtp_server) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    daily = CARE.model_copy(update={"reentry_days": 14})
    async with TlsSender(_smtp(smtp_server)) as sender:
        first = _run(tmp_path, warehouse, sender, ledger, daily)
        await deliver_batch(first, ["p-ok-1"])
        second = _run(tmp_path, warehouse, sender, ledger, daily)
        second.run_key = "2024-02-16"
        counts = await deliver_batch(second, ["p-ok-1"])

    assert counts == {"suppressed": 1}
    assert smtp_server.messages_received == 1
    reasons = [row.reason for row in _rows(ledger) if row.run_key == "2024-02-16"]
    assert reasons == ["already sent this campaign within 14 days"]


async def test_render_failure_retried_on_rerun(tmp_path, warehouse,
                                               smtp_server) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    async with TlsSender(_smtp(smtp_server)) as sender:
        broken = _run(tmp_path, warehouse, sender, ledger, CARE)
        broken.settings = broken.settings.model_copy(update={
            "tracking": broken.settings.tracking.model_copy(
                update={"base_url": "http://links.example.test"})})
        first = await deliver_batch(broken, ["p-ok-1"])
        fixed = _run(tmp_path, warehouse, sender, ledger, CARE)
        second = await deliver_batch(fixed, ["p-ok-1"])

    assert first == {"render_failed": 1}
    assert second == {"sent": 1}
    assert smtp_server.messages_received == 1
