"""The ``ledger.url`` setting: what carepost.yaml may name as the ledger.

These checks need no server.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from carepost.core.settings import LedgerSettings


@pytest.mark.parametrize(("given", "stored"), [
    ("postgresql://carepost@127.0.0.1:5432/carepost",
     "postgresql+psycopg://carepost@127.0.0.1:5432/carepost"),
    ("postgresql+psycopg://carepost@db.example.org/carepost?sslmode=verify-full",
     "postgresql+psycopg://carepost@db.example.org/carepost?sslmode=verify-full"),
    ("postgresql:///carepost?host=/var/run/postgresql",
     "postgresql+psycopg:///carepost?host=%2Fvar%2Frun%2Fpostgresql"),
    ("sqlite:////srv/carepost/ledger.db", "sqlite:////srv/carepost/ledger.db"),
    ("postgresql://carepost@127.0.0.1/carepost?host=localhost",
     "postgresql+psycopg://carepost@127.0.0.1/carepost?host=localhost"),
    ("postgresql://carepost@127.0.0.1/c?hostaddr=10.0.0.5&sslmode=verify-full",
     "postgresql+psycopg://carepost@127.0.0.1/c?hostaddr=10.0.0.5&sslmode=verify-full"),
])
def test_ledger_url_accepted(given: str, stored: str) -> None:
    assert LedgerSettings(url=given).url == stored


@pytest.mark.parametrize(("given", "message"), [
    ("postgresql://carepost:s3cret@127.0.0.1/carepost", "contains a password"),
    ("postgresql://carepost@db.example.org/carepost", "sslmode=verify-full"),
    ("postgresql://carepost@db.example.org/carepost?sslmode=require",
     "sslmode=verify-full"),
    ("mysql://carepost@127.0.0.1/carepost", "mysql is not supported"),
    ("postgresql+psycopg2://carepost@127.0.0.1/carepost", "not supported"),
    ("not a url", "not a database URL"),
    # libpq reads these query parameters too, and they win over the URL's.
    ("postgresql://carepost@127.0.0.1/carepost?password=s3cret", "contains a password"),
    ("postgresql://carepost@127.0.0.1/carepost?host=127.0.0.2", "on 127.0.0.2"),
    ("postgresql://carepost@127.0.0.1/carepost?hostaddr=10.0.0.5", "on 10.0.0.5"),
    ("postgresql://carepost@127.0.0.1/carepost?host=127.0.0.1,db.example.org",
     "on db.example.org"),
    ("postgresql://carepost@127.0.0.1/carepost?service=prod", "libpq service"),
])
def test_ledger_url_rejected(given: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as raised:
        LedgerSettings(url=given)
    assert "s3cret" not in str(raised.value.errors()[0]["ctx"]["error"])


def test_default_ledger_is_sqlite() -> None:
    assert LedgerSettings().url is None
