"""Fixtures for the PostgreSQL tests: one fresh schema per test.

The server is the one ``tests/postgres/setup.sh`` starts (``.ci/run`` runs
it); set ``CAREPOST_TEST_POSTGRES_URL`` to use another. When the server
does not respond, every test that needs it is skipped with the reason.

Each test's ledger URL names its own schema in the connection's
``search_path``, so tests never read each other's rows. It also sets the
session ``TimeZone`` to UTC+05:30, so a time stored or read in the
session's zone instead of UTC shows up as wrong.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from carepost.ledger import AuditLog, Ledger

URL_ENV = "CAREPOST_TEST_POSTGRES_URL"
# The role, password and database that tests/postgres/setup.sh creates.
DEFAULT_URL = ("postgresql+psycopg://carepost_test:carepost_test@127.0.0.1:5432/"
               "carepost_test")
SESSION_TIME_ZONE = "Asia/Kolkata"


def schema_url(base: str, schema: str, **settings: str) -> str:
    """Return ``base`` with ``schema`` first in the search path and ``settings``.

    ``settings`` are server parameters (``TimeZone``, ...) for each session.
    """
    parameters = {"search_path": schema, "TimeZone": SESSION_TIME_ZONE, **settings}
    # libpq's options string separates parameters with spaces, and a space
    # inside a value is escaped with a backslash.
    options = " ".join(f"-c {name}={value.replace(' ', chr(92) + ' ')}"
                       for name, value in parameters.items())
    url = make_url(base).update_query_dict({"options": options})
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An autocommit engine on the test database; skips when it is down."""
    url = os.environ.get(URL_ENV, DEFAULT_URL)
    engine = create_engine(url, isolation_level="AUTOCOMMIT",
                           connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0]
        target = make_url(url).render_as_string(hide_password=True)
        pytest.skip(f"PostgreSQL at {target} is not reachable ({reason}); "
                    f"tests/postgres/setup.sh starts it, as .ci/run does, or set "
                    f"{URL_ENV}")
    yield engine
    engine.dispose()


@pytest.fixture
def make_schema(postgres_admin: Engine) -> Iterator:
    """Create empty schemas on request; drop them all after the test."""
    created: list[str] = []

    def make(**settings: str) -> str:
        schema = f"carepost_test_{uuid.uuid4().hex[:12]}"
        with postgres_admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        created.append(schema)
        base = postgres_admin.url.render_as_string(hide_password=False)
        return schema_url(base, schema, **settings)

    yield make
    with postgres_admin.connect() as connection:
        for schema in created:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def ledger_url(make_schema) -> str:
    return make_schema()


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    book = Ledger(ledger_url)
    yield book
    book.close()


@pytest.fixture
def audit(ledger: Ledger, ledger_url: str) -> Iterator[AuditLog]:
    log = AuditLog(ledger_url)
    yield log
    log.close()
