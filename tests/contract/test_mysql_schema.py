"""What the MySQL directory promises beyond the port: a versioned utf8mb4 schema and its URL."""

from __future__ import annotations

from collections.abc import Iterator

import pymysql
import pytest

from vim_cluster.adapters.mysql_base import connect_params
from vim_cluster.adapters.mysql_directory import MysqlDirectory
from vim_cluster.config_values import redact
from vim_cluster.errors import ClientError
from vim_cluster.model import Group, GroupId, User, UserId
from vim_cluster.ports import GroupQuota

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def raw(mysql_url: str) -> Iterator[pymysql.cursors.Cursor]:
    params = connect_params(mysql_url)
    with pymysql.connect(**params) as conn, conn.cursor() as cur:
        yield cur


def test_schema_is_versioned_utf8mb4_and_migrated_once(mysql_url: str, raw: pymysql.cursors.Cursor) -> None:
    MysqlDirectory(mysql_url).close()
    MysqlDirectory(mysql_url).close()
    raw.execute("SELECT version FROM schema_version")
    assert raw.fetchall() == ((1,), (2,), (3,))
    raw.execute(
        "SELECT table_name, table_collation FROM information_schema.tables"
        " WHERE table_schema = DATABASE() ORDER BY table_name"
    )
    tables = dict(raw.fetchall())
    assert set(tables) == {"chat_groups", "departments", "group_members", "schema_version", "users"}
    assert set(tables.values()) == {"utf8mb4_unicode_ci"}


def test_url_parts_are_percent_decoded_and_the_password_is_redacted() -> None:
    params = connect_params("mysql://vim%40ops:p%3Aw%2F1@db.example:3307/vim%5Fdir")
    assert (params["user"], params["password"], params["host"], params["port"], params["database"]) == (
        "vim@ops", b"p:w/1", "db.example", 3307, "vim_dir",
    )
    assert params["charset"] == "utf8mb4"
    assert connect_params("mysql://u:p@h/d")["port"] == 3306
    assert redact("mysql://u:secret@h:1/d") == "mysql://u:***@h:1/d"
    with pytest.raises(ValueError):
        connect_params("mysql://u:p@h:1/")


def test_a_refused_group_create_keeps_its_pooled_connection(mysql_url: str, raw: pymysql.cursors.Cursor) -> None:
    """A quota's refusal (a ClientError, a rule of the data) is rolled back and the connection
    goes back to the pool: dropping it made every refused `group-create` a new connection."""
    directory = MysqlDirectory(mysql_url)
    try:
        directory.create_user(User(UserId(1), "owner", "Owner", "x"))
        quota = GroupQuota(since=GroupId(1), per_window=1, window_s=3600, owned=1000)
        directory.create_group(Group(GroupId(10), "g", UserId(1), (UserId(1),)), quota)

        def connections() -> set[int]:
            raw.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID()")
            return {row[0] for row in raw.fetchall()}

        before = connections()
        for n in range(3):
            with pytest.raises(ClientError):
                directory.create_group(Group(GroupId(20 + n), "g", UserId(1), (UserId(1),)), quota)
        assert connections() == before and len(before) == 1
    finally:
        directory.close()
