"""A node wired to MySQL and MongoDB by its config URLs serves clients like one on SQLite, and
answers `error unavailable` (never an ack) while its message store is down."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pymongo
import pytest
import trio

from vim_cluster import wiring
from vim_cluster.adapters.mongo_messages import MongoMessages
from vim_cluster.adapters.mysql_directory import MysqlDirectory
from vim_cluster.config import load_config

from ..servers import FerretDB
from ..support import Client, connect, make_group, online, write_config
from .test_mongo_layout import Cut

pytestmark = pytest.mark.timeout(90)


@contextlib.asynccontextmanager
async def alice_and_bob(node: Any, timeout: float = 30) -> AsyncIterator[tuple[Client, Client]]:
    """alice and bob registered, logged in and ready on `node`; the block has `timeout` s."""
    url = f"ws://127.0.0.1:{node.client_port}/"
    with trio.fail_after(timeout):
        async with contextlib.AsyncExitStack() as stack:
            yield await online(stack, url, "alice"), await online(stack, url, "bob")


def test_wiring_picks_the_adapter_by_url_scheme(tmp_path, mysql_url: str, mongo_url: str) -> None:
    config = load_config(write_config(
        tmp_path, redis_url="redis://127.0.0.1:1/0", store={"directory": mysql_url, "messages": mongo_url},
    ))
    directory, messages = wiring.open_directory(config), wiring.open_messages(config)
    try:
        assert isinstance(directory, MysqlDirectory) and isinstance(messages, MongoMessages)
    finally:
        directory.close()
        messages.close()


async def test_friend_chat_and_offline_replay_on_mysql_and_mongo(start_node, mysql_url: str, mongo_url: str) -> None:
    node = await start_node(store={"directory": mysql_url, "messages": mongo_url})
    url = f"ws://127.0.0.1:{node.client_port}/"
    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            async with connect(url) as bob:
                await bob.register_login("bob")
                await bob.ready()
                assert bob.user_id is not None
                ack = await alice.chat(bob.user_id, "你好 😀", "c1")
                live = await bob.expect("message")
                assert (live["id"], live["content"]) == (ack["id"], "你好 😀")
            offline = await alice.chat(bob.user_id, "later 🌙", "c2")
            assert await alice.chat(bob.user_id, "later 🌙", "c2") == offline  # idempotent cid
            async with connect(url) as bob_again:
                await bob_again.login("BOB")
                replayed = await bob_again.ready()
                assert [m["id"] for m in replayed] == [ack["id"], offline["id"]]


async def test_group_create_quota_on_mysql(start_node, mysql_url: str) -> None:
    """vim.group.create-per-hour and max-owned, counted in MariaDB (test_contacts_groups.py has
    the SQLite node's)."""
    node = await start_node(store={"directory": mysql_url, "messages": "sqlite:data/messages.db"},
                            extra={"group": {"create-per-hour": 2, "max-owned": 2}})
    async with alice_and_bob(node) as (alice, bob):
        for n in range(2):
            await make_group(alice, [bob], name=f"g{n}")
        await alice.send("group-create", name="third", members=[], rid="third")
        assert (await alice.expect_error("forbidden"))["rid"] == "third"
        await make_group(bob, [alice], name="bob's")


async def test_message_store_outage_is_answered_unavailable_then_heals(
    start_node, mysql_url: str, private_ferretdb: FerretDB
) -> None:
    node = await start_node(store={"directory": mysql_url, "messages": private_ferretdb.url("vim")})
    async with alice_and_bob(node, timeout=60) as (alice, bob):
        await trio.to_thread.run_sync(private_ferretdb.kill)
        await alice.send("message", cid="c1", chatId=bob.user_id, type="friend", messageType="text", content="x")
        error = await alice.expect_error("unavailable", timeout=10)
        assert error.get("cid") == "c1"
        await bob.no_frame("message")
        private_ferretdb.start()  # from this (the main) thread: see tests/servers.py
        assert bob.user_id is not None
        ack = await alice.chat(bob.user_id, "x", "c1")
        assert (await bob.expect("message"))["id"] == ack["id"]


async def test_accepted_messages_reach_the_daily_raw_frame_log(start_node, mysql_url: str, mongo_url: str) -> None:
    node = await start_node(store={"directory": mysql_url, "messages": mongo_url})
    async with alice_and_bob(node) as (alice, bob):
        assert bob.user_id is not None
        ack = await alice.chat(bob.user_id, "for the audit log", "log-1")
        day = time.strftime("%Y%m%d", time.gmtime(ack["timestamp"] / 1000))
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=3000)
        try:
            collection = client.get_default_database()[f"message-log-{day}"]
            while (entry := await trio.to_thread.run_sync(collection.find_one, {"sendTime": ack["timestamp"]})) is None:
                await trio.sleep(0.05)  # written off the hot path, after the ack
        finally:
            client.close()
        assert alice.user_id is not None
        assert entry["senderId"] == int(alice.user_id)
        frame = json.loads(entry["content"])
        assert frame["code"] == "message" and frame["message"]["id"] == ack["id"]
        assert frame["message"]["content"] == "for the audit log"


@pytest.mark.parametrize("chat", ["friend", "group"])
async def test_a_commit_cut_off_before_its_document_is_finished_and_delivered_by_the_node(
    start_node, mysql_url: str, mongo_url: str, monkeypatch: pytest.MonkeyPatch, chat: str
) -> None:
    node = await start_node(store={"directory": mysql_url, "messages": mongo_url})
    async with alice_and_bob(node) as (alice, bob):
        chat_id = bob.user_id if chat == "friend" else await make_group(alice, [bob])
        assert chat_id is not None
        Cut(monkeypatch, "chat_message_", times=1)  # the commit writes its claim and rows, not its document
        await alice.send("message", cid="c1", chatId=chat_id, type=chat, messageType="text", content="x")
        assert (await alice.expect_error("unavailable")).get("cid") == "c1"
        finished = await bob.expect("message")  # finished by the node, no retry: bob need not reconnect
        assert (finished["cid"], finished["content"]) == ("c1", "x")
        assert (await alice.expect("message"))["id"] == finished["id"]  # her devices learn it exists
        await alice.send("history", chatId=chat_id, type=chat, limit=10)
        assert [m["id"] for m in (await alice.expect("history"))["messages"]] == [finished["id"]]
        ack = await alice.chat(chat_id, "x", "c1", chat)  # her client's retry
        assert ack["id"] == finished["id"]
