"""Every PROTOCOL.md flow with its parties on different nodes of a 3-node cluster (subprocesses)."""

from __future__ import annotations

import contextlib
import secrets

import trio

from ..support import Client, connect, make_group, online
from .harness import Cluster

LIMIT = 30  # seconds per test


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def test_friend_message_crosses_nodes_acked_delivered_and_copied_to_senders_other_device(
    cluster: Cluster,
) -> None:
    with trio.fail_after(LIMIT):
        async with contextlib.AsyncExitStack() as stack:
            a = unique("alice")
            alice = await online(stack, cluster.dept1.url, a)
            bob = await online(stack, cluster.dept2.url, unique("bob"))
            alice_pc = await online(stack, cluster.master.url, a, register=False, client="pc")

            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "hello across nodes", "c-1")
            assert ack["cid"] == "c-1" and ack["id"].isdigit() and ack["timestamp"] > 0

            got = await bob.expect("message")
            assert got == {
                "id": ack["id"], "cid": "c-1", "chatId": bob.user_id, "type": "friend",
                "messageType": "text", "content": "hello across nodes", "extend": None,
                "fromId": alice.user_id, "timestamp": ack["timestamp"],
            }
            copy = await alice_pc.expect("message")
            assert copy == got  # the multi-device copy is the same frame
            await alice.no_frame("message")  # the sending session gets only the ack (its node, its queue: a barrier)
            await cluster.no_relayed_frame("message", [bob, alice_pc], cluster.dept1)  # each once

            # and back the other way: dept-2 -> dept-1 (and the master's device of alice)
            assert alice.user_id is not None
            back = await bob.chat(alice.user_id, "hello back", "c-2")
            assert (await alice.expect("message"))["id"] == back["id"]
            assert (await alice_pc.expect("message"))["id"] == back["id"]


async def test_group_message_reaches_each_member_session_on_every_node_exactly_once(cluster: Cluster) -> None:
    with trio.fail_after(LIMIT):
        async with contextlib.AsyncExitStack() as stack:
            a, d = unique("gowner"), unique("gdee")
            owner = await online(stack, cluster.dept1.url, a)  # the sender
            owner_pc = await online(stack, cluster.master.url, a, register=False, client="pc")
            bob = await online(stack, cluster.dept2.url, unique("gbob"))
            carol = await online(stack, cluster.master.url, unique("gcarol"))
            dee = await online(stack, cluster.dept1.url, d)  # on the sender's node
            dee_phone = await online(stack, cluster.dept2.url, d, register=False, client="android")
            members = [bob, carol, dee]

            group_id = await make_group(owner, members, name="all nodes", told=[owner_pc, *members, dee_phone])

            ack = await owner.chat(group_id, "hello group", "g-1", chat_type="group")
            receivers: list[Client] = [owner_pc, bob, carol, dee, dee_phone]
            for receiver in receivers:
                got = await receiver.expect("message")
                assert got["id"] == ack["id"] and got["chatId"] == group_id, got
                assert got["type"] == "group" and got["fromId"] == owner.user_id
            await owner.no_frame("message")  # the sender: its own node would have queued a copy before the ack
            await cluster.no_relayed_frame("message", receivers, cluster.dept1)  # exactly once: no second copy anywhere

            # a member on dept-2 answers: everyone else, on every node, gets it once
            reply = await bob.chat(group_id, "hi all", "g-2", chat_type="group")
            for receiver in [owner, owner_pc, carol, dee, dee_phone]:
                assert (await receiver.expect("message"))["id"] == reply["id"]
            await bob.no_frame("message")
            await cluster.no_relayed_frame("message", [owner, owner_pc, carol, dee, dee_phone], cluster.dept2)


async def test_received_on_one_node_sends_a_receipt_to_the_sender_on_another(cluster: Cluster) -> None:
    with trio.fail_after(LIMIT):
        async with contextlib.AsyncExitStack() as stack:
            a, b = unique("ralice"), unique("rbob")
            alice = await online(stack, cluster.dept1.url, a)
            alice_pc = await online(stack, cluster.master.url, a, register=False, client="pc")
            bob = await online(stack, cluster.dept2.url, b)
            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "did you get it?", "r-1")
            await bob.expect("message")

            await bob.send("received", ids=[ack["id"]])
            expected = {"id": ack["id"], "chatId": bob.user_id, "status": "delivered", "by": bob.user_id}
            assert await alice.expect("receipt") == expected
            assert await alice_pc.expect("receipt") == expected

            # confirmed: not replayed again, whichever node bob comes back on
            async with connect(cluster.master.url) as again:
                await again.login(b)
                assert await again.ready(client="pc") == []


async def test_read_on_one_node_is_announced_to_the_peer_on_another(cluster: Cluster) -> None:
    with trio.fail_after(LIMIT):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, cluster.dept1.url, unique("dalice"))
            bob = await online(stack, cluster.dept2.url, unique("dbob"))
            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "read me", "d-1")
            await bob.expect("message")

            await bob.send("read", chatId=alice.user_id, type="friend", timestamp=ack["timestamp"])
            assert await alice.expect("read") == {
                "chatId": bob.user_id, "type": "friend", "timestamp": ack["timestamp"], "by": bob.user_id,
            }
            await bob.no_frame("read")  # the reader's own session is not told (its node, its queue)


