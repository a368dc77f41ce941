"""What a MySQL/MariaDB adapter needs: a small connection pool, migrations, error translation.

Rules:
- utf8mb4 everywhere: every connection talks utf8mb4 and every table is utf8mb4, so Chinese
  text and emoji round-trip unchanged.
- A pool of at most `pool_size` connections: a call borrows one for its duration, so up to
  `pool_size` worker threads work at once and a thread never shares a connection. Connections
  are not tied to threads (trio's worker threads come and go).
- Reconnect: a borrowed idle connection is pinged first and replaced by a new one if it does
  not answer, so the first call after a server restart (or after MySQL's wait_timeout closed
  an idle connection) works. (pymysql deprecated ping(reconnect=True).)
- Outage errors (OperationalError, InterfaceError, InternalError: refused, lost connection,
  server gone, a broken packet stream, deadlock, lock wait timeout) become StoreUnavailable
  in `_translated`, once; the connection that saw one is dropped. IntegrityError is a rule of
  the data: the adapter decides.
- Bounded waits: connecting gives up after CONNECT_TIMEOUT_S, a read or write after
  IO_TIMEOUT_S (a server that is down answers at once: refused or reset).
- Migrations are versioned (`schema_version`) and run under the server-wide named lock
  GET_LOCK('vim_cluster.schema.<db>'), so several nodes may start at once. MySQL commits DDL
  implicitly, so every migration statement must be idempotent by itself (IF NOT EXISTS): a
  migration cut off half way is simply run again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
from pymysql.connections import Connection
from pymysql.cursors import Cursor

from ..config_values import redact
from ..errors import ClientError, Conflict, NotFound, StoreUnavailable

POOL_SIZE = 4
CONNECT_TIMEOUT_S = 3
IO_TIMEOUT_S = 10
MIGRATION_LOCK_WAIT_S = 60
NAMED_LOCK_WAIT_S = 5  # a transaction's named lock (`transaction(lock=...)`): below IO_TIMEOUT_S
TABLE_OPTIONS = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"

# Server errors that mean "this row references a row that does not exist".
ER_NO_REFERENCED_ROW = (1216, 1452)
ER_DUP_ENTRY = 1062


def connect_params(url: str) -> dict[str, Any]:
    """pymysql.connect() arguments for `mysql://USER:PASS@HOST:PORT/DB` (user and password
    may be percent-encoded). The password goes as UTF-8 bytes, as the server stored it:
    pymysql would encode a str as Latin-1, and a password with any other character is refused."""
    parts = urlsplit(url)
    database = parts.path.lstrip("/")
    if parts.scheme != "mysql" or not parts.hostname or not database:
        raise ValueError(f"not a mysql://USER:PASS@HOST:PORT/DB URL: {redact(url)}")
    return {
        "host": parts.hostname,
        "port": parts.port or 3306,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or "").encode(),
        "database": unquote(database),
        "charset": "utf8mb4",
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": IO_TIMEOUT_S,
        "write_timeout": IO_TIMEOUT_S,
        "init_command": "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'",
    }


class MysqlDatabase:
    """A pool of pymysql connections to one database, migrated when it opens."""

    def __init__(self, url: str, migrations: Sequence[Sequence[str]], pool_size: int = POOL_SIZE) -> None:
        self.name = redact(url)
        self._params = connect_params(url)
        self._idle: list[Connection] = []
        self._idle_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False
        self.pool_size = pool_size
        self._migrate(migrations)

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Cursor]:
        """A cursor in autocommit mode: each statement is its own transaction."""
        with self._borrow() as conn, conn.cursor() as cur:
            yield cur

    @contextlib.contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Cursor]:
        """One transaction, committed on exit and rolled back on any error. With `lock`, the
        server-wide named lock of that name (GET_LOCK, NAMED_LOCK_WAIT_S at most) is held from
        before it begins until after it ends: what one owner's transactions take to run one
        after another without locking a row that other transactions' foreign keys lock too."""
        with self._borrow() as conn:
            if lock is not None:
                self._named_lock(conn, lock)
            try:
                conn.begin()
                try:
                    with conn.cursor() as cur:
                        yield cur
                except BaseException:  # noqa: BLE001 - roll back, then re-raise
                    self._rollback(conn)
                    raise
                conn.commit()
            finally:
                if lock is not None:  # a connection that cannot is dropped: the server frees it
                    with conn.cursor() as cur:
                        cur.execute("SELECT RELEASE_LOCK(%s)", (self._lock_name(lock),))

    def _lock_name(self, lock: str) -> str:
        return f"vim_cluster.{lock}.{self._params['database']}"[:64]

    def _named_lock(self, conn: Connection, lock: str) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, %s)", (self._lock_name(lock), NAMED_LOCK_WAIT_S))
            row = cur.fetchone()
        if row is None or row[0] != 1:
            raise StoreUnavailable(f"mysql {self.name}: lock {lock} not granted after {NAMED_LOCK_WAIT_S} s")

    @staticmethod
    def _rollback(conn: Connection) -> None:
        # A connection that cannot roll back is dropped by `_borrow`; the server then
        # rolls the transaction back itself. The original error is the one to report.
        with contextlib.suppress(pymysql.MySQLError):
            conn.rollback()

    @contextlib.contextmanager
    def _borrow(self) -> Iterator[Connection]:
        """A live connection for this thread alone; outage errors become StoreUnavailable."""
        with self._slots:
            conn: Connection | None = None
            healthy = False
            try:
                with self._translated():
                    conn = self._revive(self._take_idle())
                    yield conn
                healthy = True
            except (pymysql.IntegrityError, Conflict, NotFound, ClientError):
                healthy = True  # a rule of the data (a quota's too), rolled back: the connection is fine
                raise
            finally:
                self._give_back(conn, healthy)

    def _take_idle(self) -> Connection | None:
        with self._idle_lock:
            return self._idle.pop() if self._idle else None

    def _revive(self, conn: Connection | None) -> Connection:
        """The idle connection if it still answers a ping, else a new one."""
        if conn is not None:
            try:
                conn.ping()
                return conn
            except pymysql.MySQLError:  # dropped by the server (restart, wait_timeout)
                self._give_back(conn, healthy=False)
        return pymysql.connect(**self._params)

    def _give_back(self, conn: Connection | None, healthy: bool) -> None:
        if conn is None:
            return
        with self._idle_lock:
            if healthy and conn.open and not self._closed:
                self._idle.append(conn)
                return
        with contextlib.suppress(pymysql.MySQLError):
            conn.close()

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """The one place where outage errors become StoreUnavailable."""
        try:
            yield
        except (pymysql.OperationalError, pymysql.InterfaceError, pymysql.InternalError, OSError) as exc:
            raise StoreUnavailable(f"mysql {self.name}: {exc}") from exc

    def _migrate(self, migrations: Sequence[Sequence[str]]) -> None:
        """Applies every migration not yet applied, under the schema lock (idempotent)."""
        lock_name = f"vim_cluster.schema.{self._params['database']}"[:64]
        with self.cursor() as cur:
            started = time.monotonic()
            cur.execute("SELECT GET_LOCK(%s, %s)", (lock_name, MIGRATION_LOCK_WAIT_S))
            row = cur.fetchone()
            if row is None or row[0] != 1:
                waited = time.monotonic() - started
                raise StoreUnavailable(f"mysql {self.name}: schema lock not granted after {waited:.0f} s")
            try:
                self._apply(cur, migrations)
            finally:
                cur.execute("SELECT RELEASE_LOCK(%s)", (lock_name,))

    @staticmethod
    def _apply(cur: Cursor, migrations: Sequence[Sequence[str]]) -> None:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INT NOT NULL PRIMARY KEY,"
            " applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP"
            f") {TABLE_OPTIONS}"
        )
        cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        row = cur.fetchone()
        current = int(row[0]) if row else 0
        for version, statements in enumerate(migrations, start=1):
            if version <= current:
                continue
            for statement in statements:
                cur.execute(statement)
            cur.execute("INSERT IGNORE INTO schema_version (version) VALUES (%s)", (version,))

    def close(self) -> None:
        """Closes the idle connections; a connection in use is closed when it comes back."""
        with self._idle_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(pymysql.MySQLError):
                conn.close()
