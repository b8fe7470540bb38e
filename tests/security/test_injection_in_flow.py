"""Header and envelope injection through profile fields, through the whole
per-recipient pipeline: real DuckDB, SQLite ledger and STARTTLS server.

Both injections carry marker values and fail their recipient only. The
exception text, the ledger and the log records must name profile ids, never
the values.
"""

from __future__ import annotations

import logging
import mailbox
import sqlite3
from datetime import date
from pathlib import Path

import duckdb
import pytest

from carepost.connectors.local_smtp import LocalTlsSmtpServer
from carepost.connectors.smtp import TlsSender
from carepost.core.campaign import Campaign
from carepost.core.schema import create_tables
from carepost.core.settings import load_settings
from carepost.core.states import Purpose
from carepost.flows.delivery import RunContext, deliver_batch
from carepost.ledger import AuditLog, Ledger
from carepost.templates import TemplateLibrary
from tests.conftest import REPO

RUN_DATE = date(2024, 2, 15)
NAME_MARKER = "Qzvmarkername"
CRLF_NAME = f"{NAME_MARKER}\r\nBcc: leak@evil.example.test"
ADDRESS_MARKER = "qzv-addr-marker@example.test"
INJECTED_ADDRESS = f"{ADDRESS_MARKER}>\r\nRCPT TO:<leak@evil.example.test"
PROFILES = [
    ("p-ok", "ok@example.test", "Ana"),
    ("p-crlf-name", "crlf@example.test", CRLF_NAME),
    ("p-injected", INJECTED_ADDRESS, "Ben"),
]
CARE = Campaign(name="checkup_reminder", segment="s", template="checkup_reminder",
                purpose=Purpose.CARE)


@pytest.fixture
def warehouse(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    create_tables(conn)
    for profile_id, email, first_name in PROFILES:
        conn.execute(
            "INSERT INTO profiles (profile_id, email, first_name, timezone, language,"
            " consent_marketing, consent_contact, traits)"
            " VALUES (?, ?, ?, 'America/Chicago', 'en', true, true, '{}')",
            [profile_id, email, first_name])
    yield conn
    conn.close()


async def _deliver(tmp_path: Path, warehouse: duckdb.DuckDBPyConnection,
                   server: LocalTlsSmtpServer) -> tuple[dict[str, int], str]:
    settings = load_settings(REPO / "carepost.yaml")
    smtp = settings.smtp.model_copy(update={
        "host": server.host, "port": server.port, "ca_file": str(server.ca_file),
        "username": None, "password_env": None})
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger, audit = Ledger(url), AuditLog(url)
    library = TemplateLibrary(REPO / "templates/library", settings.practice)
    async with TlsSender(smtp) as sender:
        run = RunContext(
            settings=settings, campaign=CARE, template=library.get(CARE.template),
            run_key=RUN_DATE.isoformat(), run_date=RUN_DATE, ledger=ledger,
            warehouse=warehouse, sender=sender, address_key=b"k",
            token_keys={"k1": b"s"}, audit=audit)
        try:
            counts = dict(await deliver_batch(run, [p[0] for p in PROFILES]))
            failure = ""
        except Exception as exc:  # the assertion below reports it
            counts, failure = {}, f"{type(exc).__name__}: {exc}"
    ledger.close()
    audit.close()
    return counts, failure


def _ledger_text(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        tables = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = [repr(connection.execute(f"SELECT * FROM {name}").fetchall())
                for name in tables]
    return "\n".join(rows)


async def test_injection_fails_one_recipient_only(
        tmp_path: Path, warehouse: duckdb.DuckDBPyConnection,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with LocalTlsSmtpServer(tmp_path / "mailbox") as server:
        counts, failure = await _deliver(tmp_path, warehouse, server)
        received = server.messages_received

    assert failure == ""
    # The To and Subject header checks stop both before any SMTP command;
    # the sender's own envelope check is the second net (tests/sender).
    assert counts == {"sent": 1, "render_failed": 2}
    assert received == 1
    messages = list(mailbox.Maildir(tmp_path / "mailbox"))
    assert len(messages) == 1
    assert "evil" not in messages[0].as_string()

    text = _ledger_text(tmp_path / "ledger.db") + caplog.text
    for marker in (NAME_MARKER, ADDRESS_MARKER, "evil.example.test"):
        assert marker not in text
    assert "p-crlf-name" in caplog.text or "p-crlf-name" in text
