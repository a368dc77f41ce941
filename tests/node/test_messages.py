"""Friend and group messages (PROTOCOL.md §2.2): durable ack, idempotent cid, order, errors."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Sequence

import attrs
import pytest
import trio

from vim_cluster.config import sqlite_path
from vim_cluster.model import Message
from vim_cluster.node.app import RunningNode
from vim_cluster.ports import Confirm, NewMessage, Saved
from vim_cluster.tunables import DEFAULTS

from ..support import make_group, online

MESSAGE_FIELDS = {"id", "cid", "chatId", "type", "messageType", "content", "extend", "fromId", "timestamp"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def committed_row(node: RunningNode, message_id: str) -> tuple | None:
    """The message as another SQLite connection sees it: only committed rows are visible."""
    path = sqlite_path(node.ctx.config.store.messages)
    assert path is not None
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT cid, content FROM messages WHERE id = ?", (int(message_id),)).fetchone()


async def test_friend_message_is_delivered_with_every_field(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            before = now_ms()
            await alice.send("message", cid="c-1", rid="r-1", chatId=bob.user_id, type="friend",
                             messageType="image", content="https://img/1.png", extend={"w": 640, "h": [1, "x"]})
            ack = await alice.expect("ack")
            assert set(ack) == {"cid", "id", "timestamp", "rid"}
            assert ack["cid"] == "c-1" and ack["rid"] == "r-1"
            assert ack["id"].isdigit() and before - 1000 <= ack["timestamp"] <= now_ms() + 1000
            message = await bob.expect("message")
            assert set(message) == MESSAGE_FIELDS
            assert message == {
                "id": ack["id"], "cid": "c-1", "chatId": bob.user_id, "type": "friend", "messageType": "image",
                "content": "https://img/1.png", "extend": {"w": 640, "h": [1, "x"]}, "fromId": alice.user_id,
                "timestamp": ack["timestamp"],
            }


async def test_ack_comes_only_after_the_message_is_committed(node: RunningNode, url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            for i in range(20):
                await alice.send("message", cid=f"d-{i}", chatId=bob.user_id, type="friend",
                                 messageType="text", content=f"durable {i}")
            for _ in range(20):
                ack = await alice.expect("ack")
                assert committed_row(node, ack["id"]) == (ack["cid"], f"durable {ack['cid'][2:]}")


async def test_resending_a_cid_returns_the_same_ack_and_delivers_the_stored_message_again(url: str) -> None:
    """A retry delivers the stored message again, same id (the node that stored the first
    attempt may have died before delivering it); it never stores or delivers a new one."""
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            assert bob.user_id is not None
            first = await alice.chat(bob.user_id, "once", "same-cid")
            assert (await bob.expect("message"))["id"] == first["id"]
            again = await alice.chat(bob.user_id, "once", "same-cid")
            assert again == first
            redelivered = await bob.expect("message")
            assert (redelivered["id"], redelivered["content"]) == (first["id"], "once")
            changed = await alice.chat(bob.user_id, "different content, same cid", "same-cid")
            assert changed == first  # the earlier message stands
            redelivered = await bob.expect("message")
            assert (redelivered["id"], redelivered["content"]) == (first["id"], "once")
            await bob.send("history", chatId=alice.user_id, type="friend")
            history = await bob.expect("history")
            assert [m["id"] for m in history["messages"]] == [first["id"]]
            assert history["messages"][0]["content"] == "once"


async def test_a_cid_repeated_for_another_chat_delivers_nothing_to_it(url: str) -> None:
    """Not a retry of the stored message: the other chat's members must not get it."""
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            carol = await online(stack, url, "carol")
            assert bob.user_id is not None
            first = await alice.chat(bob.user_id, "for bob", "one-cid")
            await bob.expect("message")
            assert carol.user_id is not None
            assert await alice.chat(carol.user_id, "for carol", "one-cid") == first
            await carol.no_frame("message")


