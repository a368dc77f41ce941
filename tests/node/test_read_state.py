"""State that survives a reload (issue 13): history items carry delivered/read of my friend
messages and read counts of group messages; contacts carry unread counts and departments."""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from vim_cluster.admin import add_user
from vim_cluster.node.app import RunningNode

from ..support import PASSWORD, Client, all_online, connect, make_group, online


async def history(client: Client, chat_id: str, chat_type: str = "friend") -> list[dict[str, Any]]:
    await client.send("history", chatId=chat_id, type=chat_type, rid="h")
    return list((await client.expect("history"))["messages"])


async def contacts(client: Client) -> dict[str, Any]:
    await client.send("contacts")
    return await client.expect("contacts")


async def test_history_says_sent_then_delivered_then_read_for_my_friend_messages(url: str) -> None:
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            async with connect(url) as bob:
                await bob.register_login("bob")
            first = await alice.chat(bob.user_id or "", "one", "c-1")
            second = await alice.chat(bob.user_id or "", "two", "c-2")
            assert [m.get("status") for m in await history(alice, bob.user_id or "")] == ["sent", "sent"]
            async with connect(url) as bob_again:
                await bob_again.login("bob")
                replayed = await bob_again.ready()
                assert [m["id"] for m in replayed] == [first["id"], second["id"]]
                # bob's side: his contacts say 2 unread from alice, his history has no status
                users = {u["userId"]: u for u in (await contacts(bob_again))["users"]}
                assert users[alice.user_id]["unread"] == 2
                assert all("status" not in m for m in await history(bob_again, alice.user_id or ""))
                await bob_again.send("received", ids=[first["id"], second["id"]])
                await alice.expect("receipt")
                await alice.expect("receipt")
                assert [m["status"] for m in await history(alice, bob.user_id or "")] == ["delivered", "delivered"]
                await bob_again.send("read", chatId=alice.user_id, type="friend", timestamp=first["timestamp"])
                await alice.expect("read")
                assert [m["status"] for m in await history(alice, bob.user_id or "")] == ["read", "delivered"]
                users = {u["userId"]: u for u in (await contacts(bob_again))["users"]}
                assert users[alice.user_id]["unread"] == 1


async def test_group_history_counts_readers_and_contacts_count_unread(url: str) -> None:
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            alice, bob, carol = await all_online(stack, url, "alice", "bob", "carol")
            group = await make_group(alice, [bob, carol], told=[])
            sent = [await alice.chat(group, f"g{n}", f"g-{n}", chat_type="group") for n in range(2)]
            assert [m["readCount"] for m in await history(alice, group, "group")] == [0, 0]
            (mine,) = (await contacts(bob))["groups"]
            assert mine["unread"] == 2
            await bob.send("read", chatId=group, type="group", timestamp=sent[1]["timestamp"])
            await carol.send("read", chatId=group, type="group", timestamp=sent[0]["timestamp"])
            await carol.send("ping", rid="barrier")
            await carol.expect("pong")
            await bob.send("ping", rid="barrier")
            await bob.expect("pong")
            assert [m["readCount"] for m in await history(bob, group, "group")] == [2, 1]
            (mine,) = (await contacts(bob))["groups"]
            assert mine["unread"] == 0


async def test_contacts_list_departments_with_their_members(node: RunningNode, url: str) -> None:
    config = node.ctx.config
    backend = await trio.to_thread.run_sync(lambda: add_user(config, "dora", PASSWORD, "Dora", dept="研发部/Backend"))
    sales = await trio.to_thread.run_sync(lambda: add_user(config, "sam", PASSWORD, None, dept="Sales"))
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            reply = await contacts(alice)
            depts = {d["name"]: d for d in reply["departments"]}
            assert set(depts) == {"研发部", "Backend", "Sales"}
            assert depts["Backend"]["parentId"] == depts["研发部"]["deptId"]
            assert depts["研发部"]["parentId"] is None
            assert depts["Backend"]["members"] == [str(backend)]
            assert depts["Sales"]["members"] == [str(sales)] and depts["研发部"]["members"] == []
            users = {u["userId"]: u for u in reply["users"]}
            assert users[str(backend)]["deptId"] == depts["Backend"]["deptId"]
            assert users[str(sales)]["name"] == "sam"
