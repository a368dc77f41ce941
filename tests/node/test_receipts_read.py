"""Delivery receipts and read cursors (PROTOCOL.md §2.2 `received`, `read`; §2.3)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import trio

from vim_cluster.node.app import RunningNode

from ..support import connect, make_group, online


async def test_received_sends_a_delivered_receipt_to_every_session_of_the_sender(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            alice_pc = await online(stack, url, "alice", register=False, client="pc")
            bob = await online(stack, url, "bob")
            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "did you get it?", "r-1")
            await alice_pc.expect("message")
            message = await bob.expect("message")
            await bob.send("received", ids=[message["id"]])
            expected = {"id": ack["id"], "chatId": bob.user_id, "status": "delivered", "by": bob.user_id}
            assert await alice.expect("receipt") == expected
            assert await alice_pc.expect("receipt") == expected
            await bob.no_frame("receipt")


async def test_a_second_received_for_one_message_sends_no_second_receipt(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "once", "r-once")
            await bob.send("received", ids=[ack["id"], ack["id"]])
            await alice.expect("receipt")
            await bob.send("received", ids=[ack["id"]])
            await alice.no_frame("receipt")


async def test_received_for_someone_elses_message_confirms_nothing(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            mallory = await online(stack, url, "mallory")
            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "for bob", "r-bob")
            await mallory.send("received", ids=[ack["id"], "123"])
            await alice.no_frame("receipt")
        async with connect(url) as bob_again:  # still unconfirmed: bob gets it again
            await bob_again.login("bob")
            assert [m["id"] for m in await bob_again.ready()] == [ack["id"]]


async def test_group_messages_get_no_delivery_receipts(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            group_id = await make_group(alice, [bob], told=[])
            ack = await alice.chat(group_id, "hi all", "g-1", chat_type="group")
            await bob.expect("message")
            await bob.send("received", ids=[ack["id"]])
            await alice.no_frame("receipt")


async def test_read_tells_the_peer_with_the_readers_id_as_chat_id(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            alice_pc = await online(stack, url, "alice", register=False, client="pc")
            bob = await online(stack, url, "bob")
            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "read me", "rd-1")
            await bob.expect("message")
            await bob.send("read", chatId=alice.user_id, type="friend", timestamp=ack["timestamp"], rid="rd")
            expected = {"chatId": bob.user_id, "type": "friend", "timestamp": ack["timestamp"], "by": bob.user_id}
            notice = await alice.expect("read")
            notice.pop("rid", None)  # the rid is the reader's, not the peer's
            assert notice == expected
            notice_pc = await alice_pc.expect("read")
            notice_pc.pop("rid", None)
            assert notice_pc == expected


async def test_an_older_read_leaves_the_cursor_and_the_peer_hears_the_cursor(url: str) -> None:
    """A late `read` from another device (an older timestamp) does not move the cursor back,
    and the peer's notice says where the cursor is, as history's statuses do."""
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            assert bob.user_id is not None
            first = await alice.chat(bob.user_id, "one", "rd-1")
            second = await alice.chat(bob.user_id, "two", "rd-2")
            await bob.send("read", chatId=alice.user_id, type="friend", timestamp=second["timestamp"])
            assert (await alice.expect("read"))["timestamp"] == second["timestamp"]
            await bob.send("read", chatId=alice.user_id, type="friend", timestamp=first["timestamp"] - 1)
            assert (await alice.expect("read"))["timestamp"] == second["timestamp"]
            await alice.send("history", chatId=bob.user_id, type="friend")
            assert [m["status"] for m in (await alice.expect("history"))["messages"]] == ["read", "read"]


async def test_read_of_an_unknown_chat_is_refused(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            await alice.send("read", chatId="123456789", type="friend", timestamp=1, rid="nf")
            assert (await alice.expect_error("not-found"))["rid"] == "nf"
            group_id = await make_group(alice, name="mine")
            await bob.send("read", chatId=group_id, type="group", timestamp=1, rid="nm")
            assert (await bob.expect_error("not-member"))["rid"] == "nm"


async def test_group_read_cursor_survives_reconnect(url: str) -> None:
    """Group messages at or before the cursor are not replayed; newer ones are."""
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            async with connect(url) as bob:
                await bob.register_login("bob")
                await bob.ready()
                group_id = await make_group(alice, [bob])
            acks = []
            for i in range(4):  # bob is away
                acks.append(await alice.chat(group_id, f"g{i}", f"g-{i}", chat_type="group"))
                await trio.sleep(0.01)  # distinct milliseconds: the cursor is a timestamp
            async with connect(url) as bob:
                await bob.login("bob")
                replayed = await bob.ready()
                assert [m["id"] for m in replayed] == [a["id"] for a in acks]
                await bob.send("read", chatId=group_id, type="group", timestamp=acks[1]["timestamp"])
                await bob.send("ping", rid="after-read")  # the read is handled once this is answered
                await bob.expect("pong")
            async with connect(url) as bob:
                await bob.login("bob")
                replayed = await bob.ready()
                assert [m["id"] for m in replayed] == [a["id"] for a in acks[2:]]
            async with connect(url) as bob:  # a read cursor never moves back
                await bob.login("bob")
                await bob.ready()
                await bob.send("read", chatId=group_id, type="group", timestamp=acks[0]["timestamp"])
                await bob.send("ping")
                await bob.expect("pong")
            async with connect(url) as bob:
                await bob.login("bob")
                assert [m["id"] for m in await bob.ready()] == [a["id"] for a in acks[2:]]


async def test_received_does_not_hold_the_connection_while_its_confirm_waits_for_the_store(
        node: RunningNode, url: str) -> None:
    """A `received` frame is pipelined like `message`: while its confirm waits for the store
    (here held in the writer's worker thread), the connection's next frames are read and
    answered, and the confirms that arrived meanwhile share the next group commit. (A reader
    that awaited each confirm gave a slow store one `received` frame per connection per
    commit, and fell further behind with every frame.)"""
    writer = node.ctx.writer
    store = writer._store
    held, release = threading.Event(), threading.Event()

    def slow_commit(saves: Any, confirms: Any) -> Any:
        held.set()
        release.wait(10)
        return type(store).commit(store, saves, confirms)

    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            assert bob.user_id is not None
            acks = [await alice.chat(bob.user_id, f"m{n}", f"r-pipe-{n}") for n in range(3)]
            store.commit_now = lambda saves, confirms: None  # type: ignore[method-assign]
            store.commit = slow_commit  # type: ignore[method-assign]
            try:
                await bob.send("received", ids=[acks[0]["id"]])
                await trio.to_thread.run_sync(held.wait)  # its commit has started and waits
                await bob.send("received", ids=[acks[1]["id"]])
                await bob.send("received", ids=[acks[2]["id"]])
                await bob.barrier()  # answered while the first confirm's commit is held
                batches = writer.batches
            finally:
                release.set()
            receipts = [(await alice.expect("receipt"))["id"] for _ in range(3)]
            assert receipts == [ack["id"] for ack in acks]
            assert writer.batches == batches + 2  # the held commit, then both others in one
