"""A ledger database that cannot be reached: one line, never the password.

The wrong-password and unknown-database cases need the server that
tests/postgres/setup.sh starts; the refused connection needs no server.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from sqlalchemy import URL, make_url
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from carepost.flows.cli import app
from carepost.ledger import AuditLog, Ledger
from carepost.ledger.database import LedgerConnectionError, create_ledger_engine

from .conftest import DEFAULT_URL, URL_ENV

WRONG_PASSWORD = "not-the-Password-42"


def _url(admin: Engine, **changes: str) -> str:
    return admin.url.set(**changes).render_as_string(hide_password=False)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_wrong_password_one_line(postgres_admin: Engine) -> None:
    url = _url(postgres_admin, password=WRONG_PASSWORD)
    user, host, port = postgres_admin.url.username, postgres_admin.url.host, \
        postgres_admin.url.port or 5432

    with pytest.raises(LedgerConnectionError) as caught:
        Ledger(url)

    message = str(caught.value)
    assert message == (f'ledger database: authentication failed for user "{user}" at '
                       f"{host}:{port} (check PGPASSWORD or ~/.pgpass)")
    assert WRONG_PASSWORD not in message


def test_unknown_database_one_line(postgres_admin: Engine) -> None:
    url = _url(postgres_admin, database="carepost_no_such_db")

    with pytest.raises(LedgerConnectionError, match=r'^ledger database: database '
                       r'"carepost_no_such_db" does not exist at \S+ \(create the '
                       r"database, or check ledger\.url in carepost\.yaml\)$"):
        AuditLog(url)


def test_refused_connection_one_line() -> None:
    port = _closed_port()
    url = f"postgresql+psycopg://carepost:{WRONG_PASSWORD}@127.0.0.1:{port}/carepost"

    with pytest.raises(LedgerConnectionError) as caught:
        Ledger(url)

    assert str(caught.value) == (
        f"ledger database: connection refused at 127.0.0.1:{port} (start PostgreSQL "
        "there, or check ledger.url in carepost.yaml)")


def test_sqlite_folder_missing(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "ledger.db"

    with pytest.raises(LedgerConnectionError, match=r"^ledger database: unable to "
                       rf"open database file at {path} "):
        Ledger(f"sqlite:///{path}")


def test_statement_errors_unchanged(tmp_path: Path) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    engine = create_ledger_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    with pytest.raises(OperationalError), engine.connect() as connection:
        connection.execute(text("SELECT * FROM no_such_table"))
    engine.dispose()


@pytest.mark.parametrize("command", [["deliveries", "ambiguous"], ["audit", "verify"],
                                     ["tls-check", "localhost:1"]])
def test_cli_wrong_password_one_line(postgres_admin: Engine, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     command: list[str]) -> None:
    given = make_url(os.environ.get(URL_ENV, DEFAULT_URL))
    # URL.set() treats None as "unchanged", so the URL is built again.
    url = URL.create(given.drivername, username=given.username, host=given.host,
                     port=given.port, database=given.database)
    config = tmp_path / "carepost.yaml"
    config.write_text(
        "practice: {name: Test Clinic, postal_address: 1 Main St}\n"
        "sender: {address: clinic@example.org, name: Test Clinic}\n"
        f"state_dir: {tmp_path / 'state'}\n"
        f"ledger: {{url: '{url.render_as_string(hide_password=False)}'}}\n")
    monkeypatch.setenv("PGPASSWORD", WRONG_PASSWORD)

    result = CliRunner().invoke(app, [*command, "--config", str(config)])

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ledger database: authentication failed "
                                    f'for user "{url.username}" at ')
    assert result.stderr.count("\n") == 1
    assert WRONG_PASSWORD not in result.output
