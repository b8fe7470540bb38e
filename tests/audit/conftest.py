"""Fixtures for the audit tests: a real SQLite ledger in a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from carepost.ledger import AuditLog, Ledger


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def ledger_path(tmp_path: Path, ledger_url: str) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def audit(ledger_url: str) -> Iterator[AuditLog]:
    Ledger(ledger_url).close()
    log = AuditLog(ledger_url)
    yield log
    log.close()
