"""Both directory adapters migrate a store made before the username key (schema version 1):
its users keep logging in by any case of their username, and the key is unique from then on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vim_cluster.adapters import mysql_directory, sqlite_directory
from vim_cluster.adapters.mysql_base import MysqlDatabase
from vim_cluster.adapters.sqlite_base import SqliteDatabase
from vim_cluster.errors import Conflict
from vim_cluster.model import User, UserId
from vim_cluster.ports import Directory

pytestmark = pytest.mark.timeout(60)
OLD_ROWS = [(1, "Alice", "Alice A.", "$argon2id$old1"), (2, "bob.smith", "Bob", "$argon2id$old2")]


def _old_sqlite(tmp_path: Path) -> Callable[[], Directory]:
    path = str(tmp_path / "directory.db")
    old = SqliteDatabase(path, sqlite_directory.MIGRATIONS[:1])
    with old.transaction() as conn:
        conn.executemany("INSERT INTO users (id, username, name, password_hash) VALUES (?, ?, ?, ?)", OLD_ROWS)
    old.close()
    return lambda: sqlite_directory.SqliteDirectory(path)


def _old_mysql(url: str) -> Callable[[], Directory]:
    old = MysqlDatabase(url, mysql_directory.MIGRATIONS[:1])
    with old.cursor() as cur:
        cur.executemany("INSERT INTO users (id, username, name, password_hash) VALUES (%s, %s, %s, %s)", OLD_ROWS)
    old.close()
    return lambda: mysql_directory.MysqlDirectory(url)


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_users_from_before_the_key_migration_keep_logging_in(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    opener = _old_sqlite(tmp_path) if backend == "sqlite" else _old_mysql(request.getfixturevalue("mysql_url"))
    directory = opener()
    try:
        alice = User(UserId(1), "Alice", "Alice A.", "$argon2id$old1")
        assert directory.user_by_username("alice") == alice
        assert directory.user_by_username("ＡＬＩＣＥ") == alice
        assert directory.user_by_username("BOB.SMITH") is not None
        with pytest.raises(Conflict):
            directory.create_user(User(UserId(3), "ａｌｉｃｅ", "Mallory", "$argon2id$new"))
        directory.create_user(User(UserId(4), "carol", "Carol", "$argon2id$new"))
        assert directory.user_by_username("Carol") is not None
    finally:
        directory.close()
    reopened = opener()  # migrating again is a no-op
    try:
        assert [u.id for u in reopened.all_users()] == [1, 2, 4]
    finally:
        reopened.close()


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_a_user_an_older_node_registers_after_the_migration_can_log_in(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A rolling upgrade: the first upgraded node migrated the store, a node not upgraded yet
    registers a user without a key. SQLite: new nodes found no such user (login refused, on
    every node once all were upgraded). MySQL: the older node's INSERT failed (NOT NULL). New
    nodes find it by its username, in any case, and it stays unique."""
    if backend == "sqlite":
        new: Directory = sqlite_directory.SqliteDirectory(str(tmp_path / "directory.db"))
        older_sqlite = SqliteDatabase(str(tmp_path / "directory.db"), sqlite_directory.MIGRATIONS[:1])
        with older_sqlite.transaction() as conn:  # its INSERT
            conn.executemany("INSERT INTO users (id, username, name, password_hash) VALUES (?, ?, ?, ?)", OLD_ROWS)
        older_sqlite.close()
    else:
        url = request.getfixturevalue("mysql_url")
        new = mysql_directory.MysqlDirectory(url)
        older_mysql = MysqlDatabase(url, mysql_directory.MIGRATIONS[:1])
        with older_mysql.cursor() as cur:
            cur.executemany("INSERT INTO users (id, username, name, password_hash) VALUES (%s, %s, %s, %s)", OLD_ROWS)
        older_mysql.close()
    try:
        alice = User(UserId(1), "Alice", "Alice A.", "$argon2id$old1")
        assert new.user_by_username("alice") == alice
        assert new.user_by_username("ＡＬＩＣＥ") == alice
        assert new.user_by_username("bob.smith") is not None and new.user_by_username("carol") is None
        for spelling in ("ALICE", "ａｌｉｃｅ"):
            with pytest.raises(Conflict):
                new.create_user(User(UserId(3), spelling, "Mallory", "$argon2id$new"))
    finally:
        new.close()
