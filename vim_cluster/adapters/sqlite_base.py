"""What both SQLite adapters share: opening, versioned migrations, error translation.

Rules:
- WAL journal with synchronous=FULL: a committed transaction survives SIGKILL and power loss.
  `full_sync=False` (the message store's `vim.store.sync: normal`) sets synchronous=NORMAL:
  a commit still survives SIGKILL (it is in the WAL file), but the WAL is synced only at
  checkpoints, so a power loss or OS crash may lose the last commits (never corrupts).
- Several node processes on one machine may share one file. Their write transactions take
  an advisory lock on a file beside it (`PATH-writer`, `fcntl.flock`) before SQLite's own, so
  a writer that finds the file busy retries within 0.05-1 ms of its release, not after
  SQLite's busy handler's sleeps (1, 2, 5, 10, ... ms: under two nodes' group commits, their
  p99 was 7-20 ms a commit, issue 12). SQLite's busy_timeout still covers writers that do not
  take it (the sqlite3 shell). Either wait ends after BUSY_TIMEOUT_MS with StoreUnavailable.
- `transaction(wait=False)` never waits: if this adapter's connection, the write lock or
  SQLite's own lock is taken, it raises WouldWait before doing anything. The group commit
  uses it to commit on the node's event loop when nothing else is writing (issue 12).
- Checkpoints: SQLite copies the WAL into the database file, and syncs that file, inside the
  COMMIT that takes the WAL past `wal_autocheckpoint` frames (1,000 by default), which holds
  the node's event loop for the copy when the commit runs there. `background_checkpoints=True`
  (the message store with `vim.store.sync: normal`): the node's store writer calls
  `checkpoint` in a worker thread after commits instead (a passive checkpoint on a connection
  of its own: commits go on meanwhile), and a COMMIT checkpoints by itself only as a backstop,
  at CHECKPOINT_BACKSTOP_FRAMES, where the worker fell behind or the WAL could not start over
  (a write began before the worker had copied everything); by then most of it is copied. With
  `normal` a commit does not sync, and the copy was the loop's longest pause: about 10 ms every
  140 ms at 1,000 msg/s cross-node, and the p99 14.0-14.7 ms against 4.2-5.3 with the flag. With
  `full` every commit syncs anyway: the flag moved no p99 beyond the host's noise and cost
  2.4-3.2 % more server CPU a message at full rate (more, smaller checkpoints, each syncing
  the database file: a guess, not measured apart), so it stays off there (issue 12, session
  22).
- One connection per adapter, used by one thread at a time (a lock guards it).
- sqlite3 errors that mean "the database cannot serve" become StoreUnavailable here, once.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog

from ..errors import StoreUnavailable

log = structlog.get_logger()

BUSY_TIMEOUT_MS = 10_000
CHECKPOINT_BACKSTOP_FRAMES = 4_000  # WAL frames (within the WAL index's first hash table: 4,062)
_LOCK_RETRY_S = (0.00005, 0.0001, 0.0002, 0.0005, 0.001)  # then every 1 ms


class WouldWait(Exception):
    """A write transaction that could not start at once (`transaction(wait=False)`); nothing
    was done."""


class WriterLock:
    """An exclusive advisory lock on `path` (flock) that every writer process of one
    database takes around its write transaction; released by the kernel if the holder dies."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @contextlib.contextmanager
    def held(self, timeout_s: float | None) -> Iterator[None]:
        """Waits at most `timeout_s` for the lock (then StoreUnavailable); None: does not wait
        (WouldWait if another process holds it)."""
        self._acquire(timeout_s)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _acquire(self, timeout_s: float | None) -> None:
        deadline = time.monotonic() + (timeout_s or 0.0)
        for attempt in itertools.count():
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if timeout_s is None:
                    raise WouldWait from None
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(f"sqlite {self.path}: another process held the write lock "
                                           f"for {timeout_s:g} s") from None
                time.sleep(_LOCK_RETRY_S[min(attempt, len(_LOCK_RETRY_S) - 1)])

    def close(self) -> None:
        """Closes the lock file; a second call does nothing (a store may be closed twice)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SqliteDatabase:
    def __init__(self, path: str, migrations: Sequence[str], full_sync: bool = True,
                 background_checkpoints: bool = False) -> None:
        self.path = path
        self._synchronous = "FULL" if full_sync else "NORMAL"
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()  # the checkpoint connection, one thread at a time
        self._checkpointer: sqlite3.Connection | None = None
        try:
            if not Path(path).exists():  # a first start, or a typo in the path: say which file it is
                log.warning("sqlite_database_created", path=str(Path(path).resolve()))
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
            self._writer = WriterLock(f"{path}-writer")
            # Under the write lock: two processes switching a new file to WAL at once may get
            # "database is locked" at once, without SQLite's busy handler (1 open in about 60
            # when six threads opened one new file together).
            with self._writer.held(BUSY_TIMEOUT_MS / 1000):
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={self._synchronous}")
            self._conn.execute("PRAGMA foreign_keys=ON")
            if background_checkpoints:
                self._conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_BACKSTOP_FRAMES}")
            self._migrate(migrations)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"sqlite {path}: {exc}") from exc

    def _migrate(self, migrations: Sequence[str]) -> None:
        """Applies every migration not yet applied, in one write transaction: a second process
        opening the same new file waits for the lock and then finds them applied (idempotent)."""
        with self.transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            for version, script in enumerate(migrations, start=1):
                if version <= current:
                    continue
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    @contextlib.contextmanager
    def transaction(self, *, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE), committed on exit, rolled back on error.
        wait=False: raises WouldWait at once, having done nothing, if the connection, the
        write lock or SQLite's lock is taken."""
        with self._connection(wait), self._writer.held(BUSY_TIMEOUT_MS / 1000 if wait else None), self._errors():
            self._begin(wait)
            try:
                yield self._conn
            except BaseException:  # noqa: BLE001 - roll back, then re-raise
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _begin(self, wait: bool) -> None:
        if wait:
            self._conn.execute("BEGIN IMMEDIATE")
            return
        # A writer that does not take the write lock (the sqlite3 shell) would make SQLite's
        # busy handler sleep: a caller that must not wait is told instead.
        self._conn.execute("PRAGMA busy_timeout = 0")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:  # BUSY or an extended BUSY_*
                raise
            raise WouldWait from None
        finally:
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    @contextlib.contextmanager
    def reading(self, *, wait: bool = True) -> Iterator[sqlite3.Connection]:
        """The connection, for reads. wait=False: raises WouldWait at once if it is in use."""
        with self._connection(wait), self._errors():
            yield self._conn

    @contextlib.contextmanager
    def _connection(self, wait: bool) -> Iterator[None]:
        """This adapter's connection, to one thread at a time; wait=False: WouldWait at once
        if another thread has it."""
        if not self._lock.acquire(blocking=wait):
            raise WouldWait
        try:
            yield
        finally:
            self._lock.release()

    @staticmethod
    def version(conn: sqlite3.Connection) -> tuple[int, int]:
        """What changes with every commit to the file, by any connection of any process:
        SQLite's data_version (commits of other connections) and this connection's own
        total_changes. Equal values at two times: nothing was written in between."""
        return conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError:
            raise  # a rule of the data, not an outage: the adapter decides
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
            raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc

    def checkpoint(self) -> tuple[int, int]:
        """A passive checkpoint, for a worker thread, on a connection of its own: copies what is
        committed in the WAL into the database file, and syncs it, without the write lock, so
        commits go on meanwhile. Returns (frames in the WAL, frames of them in the database file
        now)."""
        with self._checkpoint_lock, self._errors():
            if self._checkpointer is None:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_MS / 1000)
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                self._checkpointer = conn
            _busy, frames, copied = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return frames, copied

    def wipe_wal(self) -> bool:
        """After an erasure: copies the whole WAL into the database file and empties the WAL
        file (a TRUNCATE checkpoint), so that the older versions of the rows it held (erased
        content, a deleted account) leave the files; the erasure's own writes run with
        `secure_delete`, which zeroes what they free in the database file. False (logged) when
        another connection's read or write kept part of the WAL: those versions stay there
        until later commits overwrite them."""
        with self.reading() as conn:
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("sqlite_wal_not_emptied", path=self.path, frames=frames, copied=copied)
        return not busy

    def close(self) -> None:
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        with self._lock:
            self._conn.close()
            self._writer.close()
