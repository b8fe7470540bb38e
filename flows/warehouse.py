"""Open the DuckDB warehouse for writing, waiting out another process's lock.

DuckDB lets one process write a database file, or several read it, and a
second process fails at once instead of waiting. ``carepost serve`` keeps
the warehouse open read-only while webhooks arrive and releases it after
two idle seconds, so a scheduled campaign or a sync started meanwhile
waits here for the lock instead of failing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import duckdb

from carepost.core.errors import CarepostError

log = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 120.0
_RETRY_SECONDS = 0.5


class WarehouseBusy(CarepostError):
    """Another process kept the warehouse locked for the whole wait."""


def connect_for_writing(path: Path, wait_seconds: float = LOCK_WAIT_SECONDS
                        ) -> duckdb.DuckDBPyConnection:
    """Return a read-write connection, retrying while another process holds the lock."""
    deadline = time.monotonic() + wait_seconds
    waited = False
    while True:
        try:
            connection = duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                raise WarehouseBusy(
                    f"warehouse {path} stayed locked by another process for "
                    f"{wait_seconds:.0f} s",
                    hint="stop the other carepost process or retry later",
                ) from None
            if not waited:
                log.info("warehouse %s is locked by another process; waiting", path)
                waited = True
            time.sleep(_RETRY_SECONDS)
            continue
        if waited:
            log.info("warehouse %s lock acquired", path)
        return connection
