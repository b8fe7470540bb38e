"""A writer waits for another process's lock on the warehouse."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from carepost.flows.warehouse import WarehouseBusy, connect_for_writing

_HOLD = """
import sys, time, duckdb
connection = duckdb.connect(sys.argv[1], read_only=True)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.close()
"""


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    duckdb.connect(str(path)).close()
    return path


def test_writer_waits_for_reader(warehouse: Path) -> None:
    holder = _hold_lock(warehouse, 1.5)
    started = time.monotonic()

    connection = connect_for_writing(warehouse, wait_seconds=30)

    assert time.monotonic() - started >= 0.5
    connection.execute("CREATE TABLE written (x INTEGER)")
    connection.close()
    holder.wait(timeout=10)


def test_writer_gives_up_after_wait(warehouse: Path) -> None:
    holder = _hold_lock(warehouse, 10)
    try:
        with pytest.raises(WarehouseBusy, match="stayed locked"):
            connect_for_writing(warehouse, wait_seconds=1)
    finally:
        holder.kill()
        holder.wait(timeout=10)
