"""Offline replay after ready (PROTOCOL.md §2.3): oldest first, `offline: true`, then
`sync-done {count}`; replayed until confirmed with `received`."""

from __future__ import annotations

import contextlib

import trio

from ..support import Client, connect, make_group, online


async def login_and_replay(url: str, username: str, stack: contextlib.AsyncExitStack, **ready) -> tuple[Client, list]:
    client = await stack.enter_async_context(connect(url))
    await client.login(username)
    return client, await client.ready(**ready)


async def test_messages_sent_while_away_are_replayed_oldest_first_then_sync_done(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            async with connect(url) as bob:
                await bob.register_login("bob")
            assert bob.user_id is not None
            acks = [await alice.chat(bob.user_id, f"while away {i}", f"off-{i}") for i in range(5)]
            async with connect(url) as bob:
                await bob.login("bob")
                await bob.send("ready", token=bob.token, rid="back")
                assert (await bob.expect("ready-ok"))["rid"] == "back"
                frames = [await bob.next_frame() for _ in range(6)]
                assert [f["code"] for f in frames] == ["message"] * 5 + ["sync-done"]
                assert frames[-1]["message"]["count"] == 5
                replayed = [f["message"] for f in frames[:5]]
                assert [m["id"] for m in replayed] == [a["id"] for a in acks]
                assert all(m["offline"] is True for m in replayed)
                assert [m["content"] for m in replayed] == [f"while away {i}" for i in range(5)]
                assert all(m["fromId"] == alice.user_id and m["chatId"] == bob.user_id for m in replayed)
                assert all(m["timestamp"] == a["timestamp"] for m, a in zip(replayed, acks, strict=True))


async def test_unconfirmed_messages_are_replayed_again_until_received(url: str) -> None:
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            async with connect(url) as bob:
                await bob.register_login("bob")
            assert bob.user_id is not None
            acks = [await alice.chat(bob.user_id, f"m{i}", f"again-{i}") for i in range(3)]
            ids = [a["id"] for a in acks]
            for _ in range(2):  # disconnect without confirming: everything again
                async with contextlib.AsyncExitStack() as visit:
                    _, replayed = await login_and_replay(url, "bob", visit)
                    assert [m["id"] for m in replayed] == ids
            async with contextlib.AsyncExitStack() as visit:
                bob, replayed = await login_and_replay(url, "bob", visit)
                await bob.send("received", ids=ids[:2])
                for _ in range(2):
                    await alice.expect("receipt")
            async with contextlib.AsyncExitStack() as visit:
                bob, replayed = await login_and_replay(url, "bob", visit)
                assert [m["id"] for m in replayed] == ids[2:]
                await bob.send("received", ids=ids[2:])
                await alice.expect("receipt")
            async with contextlib.AsyncExitStack() as visit:
                _, replayed = await login_and_replay(url, "bob", visit)
                assert replayed == []


async def test_messages_received_live_but_not_confirmed_are_replayed(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            async with connect(url) as bob:
                await bob.register_login("bob")
                await bob.ready()
                assert bob.user_id is not None
                ack = await alice.chat(bob.user_id, "live", "live-1")
                assert (await bob.expect("message"))["id"] == ack["id"]  # never confirmed
            _, replayed = await login_and_replay(url, "bob", stack)
            assert [m["id"] for m in replayed] == [ack["id"]]


async def test_every_device_gets_the_replay_until_one_confirms(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            async with connect(url) as bob:
                await bob.register_login("bob")
            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "for all devices", "dev-1")
            bob_web, replayed_web = await login_and_replay(url, "bob", stack, client="web")
            bob_pc, replayed_pc = await login_and_replay(url, "bob", stack, client="pc")
            assert [m["id"] for m in replayed_web] == [m["id"] for m in replayed_pc] == [ack["id"]]
            await bob_pc.send("received", ids=[ack["id"]])
            await alice.expect("receipt")
            _, replayed_phone = await login_and_replay(url, "bob", stack, client="android")
            assert replayed_phone == []


async def test_group_messages_newer_than_the_read_cursor_are_replayed_with_friend_messages(url: str) -> None:
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            carol = await online(stack, url, "carol")
            async with connect(url) as bob:
                await bob.register_login("bob")
                await bob.ready()
                group_id = await make_group(alice, [bob, carol])
                before = await alice.chat(group_id, "seen live", "g-live", chat_type="group")
                await bob.expect("message")
                await bob.send("read", chatId=group_id, type="group", timestamp=before["timestamp"])
                await bob.send("ping")
                await bob.expect("pong")
            await trio.sleep(0.01)
            assert bob.user_id is not None
            acks = [
                await alice.chat(group_id, "group 1", "g-1", chat_type="group"),
                await carol.chat(bob.user_id, "friend 1", "f-1"),
                await carol.chat(group_id, "group 2", "g-2", chat_type="group"),
                await alice.chat(bob.user_id, "friend 2", "f-2"),
            ]
            _, replayed = await login_and_replay(url, "bob", stack)
            assert [m["id"] for m in replayed] == [a["id"] for a in acks]
            assert [m["type"] for m in replayed] == ["group", "friend", "group", "friend"]
            assert all(m["offline"] is True for m in replayed)


async def test_a_new_group_member_gets_no_replay_of_older_group_messages(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            async with connect(url) as bob:
                await bob.register_login("bob")
            await alice.send("group-create", name="team", members=[])
            group_id = (await alice.expect("group-ok"))["groupId"]
            await alice.chat(group_id, "before bob", "nb-0", chat_type="group")
            await trio.sleep(0.01)
            await alice.send("group-add", groupId=group_id, members=[bob.user_id])
            await alice.expect("group-ok")
            after = await alice.chat(group_id, "after bob joined", "nb-1", chat_type="group")
            _, replayed = await login_and_replay(url, "bob", stack)
            assert [m["id"] for m in replayed] == [after["id"]]


async def test_many_offline_messages_are_all_replayed_in_order(url: str) -> None:
    count = 150
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            async with connect(url) as bob:
                await bob.register_login("bob")
            for i in range(count):
                await alice.send("message", cid=f"many-{i}", chatId=bob.user_id, type="friend",
                                 messageType="text", content=str(i))
            acks = [await alice.expect("ack") for _ in range(count)]
            _, replayed = await login_and_replay(url, "bob", stack)
            assert [m["id"] for m in replayed] == [a["id"] for a in acks]


async def test_more_offline_messages_than_one_replay_page_are_all_replayed_in_order(start_node) -> None:
    """Replay reads in pages of 500 (friend and group messages merged): none lost at the seams."""
    with trio.fail_after(30):
        node = await start_node(websocket={"rate-limit": 100_000})
        url = f"ws://127.0.0.1:{node.client_port}/"
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            carol = await online(stack, url, "carol")
            async with connect(url) as bob:
                await bob.register_login("bob")
                await bob.ready()
                await alice.send("group-create", name="big", members=[bob.user_id, carol.user_id])
                group_id = (await alice.expect("group-ok"))["groupId"]
                await bob.expect("group-ok")
                await carol.expect("group-ok")
            senders = [(alice, bob.user_id, "friend"), (carol, group_id, "group"), (alice, group_id, "group"),
                       (carol, bob.user_id, "friend")]
            for i in range(1300):
                sender, chat_id, chat_type = senders[i % 4]
                await sender.send("message", cid=f"pg-{i}", chatId=chat_id, type=chat_type,
                                  messageType="text", content=str(i))
            acks = []
            for client in (alice, carol):
                acks += [await client.expect("ack", timeout=10) for _ in range(650)]
            _, replayed = await login_and_replay(url, "bob", stack)
            replayed_ids = [m["id"] for m in replayed]
            assert replayed_ids == sorted((a["id"] for a in acks), key=int)
            assert len(set(replayed_ids)) == 1300


async def test_a_message_arriving_during_replay_comes_after_sync_done_or_in_the_replay_once(url: str) -> None:
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            async with connect(url) as bob:
                await bob.register_login("bob")
            for i in range(100):
                await alice.send("message", cid=f"pre-{i}", chatId=bob.user_id, type="friend",
                                 messageType="text", content=str(i))
            acks = [await alice.expect("ack") for _ in range(100)]
            bob = await stack.enter_async_context(connect(url))
            await bob.login("bob")
            await bob.send("ready", token=bob.token)
            await alice.send("message", cid="during", chatId=bob.user_id, type="friend",
                             messageType="text", content="during replay")
            during = await alice.expect("ack")
            await bob.expect("ready-ok")
            seen: list[str] = []
            while True:
                frame = await bob.next_frame()
                if frame["code"] == "message":
                    seen.append(frame["message"]["id"])
                if frame["code"] == "sync-done":
                    break
            with trio.move_on_after(0.5):
                while during["id"] not in seen or len(seen) < 101:
                    frame = await bob.next_frame()
                    if frame["code"] == "message":
                        seen.append(frame["message"]["id"])
            assert sorted(seen) == sorted([a["id"] for a in acks] + [during["id"]])  # each once
            assert seen == sorted(seen, key=int)  # and in order
