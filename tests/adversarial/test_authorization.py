"""Authorization of every command: what one user tries on chats, groups and messages that are
not theirs, and what an unauthenticated connection tries at all."""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from ..cluster.harness import Cluster
from ..support import connect, make_group, online
from .attack import name, watch

ANONYMOUS_PROBES: dict[str, dict[str, Any]] = {
    "message": {"cid": "c", "chatId": "1", "type": "friend", "messageType": "text", "content": "x"},
    "received": {"ids": ["1"]},
    "read": {"chatId": "1", "type": "friend", "timestamp": 1},
    "recall": {"id": "1"},
    "history": {"chatId": "1", "type": "friend"},
    "contacts": {},
    "group-create": {"name": "g", "members": []},
    "group-add": {"groupId": "1", "members": ["1"]},
    "group-remove": {"groupId": "1", "members": ["1"]},
}


async def test_an_unauthenticated_connection_may_only_ping_register_login_and_ready(cluster: Cluster) -> None:
    """Attack: every command except ping/register/login/ready on a connection that has not
    authenticated (in both encodings). Defended: each is `unauthorized`, nothing happens."""
    with trio.fail_after(20):
        async with watch(cluster, cluster.master):
            for binary in (False, True):
                async with connect(cluster.master.url, binary=binary) as anonymous:
                    for code, message in ANONYMOUS_PROBES.items():
                        await anonymous.send(code, rid=code, **message)
                        assert (await anonymous.expect_error("unauthorized"))["rid"] == code


async def test_a_user_cannot_read_change_or_speak_for_chats_that_are_not_theirs(cluster: Cluster) -> None:
    """Attack: Mallory (ready on dept-2) probes Alice's (master) and Bob's (dept-1) chats:
    reads the history of their group, recalls their messages, adds herself to and removes Bob
    from their group, marks their group read, posts to it, confirms Bob's pending messages as
    received, sends a message claiming `fromId` Alice, and reuses Alice's `cid`. Defended:
    `forbidden`/`not-member` for every group probe, `forbidden` for a recall (as for an id
    that does not exist); a friend-chat history only ever holds
    Mallory's own conversation; recipients see Mallory's real id; a reused cid is a new
    message of Mallory's, never Alice's ack; Bob's pending message stays pending and Alice
    gets no receipt."""
    with trio.fail_after(40):
        async with watch(cluster, cluster.dept2), contextlib.AsyncExitStack() as stack:
            alice = await online(stack, cluster.master.url, name("alice"))
            bob = await online(stack, cluster.dept1.url, name("bob"))
            mallory = await online(stack, cluster.dept2.url, name("mallory"))
            group = await make_group(alice, [bob], name="alice and bob")
            assert bob.user_id is not None
            private = await alice.chat(bob.user_id, "our secret", "a-1")
            await alice.send("message", cid="a-2", chatId=group, type="group", messageType="text", content="team secret")
            grouped = await alice.expect("ack")
            for _ in range(2):
                await bob.expect("message")

            probes = [
                ("history", {"chatId": group, "type": "group"}, "forbidden"),
                ("recall", {"id": private["id"]}, "forbidden"),  # as an unknown id: no oracle
                ("recall", {"id": grouped["id"]}, "forbidden"),
                ("group-add", {"groupId": group, "members": [mallory.user_id]}, "forbidden"),
                ("group-remove", {"groupId": group, "members": [bob.user_id]}, "forbidden"),
                ("read", {"chatId": group, "type": "group", "timestamp": 1}, "not-member"),
                ("message", {"cid": "m-1", "chatId": group, "type": "group", "messageType": "text",
                             "content": "let me in"}, "not-member"),
            ]
            for code, message, kind in probes:
                await mallory.send(code, rid=code, **message)
                error = await mallory.expect_error(kind)
                assert error["rid"] == code
            for peer in (alice.user_id, bob.user_id):
                await mallory.send("history", chatId=peer, type="friend", before=str(int(private["id"]) + 1))
                assert (await mallory.expect("history"))["messages"] == []

            await mallory.send("received", ids=[private["id"], grouped["id"]])
            await mallory.send("message", cid="a-1", chatId=bob.user_id, type="friend", messageType="text",
                               content="it is me, alice", fromId=alice.user_id)
            forged = await mallory.expect("ack")
            assert forged["id"] != private["id"]
            delivered = await bob.expect("message")
            assert delivered["fromId"] == mallory.user_id and delivered["id"] == forged["id"]
            await cluster.no_relayed_frame("receipt", [alice], cluster.dept2)  # mallory's node
            async with connect(cluster.dept1.url) as again:  # Bob's offline set is untouched
                await again.ready(token=bob.token, client="pc")
            replayed = [m["id"] for m in await _replay(cluster, bob.token)]
            assert private["id"] in replayed

            await alice.send("group-remove", groupId=group, members=[bob.user_id])
            await alice.expect("group-ok")
            await bob.send("history", chatId=group, type="group")  # removed: out for good
            await bob.expect_error("forbidden")


async def _replay(cluster: Cluster, token: str | None) -> list[dict]:
    async with connect(cluster.master.url) as client:
        return await client.ready(token=token, client="ios")
