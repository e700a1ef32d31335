"""Checks of the stores' files (tuner/stores.py)."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.stores import check_sqlite

# A writer that dies (kill -9) inside a transaction after SQLite has spilled pages to the file: its
# rollback journal stays behind "hot", and the next connection must roll it back before reading.
KILLED_WRITER = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size=1")
db.execute("BEGIN")
for _ in range(200):
    db.execute("INSERT INTO runs VALUES (randomblob(4000))")
os.kill(os.getpid(), signal.SIGKILL)
"""


def _store_with_hot_journal(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE runs (payload BLOB)")
        db.execute("INSERT INTO runs VALUES (x'00')")
        db.commit()
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], check=False)
    assert Path(f"{path}-journal").stat().st_size > 0


@pytest.mark.parametrize("create", [True, False])
def test_a_store_whose_writer_was_killed_mid_transaction_is_usable(tmp_path: Path, create: bool) -> None:
    path = tmp_path / "mlflow.db"
    _store_with_hot_journal(path)

    check_sqlite(path, "MLflow tracking store", "tracking.uri", create=create)

    assert not Path(f"{path}-journal").exists()  # rolled back by the check itself
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (1,)  # only what was committed
