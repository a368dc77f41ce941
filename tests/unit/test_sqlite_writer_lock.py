"""SqliteDatabase's writer lock (adapters/sqlite_base.py): writers of one file, in one process
or several, take turns through a flock beside it; a holder that dies frees it; a holder that
hangs ends the wait with StoreUnavailable."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import structlog.testing

from vim_cluster.adapters import sqlite_base
from vim_cluster.adapters.sqlite_base import SqliteDatabase, WriterLock
from vim_cluster.errors import StoreUnavailable

SCHEMA = ["CREATE TABLE t (x INTEGER)"]

HOLD = """
import sys, time
from vim_cluster.adapters.sqlite_base import WriterLock
lock = WriterLock(sys.argv[1])
with lock.held(5):
    print("held", flush=True)
    time.sleep(60)
"""


def test_two_writers_of_one_file_take_turns(tmp_path: Path) -> None:
    path = str(tmp_path / "m.db")
    first, second = SqliteDatabase(path, SCHEMA), SqliteDatabase(path, SCHEMA)
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow_writer() -> None:
        with first.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
            inside.set()
            release.wait(5)
            order.append("first commits")

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert inside.wait(5)
    threading.Timer(0.05, release.set).start()
    with second.transaction() as conn:  # waits for the first one's commit, then goes
        order.append("second writes")
        conn.execute("INSERT INTO t VALUES (2)")
    thread.join(5)
    assert order == ["first commits", "second writes"]
    with second.reading() as conn:
        assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
    first.close()
    second.close()


def test_a_holder_that_dies_frees_the_lock_and_one_that_hangs_ends_the_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "m.db")
    db = SqliteDatabase(path, SCHEMA)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, f"{path}-writer"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        monkeypatch.setattr(sqlite_base, "BUSY_TIMEOUT_MS", 200)
        with pytest.raises(StoreUnavailable, match="another process held the write lock for 0.2 s"):
            with db.transaction() as conn:
                conn.execute("INSERT INTO t VALUES (1)")
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.communicate(timeout=5)
        monkeypatch.setattr(sqlite_base, "BUSY_TIMEOUT_MS", 5_000)
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (2)")
        with db.reading() as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(2,)]
    finally:
        holder.kill()
        holder.communicate(timeout=5)
        db.close()


def test_the_lock_file_sits_beside_the_database(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path / "m.db-writer"))
    with lock.held(1):
        assert (tmp_path / "m.db-writer").exists()
    lock.close()
    lock.close()  # a store closed twice (the contract tests' reopen) must not raise


def test_a_new_database_file_is_named_in_a_warning_so_a_typo_in_its_path_shows(tmp_path: Path) -> None:
    path = tmp_path / "typo" / "directory.db"
    with structlog.testing.capture_logs() as logs:
        SqliteDatabase(str(path), []).close()
        SqliteDatabase(str(path), []).close()  # it exists now: nothing said
    assert [(e["event"], e["path"]) for e in logs] == [("sqlite_database_created", str(path))]
