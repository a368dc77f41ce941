"""A store whose server goes away: StoreUnavailable within seconds, never a hang or another
error; when the server is back the same adapter object works again and nothing acked is lost.

Each test has a private server of its own (it stops it), so these never run against
VIM_TEST_MYSQL_URL / VIM_TEST_MONGO_URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from vim_cluster.adapters.mongo_messages import MongoMessages
from vim_cluster.adapters.mysql_directory import MysqlDirectory
from vim_cluster.errors import StoreUnavailable
from vim_cluster.model import Group, GroupId, MessageId, UserId

from ..servers import FerretDB, MariaDB
from .test_directory_contract import user
from .test_message_store_contract import BOB, friend, new, to_bob

pytestmark = pytest.mark.timeout(90)
OUTAGE_ANSWER_S = 5.0  # an outage must be reported within this, not hang


def unavailable_soon(call: Callable[..., Any], *args: Any) -> float:
    """Asserts `call` raises StoreUnavailable within OUTAGE_ANSWER_S; returns the seconds it took."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        call(*args)
    took = time.monotonic() - started
    assert took < OUTAGE_ANSWER_S, f"{call.__name__} took {took:.1f} s to report the outage"
    return took


def stop(server: MariaDB | FerretDB, how: str) -> None:
    if how == "kill":
        server.kill()
    else:
        server.stop()


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_mysql_directory_reports_an_outage_and_reconnects(private_mariadb: MariaDB, how: str) -> None:
    url = private_mariadb.url("vim")
    with private_mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE vim CHARACTER SET utf8mb4")
    directory = MysqlDirectory(url)
    try:
        directory.create_user(user(1, "alice"))
        directory.create_group(Group(GroupId(100), "team", UserId(1), (UserId(1),)))
        stop(private_mariadb, how)
        unavailable_soon(directory.user_by_username, "alice")
        unavailable_soon(directory.create_user, user(2, "bob"))
        unavailable_soon(directory.change_members, GroupId(100), [UserId(2)], [])
        unavailable_soon(directory.all_users)
        private_mariadb.start()
        assert directory.user_by_username("ALICE") == user(1, "alice")
        directory.create_user(user(2, "bob"))
        assert directory.change_members(GroupId(100), [UserId(2)], []).members == (1, 2)
    finally:
        directory.close()


def test_mysql_directory_cannot_open_while_the_server_is_down(private_mariadb: MariaDB) -> None:
    url = private_mariadb.url("vim")
    private_mariadb.stop()
    unavailable_soon(MysqlDirectory, url)


def test_mysql_directory_opening_an_unknown_database_is_unavailable(private_mariadb: MariaDB) -> None:
    unavailable_soon(MysqlDirectory, private_mariadb.url("no_such_db"))


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_mongo_message_store_reports_an_outage_and_reconnects(private_ferretdb: FerretDB, how: str) -> None:
    store = MongoMessages(private_ferretdb.url("vim"))
    try:
        acked = store.save_messages(to_bob(1, 2))
        stop(private_ferretdb, how)
        unavailable_soon(store.save_messages, to_bob(3))
        unavailable_soon(store.pending, BOB, MessageId(0), 10)
        unavailable_soon(store.confirm, BOB, [friend(1).id])
        unavailable_soon(store.get, friend(1).id)
        private_ferretdb.start()
        assert store.pending(BOB, MessageId(0), 10) == [s.message for s in acked]
        [retried] = store.save_messages(to_bob(3))
        assert retried.created is True
        [again] = store.save_messages([new(friend(9, cid=friend(3).cid), BOB)])
        assert (again.message, again.created) == (friend(3), False)
    finally:
        store.close()


def test_mongo_message_store_cannot_open_while_the_server_is_down(private_ferretdb: FerretDB) -> None:
    url = private_ferretdb.url("vim")
    private_ferretdb.stop()
    unavailable_soon(MongoMessages, url)