async def test_recall_on_one_node_reaches_every_session_that_saw_the_message(cluster: Cluster) -> None:
    with trio.fail_after(LIMIT):
        async with contextlib.AsyncExitStack() as stack:
            a = unique("calice")
            alice = await online(stack, cluster.dept1.url, a)
            alice_pc = await online(stack, cluster.master.url, a, register=False, client="pc")
            bob = await online(stack, cluster.dept2.url, unique("cbob"))
            assert bob.user_id is not None
            ack = await alice.chat(bob.user_id, "oops", "x-1")
            await bob.expect("message")
            await alice_pc.expect("message")

            await alice.send("recall", id=ack["id"], rid="rc")
            notice = {"id": ack["id"], "chatId": bob.user_id, "type": "friend", "by": alice.user_id}
            assert await alice.expect("recall") == {**notice, "rid": "rc"}
            assert await bob.expect("recall") == notice
            assert await alice_pc.expect("recall") == notice

            # the history of any node shows it recalled
            await bob.send("history", chatId=alice.user_id, type="friend")
            history = await bob.expect("history")
            recalled = [m for m in history["messages"] if m["id"] == ack["id"]]
            assert recalled and recalled[0]["messageType"] == "recalled" and recalled[0]["content"] == ""


async def test_same_client_type_on_another_node_closes_the_earlier_session_with_other_login(
    cluster: Cluster,
) -> None:
    with trio.fail_after(LIMIT):
        async with contextlib.AsyncExitStack() as stack:
            b = unique("obob")
            first = await online(stack, cluster.dept2.url, b, uuid="phone-1")
            other_type = await online(stack, cluster.dept1.url, b, register=False, client="pc")

            second = await online(stack, cluster.master.url, b, register=False, uuid="phone-2")

            assert await first.expect("other-login", timeout=10) == {"uuid": "phone-2", "nodeId": "master"}
            reason = await first.expect_closed(10)
            assert reason.code == 4001, reason
            # sessions of other client types stay, and the new session works
            await cluster.no_relayed_frame("other-login", [other_type, second], cluster.master)
            await other_type.send("ping")
            assert "ts" in await other_type.expect("pong")
            await second.send("ping")
            assert "ts" in await second.expect("pong")


async def test_messages_sent_while_offline_are_replayed_on_another_node_then_sync_done(cluster: Cluster) -> None:
    with trio.fail_after(LIMIT):
        async with contextlib.AsyncExitStack() as stack:
            b = unique("fbob")
            alice = await online(stack, cluster.dept1.url, unique("falice"))
            async with connect(cluster.dept2.url) as bob:
                await bob.register_login(b)
                await bob.ready()
            assert bob.user_id is not None
            acks = [await alice.chat(bob.user_id, f"offline {i}", f"f-{i}") for i in range(5)]

            async with connect(cluster.master.url) as moved:  # a different node than before
                await moved.login(b)
                replayed = await moved.ready()  # asserts sync-done {count} == len(replayed)
                assert [m["id"] for m in replayed] == [a["id"] for a in acks]  # oldest first
                assert all(m["offline"] is True and m["fromId"] == alice.user_id for m in replayed)
                assert [m["content"] for m in replayed] == [f"offline {i}" for i in range(5)]
                live = await alice.chat(bob.user_id, "live now", "f-live")
                got = await moved.expect("message")
                assert got["id"] == live["id"] and "offline" not in got
                await moved.send("received", ids=[a["id"] for a in [*acks, live]])
                for _ in range(6):
                    await alice.expect("receipt")

            async with connect(cluster.dept1.url) as third:  # and a third node: nothing left
                await third.login(b)
                assert await third.ready() == []


async def test_contacts_on_one_node_show_users_online_on_other_nodes(cluster: Cluster) -> None:
    with trio.fail_after(LIMIT):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, cluster.dept1.url, unique("kalice"))
            bob = await online(stack, cluster.dept2.url, unique("kbob"))
            carol = await online(stack, cluster.master.url, unique("kcarol"))
            async with connect(cluster.dept2.url) as gone:
                await gone.register_login(unique("kgone"))
                await gone.ready()
            offline_id = gone.user_id

            await alice.send("contacts")
            contacts = await alice.expect("contacts")
            online_by_id = {u["userId"]: u["online"] for u in contacts["users"]}
            assert online_by_id[bob.user_id] is True
            assert online_by_id[carol.user_id] is True
            assert online_by_id[offline_id] is False
            assert alice.user_id not in online_by_id


async def test_history_read_on_another_node_than_the_messages_were_sent_on(cluster: Cluster) -> None:
    with trio.fail_after(LIMIT):
        async with contextlib.AsyncExitStack() as stack:
            a = unique("halice")
            alice = await online(stack, cluster.dept1.url, a)
            bob = await online(stack, cluster.dept2.url, unique("hbob"))
            assert bob.user_id is not None
            acks = [await alice.chat(bob.user_id, f"h {i}", f"h-{i}") for i in range(4)]
            assert alice.user_id is not None
            acks.append(await bob.chat(alice.user_id, "h back", "h-b"))

            alice_pc = await online(stack, cluster.master.url, a, register=False, client="pc")
            await alice_pc.send("history", chatId=bob.user_id, type="friend")
            history = await alice_pc.expect("history")
            assert history["chatId"] == bob.user_id and history["type"] == "friend"
            assert [m["id"] for m in history["messages"]] == [x["id"] for x in acks]  # oldest first
            assert history["more"] is False

            await bob.send("history", chatId=alice.user_id, type="friend", limit=2, before=acks[-1]["id"])
            page = await bob.expect("history")
            assert [m["id"] for m in page["messages"]] == [x["id"] for x in acks[2:4]]
            assert page["more"] is True
