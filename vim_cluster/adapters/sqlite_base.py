"""What both SQLite adapters share: opening, versioned migrations, error translation.

Rules:
- WAL journal with synchronous=FULL: a committed transaction survives SIGKILL and power loss.
  `full_sync=False` (the message store's `vim.store.sync: normal`) sets synchronous=NORMAL:
  a commit still survives SIGKILL (it is in the WAL file), but the WAL is synced only at
  checkpoints, so a power loss or OS crash may lose the last commits (never corrupts).
- Several node processes on one machine may share one file (busy_timeout waits for the lock).
- One connection per adapter, used by one thread at a time (a lock guards it).
- sqlite3 errors that mean "the database cannot serve" become StoreUnavailable here, once.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import StoreUnavailable

BUSY_TIMEOUT_MS = 10_000


class SqliteDatabase:
    def __init__(self, path: str, migrations: Sequence[str], full_sync: bool = True) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={'FULL' if full_sync else 'NORMAL'}")
            self._conn.execute("PRAGMA foreign_keys=ON")
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
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE), committed on exit, rolled back on error."""
        with self._lock, self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:  # noqa: BLE001 - roll back, then re-raise
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError:
            raise  # a rule of the data, not an outage: the adapter decides
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
            raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()
