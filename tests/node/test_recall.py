"""Recall (PROTOCOL.md §2.2 `recall`): only the sender, only within the window."""

from __future__ import annotations

import contextlib

import trio
from trio.testing import MockClock

from vim_cluster.node.app import RunningNode

from ..support import all_online, connect, make_group, online, virtual_wall_clock


async def test_sender_recalls_and_every_session_that_saw_it_is_told(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            alice_pc = await online(stack, url, "alice", register=False, client="pc")
            bob = await online(stack, url, "bob")
            bob_phone = await online(stack, url, "bob", register=False, client="android")
            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "oops", "rc-1")
            for session in (alice_pc, bob, bob_phone):
                await session.expect("message")
            await alice.send("recall", id=ack["id"], rid="undo")
            answer = await alice.expect("recall")
            assert answer == {"id": ack["id"], "chatId": bob.user_id, "type": "friend", "by": alice.user_id,
                              "rid": "undo"}
            for session in (alice_pc, bob, bob_phone):
                notice = await session.expect("recall")
                assert notice == {"id": ack["id"], "chatId": bob.user_id, "type": "friend", "by": alice.user_id}


async def test_history_shows_a_recalled_message_as_recalled_with_empty_content(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            assert bob.user_id is not None
            kept = await alice.chat(bob.user_id, "keep", "rc-keep")
            gone = await alice.chat(bob.user_id, "secret", "rc-gone")
            await alice.send("recall", id=gone["id"])
            await alice.expect("recall")
            for client, peer in ((alice, bob), (bob, alice)):
                await client.send("history", chatId=peer.user_id, type="friend")
                messages = {m["id"]: m for m in (await client.expect("history"))["messages"]}
                assert messages[gone["id"]]["messageType"] == "recalled"
                assert messages[gone["id"]]["content"] == ""
                assert messages[kept["id"]]["content"] == "keep"


async def test_a_recalled_message_is_replayed_as_recalled(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            async with connect(url) as bob:
                await bob.register_login("bob")
            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "secret", "rc-off")
            await alice.send("recall", id=ack["id"])
            await alice.expect("recall")
            async with connect(url) as bob:
                await bob.login("bob")
                (replayed,) = await bob.ready()
                assert replayed["id"] == ack["id"]
                assert (replayed["messageType"], replayed["content"]) == ("recalled", "")


async def test_group_recall_reaches_every_member(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice, bob, carol = await all_online(stack, url, "alice", "bob", "carol")
            group_id = await make_group(alice, [bob, carol], told=[])
            ack = await alice.chat(group_id, "wrong chat", "rc-g", chat_type="group")
            await alice.send("recall", id=ack["id"])
            await alice.expect("recall")
            for member in (bob, carol):
                assert await member.expect("recall") == {"id": ack["id"], "chatId": group_id, "type": "group",
                                                         "by": alice.user_id}


async def test_recalling_another_users_message_is_forbidden(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "mine", "rc-mine")
            await bob.expect("message")
            await bob.send("recall", id=ack["id"], rid="nope")
            assert (await bob.expect_error("forbidden"))["rid"] == "nope"
            await alice.no_frame("recall")
            await bob.send("history", chatId=alice.user_id, type="friend")
            (message,) = (await bob.expect("history"))["messages"]
            assert (message["messageType"], message["content"]) == ("text", "mine")


async def test_any_id_but_ones_own_message_is_answered_forbidden_alike(url: str) -> None:
    """The contract's `forbidden` for another user's message, whether the caller can see it
    (Bob) or not (Mallory, in neither chat), and the same answer, kind and detail, for an id
    that does not exist: a different one would tell a prober which ids exist."""
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice, bob, mallory = await all_online(stack, url, "alice", "bob", "mallory")
            assert bob.user_id is not None
            private = await alice.chat(bob.user_id, "ours", "rc-p")
            await bob.expect("message")
            group_id = await make_group(alice, [bob])
            grouped = await alice.chat(group_id, "team", "rc-g", chat_type="group")
            await bob.expect("message")
            unknown = str(int(grouped["id"]) + 1)
            answers = []
            for caller, message_id in ((mallory, private["id"]), (mallory, grouped["id"]), (mallory, unknown),
                                       (bob, private["id"]), (bob, grouped["id"]), (alice, unknown)):
                await caller.send("recall", id=message_id, rid="probe")
                error = await caller.expect_error("forbidden")
                answers.append((error["rid"], error["detail"]))
            assert len(set(answers)) == 1, answers
            await alice.no_frame("recall")


async def test_a_removed_group_member_cannot_recall_and_the_message_stays(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            group_id = await make_group(alice, [bob], told=[])
            ack = await bob.chat(group_id, "bob was here", "rc-rm", chat_type="group")
            await alice.expect("message")
            await alice.send("group-remove", groupId=group_id, members=[bob.user_id])
            await alice.expect("group-ok")
            await bob.send("recall", id=ack["id"], rid="late")
            assert (await bob.expect_error("forbidden"))["rid"] == "late"
            await alice.send("history", chatId=group_id, type="group")
            (message,) = (await alice.expect("history"))["messages"]
            assert (message["messageType"], message["content"]) == ("text", "bob was here")


async def test_recall_after_the_window_is_expired(start_node, jump_clock: MockClock) -> None:
    with trio.fail_after(10 + 1.2):
        node: RunningNode = await start_node(extra={"message": {"recall-window": 1}},
                                             clock_ms=virtual_wall_clock())
        url = f"ws://127.0.0.1:{node.client_port}/"
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            assert bob.user_id is not None
            early = await alice.chat(bob.user_id, "quick", "rc-quick")
            late = await alice.chat(bob.user_id, "slow", "rc-slow")
            await alice.send("recall", id=early["id"])
            await alice.expect("recall")
            jump_clock.jump(1.2)
            await alice.send("recall", id=late["id"], rid="too-late")
            assert (await alice.expect_error("expired"))["rid"] == "too-late"
            await bob.send("history", chatId=alice.user_id, type="friend")
            messages = {m["id"]: m for m in (await bob.expect("history"))["messages"]}
            assert messages[late["id"]]["content"] == "slow"
            assert messages[early["id"]]["messageType"] == "recalled"
