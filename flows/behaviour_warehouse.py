"""The warehouse connection of the behaviour pass, optionally kept open.

Opening the DuckDB file of the sample project took about 30 ms on the
2-core development machine (timed ``duckdb.connect`` calls, see
docs/benchmarks.md), more than the rest of a pass of a few sends. ``carepost serve`` therefore keeps one read-only
connection open while webhooks keep arriving and releases it once the
dispatcher has been idle for a moment.

DuckDB lets only one process open a file for writing, and no process may
write while another has it open read-only. While serve keeps it open,
``carepost sync`` and a scheduled campaign's run (a subprocess of serve)
cannot open the warehouse; they can once serve has been idle for
``WAREHOUSE_IDLE_SECONDS`` (see ``flows/serve.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb

from carepost.core.schema import create_tables

__all__ = ["WarehouseHandle"]

log = logging.getLogger(__name__)

_REQUIRED_TABLES = ("events", "profiles")


class WarehouseHandle:
    """Opens the warehouse for a pass, and keeps it open when ``keep_open``.

    Without ``keep_open`` each pass opens the file read-write (creating
    missing tables) and closes it at the end, as a one-off Prefect run
    should. With it, the connection is read-only and stays open until
    ``release``.
    """

    def __init__(self, path: Path, *, keep_open: bool = False) -> None:
        self.path = path
        self.keep_open = keep_open
        self._connection: duckdb.DuckDBPyConnection | None = None

    @property
    def is_open(self) -> bool:
        return self._connection is not None

    def connect(self) -> duckdb.DuckDBPyConnection:
        """Return the open connection, opening it first if needed.

        Raises ``duckdb.IOException`` when another process has the file
        open for writing.
        """
        if self._connection is None:
            self._connection = (self._open_read_only() if self.keep_open
                                else self._open_read_write())
        return self._connection

    def pass_finished(self) -> None:
        """Close the connection unless it is kept open between passes."""
        if not self.keep_open:
            self.release()

    def release(self) -> None:
        """Close the connection, letting other processes open the file."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
            log.debug("warehouse connection released")

    def _open_read_write(self) -> duckdb.DuckDBPyConnection:
        connection = duckdb.connect(str(self.path))
        try:
            create_tables(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _open_read_only(self) -> duckdb.DuckDBPyConnection:
        # A scheduled run or sync that needs the file meanwhile waits in
        # flows/warehouse.py until this connection is released.
        if self.path.exists():
            connection = duckdb.connect(str(self.path), read_only=True)
            if _has_tables(connection):
                return connection
            connection.close()
        # A fresh project: create the tables once, then reopen read-only.
        self._open_read_write().close()
        return duckdb.connect(str(self.path), read_only=True)


def _has_tables(connection: duckdb.DuckDBPyConnection) -> bool:
    found = {row[0] for row in connection.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_name IN (SELECT unnest(?))",
        [list(_REQUIRED_TABLES)]).fetchall()}
    return found == set(_REQUIRED_TABLES)
