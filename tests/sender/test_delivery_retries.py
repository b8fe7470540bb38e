"""The delivery pipeline's 4xx retries, send_by expiry, bounce suppression
and TLS-status skip, against scripted STARTTLS servers and a SQLite ledger."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlmodel import Session, select

from carepost.connectors.smtp import TlsSender
from carepost.connectors.tls_status import DomainStatus, TlsStatusStore
from carepost.core.campaign import Campaign
from carepost.core.schema import create_tables
from carepost.core.settings import SmtpSettings, load_settings
from carepost.core.states import DeliveryState, Purpose
from carepost.flows.delivery import RunContext, deliver_batch
from carepost.ledger import Delivery, Ledger, Suppression, hash_address
from carepost.templates import TemplateLibrary
from tests.conftest import REPO

from .conftest import MxServers, SenderForMx, SettingsFor, StartServer
from .dns_server import DnsServer
from .servers import Script

RUN_DATE = date(2024, 2, 15)
ADDRESS_KEY = b"retry-test-key"
PROFILES = {"p-1": "ok1@example.test", "p-2": "ok2@example.test",
            "p-3": "ok3@example.test"}
CARE = Campaign(name="checkup_reminder", segment="s", template="checkup_reminder",
                purpose=Purpose.CARE)
FAST_RETRY = {"retry_base_seconds": 0.05, "retry_max_seconds": 0.2,
              "retry_in_run_seconds": 3.0}


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    create_tables(conn)
    for profile_id, email in PROFILES.items():
        conn.execute(
            "INSERT INTO profiles (profile_id, email, first_name, timezone, language,"
            " deceased_at, consent_marketing, consent_contact, traits)"
            " VALUES (?, ?, 'Ana', 'America/Chicago', 'en', NULL, true, true, '{}')",
            [profile_id, email])
    yield conn
    conn.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield opened
    opened.close()


def run_for(warehouse: duckdb.DuckDBPyConnection, ledger: Ledger, sender: TlsSender,
            smtp: SmtpSettings, campaign: Campaign = CARE) -> RunContext:
    settings = load_settings(REPO / "carepost.yaml").model_copy(update={"smtp": smtp})
    library = TemplateLibrary(REPO / "templates/library", settings.practice)
    return RunContext(
        settings=settings, campaign=campaign, template=library.get(campaign.template),
        run_key=RUN_DATE.isoformat(), run_date=RUN_DATE, ledger=ledger,
        warehouse=warehouse, sender=sender, address_key=ADDRESS_KEY,
        token_keys={"k1": b"test-secret"})


def rows(ledger: Ledger) -> dict[str, Delivery]:
    with Session(ledger.engine) as session:
        return {row.profile_id: row for row in session.exec(select(Delivery))}


async def deliver(warehouse: duckdb.DuckDBPyConnection, ledger: Ledger,
                  smtp: SmtpSettings, campaign: Campaign = CARE,
                  **sender_options: Any) -> dict[str, int]:
    async with TlsSender(smtp, **sender_options) as sender:
        run = run_for(warehouse, ledger, sender, smtp, campaign)
        return dict(await deliver_batch(run, list(PROFILES)))


async def test_421_retried_then_sent(start_server: StartServer,
                                     settings_for: SettingsFor, warehouse, ledger
                                     ) -> None:
    script = Script(rcpt_replies={"ok1@example.test": "421 4.7.0 try again later"},
                    rcpt_reply_limit=2)
    server = start_server(script)

    counts = await deliver(warehouse, ledger, settings_for(server, **FAST_RETRY))

    assert counts == {"sent": 3}
    assert rows(ledger)["p-1"].attempts == 3
    assert rows(ledger)["p-2"].attempts == 1
    assert server.accepted == 3
    with Session(ledger.engine) as session:
        assert session.exec(select(Suppression)).all() == []


async def test_deferral_expires_at_send_by(start_server: StartServer,
                                           settings_for: SettingsFor, warehouse,
                                           ledger) -> None:
    server = start_server(Script(rcpt_replies={
        "ok1@example.test": "451 4.3.0 temporary failure"}))
    campaign = CARE.model_copy(update={"send_by": timedelta(seconds=1)})
    smtp = settings_for(server, retry_base_seconds=0.3, retry_max_seconds=5,
                        retry_in_run_seconds=10)

    counts = await deliver(warehouse, ledger, smtp, campaign)

    assert counts == {"sent": 2, "expired": 1}
    row = rows(ledger)["p-1"]
    assert row.state == DeliveryState.SUPPRESSED
    assert (row.reason or "").startswith("expired:")
    assert "451" in (row.reason or "")
    assert "example.test" not in (row.reason or "")


async def test_deferred_beyond_budget_left_for_next_run(
    start_server: StartServer, settings_for: SettingsFor, warehouse, ledger
) -> None:
    server = start_server(Script(rcpt_replies={
        "ok1@example.test": "450 4.2.1 mailbox busy"}))
    smtp = settings_for(server, retry_base_seconds=60, retry_in_run_seconds=1)

    counts = await deliver(warehouse, ledger, smtp)

    assert counts == {"sent": 2, "deferred": 1}
    assert rows(ledger)["p-1"].state == DeliveryState.DEFERRED
    assert rows(ledger)["p-1"].attempts == 1


async def test_rerun_after_send_by_expires_without_sending(
    start_server: StartServer, settings_for: SettingsFor, warehouse, ledger
) -> None:
    server = start_server(Script(rcpt_replies={
        "ok1@example.test": "450 4.2.1 mailbox busy"}))
    smtp = settings_for(server, retry_base_seconds=60, retry_in_run_seconds=0)
    await deliver(warehouse, ledger, smtp)
    with Session(ledger.engine) as session:
        row = session.exec(select(Delivery).where(Delivery.profile_id == "p-1")).one()
        row.created_at = datetime.now(UTC) - timedelta(days=2)
        session.add(row)
        session.commit()
    rcpts_before = server.count("RCPT")

    counts = await deliver(warehouse, ledger, smtp)

    assert counts == {"already_done": 2, "expired": 1}
    assert server.count("RCPT") == rcpts_before
    assert "450" in (rows(ledger)["p-1"].reason or "")


async def test_550_bounces_one_and_suppresses(start_server: StartServer,
                                              settings_for: SettingsFor, warehouse,
                                              ledger) -> None:
    server = start_server(Script(rcpt_replies={
        "ok2@example.test": "550 5.1.1 no such user"}))

    counts = await deliver(warehouse, ledger, settings_for(server, **FAST_RETRY))

    assert counts == {"sent": 2, "bounced": 1}
    assert server.accepted == 2
    assert server.count("RCPT") == 3
    assert rows(ledger)["p-2"].attempts == 1
    address_hash = hash_address(ADDRESS_KEY, "ok2@example.test")
    assert ledger.is_suppressed(address_hash, Purpose.MARKETING)
    assert ledger.is_suppressed(address_hash, Purpose.CARE)


async def test_lost_reply_stays_sending(start_server: StartServer,
                                        settings_for: SettingsFor, warehouse,
                                        ledger) -> None:
    server = start_server(Script(close_after_data=True))
    smtp = settings_for(server, **FAST_RETRY)

    first = await deliver(warehouse, ledger, smtp)
    again = await deliver(warehouse, ledger, smtp)

    assert first == {"ambiguous": 3}
    assert again == {"ambiguous": 3}
    assert len(server.messages) == 3
    assert len(ledger.ambiguous()) == 3


async def test_known_no_tls_domain_skipped(dns_server: DnsServer,
                                           mx_servers: MxServers,
                                           mx_sender: SenderForMx, warehouse,
                                           ledger) -> None:
    setup = mx_servers({"mx1.example.test": None})
    dns_server.add_mx("example.test", (10, "mx1.example.test"))
    store = TlsStatusStore(ledger.engine)
    store.record(DomainStatus("example.test", "mx1.example.test", 25, False, None,
                              None, None, None, "server did not offer STARTTLS",
                              datetime.now(UTC)))
    sender = mx_sender(setup, store=store)

    async with sender:
        run = run_for(warehouse, ledger, sender, SmtpSettings(mode="mx"))
        counts = dict(await deliver_batch(run, list(PROFILES)))

    assert counts == {"dropped_no_tls": 3}
    assert setup.servers["mx1.example.test"].sessions == 0
    reason = rows(ledger)["p-1"].reason or ""
    assert "no STARTTLS" in reason
    assert "example.test" not in reason


async def test_mx_route_recorded_in_ledger(dns_server: DnsServer,
                                           mx_servers: MxServers,
                                           mx_sender: SenderForMx, warehouse,
                                           ledger) -> None:
    setup = mx_servers({"mx1.example.test": None})
    dns_server.add_mx("example.test", (10, "mx1.example.test"))
    sender = mx_sender(setup)

    async with sender:
        run = run_for(warehouse, ledger, sender, SmtpSettings(mode="mx"))
        counts = dict(await deliver_batch(run, list(PROFILES)))

    assert counts == {"sent": 3}
    row = rows(ledger)["p-1"]
    route = TlsStatusStore(ledger.engine).route(row.id)
    assert route is not None
    assert route.mx_host == "mx1.example.test"
    assert route.cert_verified
    assert row.cert_sha256
    assert row.tls_version
    assert row.tls_cipher
    status = TlsStatusStore(ledger.engine).get("example.test")
    assert status is not None and status.supports_tls