async def test_a_cid_repeated_back_to_back_gets_the_same_ack_and_only_that_message(url: str) -> None:
    """Pipelined retries: the second copy may commit in the same batch as the first."""
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            for _ in range(3):
                await alice.send("message", cid="twice", chatId=bob.user_id, type="friend",
                                 messageType="text", content="retry")
            acks = [await alice.expect("ack") for _ in range(3)]
            assert acks[0] == acks[1] == acks[2]
            for _ in range(3):
                assert (await bob.expect("message"))["id"] == acks[0]["id"]
            await bob.no_frame("message")


async def test_an_error_between_pipelined_messages_leaves_their_acks_and_order(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            for cid, chat_id in (("p-1", bob.user_id), ("p-bad", "123456789"), ("p-2", bob.user_id)):
                await alice.send("message", cid=cid, chatId=chat_id, type="friend", messageType="text", content=cid)
            error = await alice.expect_error("not-found")
            assert error["cid"] == "p-bad"
            acks = [await alice.expect("ack") for _ in range(2)]
            assert [a["cid"] for a in acks] == ["p-1", "p-2"]
            received = [await bob.expect("message") for _ in range(2)]
            assert [m["cid"] for m in received] == ["p-1", "p-2"]


async def test_a_cid_is_per_sender(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            assert bob.user_id is not None
            from_alice = await alice.chat(bob.user_id, "a", "shared")
            assert alice.user_id is not None
            from_bob = await bob.chat(alice.user_id, "b", "shared")
            assert from_alice["id"] != from_bob["id"]
            assert (await alice.expect("message"))["id"] == from_bob["id"]


async def test_messages_from_one_sender_arrive_in_ack_order(start_node) -> None:
    count = 300
    with trio.fail_after(20):
        node: RunningNode = await start_node(websocket={"rate-limit": 100_000})  # pipelined: > 200/s
        url = f"ws://127.0.0.1:{node.client_port}/"
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            for i in range(count):  # pipelined: no waiting for acks
                await alice.send("message", cid=f"o-{i}", chatId=bob.user_id, type="friend",
                                 messageType="text", content=str(i))
            acks = [await alice.expect("ack") for _ in range(count)]
            assert [a["cid"] for a in acks] == [f"o-{i}" for i in range(count)]
            ids = [int(a["id"]) for a in acks]
            assert ids == sorted(ids) and len(set(ids)) == count
            received = [await bob.expect("message") for _ in range(count)]
            assert [m["id"] for m in received] == [a["id"] for a in acks]
            assert [m["content"] for m in received] == [str(i) for i in range(count)]


async def test_group_message_reaches_every_member_session(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            alice_pc = await online(stack, url, "alice", register=False, client="pc")
            bob = await online(stack, url, "bob")
            carol = await online(stack, url, "carol")
            dave = await online(stack, url, "dave")
            group_id = await make_group(alice, [bob, carol])
            await alice_pc.expect("group-ok")
            ack = await alice.chat(group_id, "hello team", "g-1", chat_type="group")
            for member in (bob, carol, alice_pc):
                message = await member.expect("message")
                assert message["id"] == ack["id"] and message["chatId"] == group_id
                assert message["type"] == "group" and message["fromId"] == alice.user_id
            await alice.no_frame("message")
            await dave.no_frame("message")


async def test_group_message_from_a_non_member_is_not_member(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            dave = await online(stack, url, "dave")
            group_id = await make_group(alice, [bob])
            await dave.send("message", cid="intruder", rid="r", chatId=group_id, type="group",
                            messageType="text", content="let me in")
            error = await dave.expect_error("not-member")
            assert (error["cid"], error["rid"]) == ("intruder", "r")
            await bob.no_frame("message")


async def test_message_to_an_unknown_user_or_group_is_not_found(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            for chat_type in ("friend", "group"):
                await alice.send("message", cid=f"nf-{chat_type}", rid="r", chatId="123456789", type=chat_type,
                                 messageType="text", content="anyone?")
                error = await alice.expect_error("not-found")
                assert (error["cid"], error["rid"]) == (f"nf-{chat_type}", "r")


@pytest.mark.parametrize(
    "change",
    [{"chatId": "abc"}, {"chatId": ""}, {"type": "channel"}, {"messageType": "recalled"},
     {"messageType": "sticker"}, {"content": 42}, {"extend": "not an object"}, {"chatId": None}],
    ids=["chatId-text", "chatId-empty", "type", "recalled", "messageType", "content", "extend", "no-chatId"],
)
async def test_malformed_message_fields_are_invalid_with_cid(url: str, change: dict) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            message = {"cid": "bad-1", "rid": "r", "chatId": bob.user_id, "type": "friend",
                       "messageType": "text", "content": "x", **change}
            await alice.send("message", **{k: v for k, v in message.items() if v is not None})
            error = await alice.expect_error("invalid")
            assert (error["cid"], error["rid"]) == ("bad-1", "r")
            await bob.no_frame("message")


async def test_message_without_cid_is_invalid_and_stores_nothing(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            await alice.send("message", rid="r", chatId=bob.user_id, type="friend", messageType="text", content="x")
            assert (await alice.expect_error("invalid"))["rid"] == "r"
            await alice.send("history", chatId=bob.user_id, type="friend")
            assert (await alice.expect("history"))["messages"] == []


async def test_a_message_to_oneself_is_acked_and_synced_to_other_devices(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            alice_pc = await online(stack, url, "alice", register=False, client="pc")
            assert alice.user_id is not None
            ack = await alice.chat(alice.user_id, "note to self", "self-1")
            assert (await alice_pc.expect("message"))["id"] == ack["id"]
            await alice.no_frame("message")


async def test_the_reader_waits_while_the_ack_window_is_full_then_everything_is_acked_in_order(
    start_node, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    node: RunningNode = await start_node(tunables=attrs.evolve(DEFAULTS, client_ack_window=2))
    url = f"ws://127.0.0.1:{node.client_port}/"
    store = node.ctx.messages
    commits = threading.Event()  # the store "hangs" until this is set
    commit = store.commit

    def slow_commit(saves: Sequence[NewMessage], confirms: Sequence[Confirm]) -> tuple[list[Saved], list[list[Message]]]:
        commits.wait(10)
        return commit(saves, confirms)

    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            monkeypatch.setattr(store, "commit", slow_commit)
            monkeypatch.setattr(store, "commit_now", lambda saves, confirms: None)  # as if the lock were taken
            for i in range(4):
                await alice.send("message", cid=f"w-{i}", chatId=bob.user_id, type="friend", messageType="text",
                                 content=f"w-{i}")
            await alice.send("ping", rid="after")
            with trio.move_on_after(0.5):  # the reader waits for room in the window (no barrier passes it)
                raise AssertionError(f"answered with a full window: {await alice.expect('pong', timeout=1)}")
            commits.set()
            acks = [await alice.expect("ack") for _ in range(4)]
            assert [a["cid"] for a in acks] == ["w-0", "w-1", "w-2", "w-3"]
            assert (await alice.expect("pong"))["rid"] == "after"
            assert [(await bob.expect("message"))["cid"] for _ in range(4)] == ["w-0", "w-1", "w-2", "w-3"]


async def test_with_sync_normal_the_node_checkpoints_its_wal_beside_its_commits(start_node) -> None:
    # adapters/sqlite_base.py: with `vim.store.sync: normal` the WAL is copied into the file
    # by the store writer's own thread after commits, not inside a commit on the event loop.
    node = await start_node(store={"directory": "sqlite:data/directory.db", "messages": "sqlite:data/messages.db",
                                   "sync": "normal"})
    url = f"ws://127.0.0.1:{node.client_port}/"
    writer = node.ctx.writer
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            assert bob.user_id is not None
            for i in range(5):
                ack = await alice.chat(bob.user_id, f"normal {i}", f"n-{i}")
                assert committed_row(node, ack["id"]) == (f"n-{i}", f"normal {i}")
            while writer.checkpoints == 0:
                await trio.sleep(DEFAULTS.store_checkpoint_s)
    assert writer.inline >= 1  # the commits themselves ran on the loop
    node.stop()
