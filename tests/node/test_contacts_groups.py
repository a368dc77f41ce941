"""Contacts and groups (PROTOCOL.md §2.4)."""

from __future__ import annotations

import contextlib
import time

import trio

from vim_cluster.node.app import RunningNode

from ..support import Client, all_online, connect, make_group, online


def ids(*clients: Client) -> list[str]:
    return sorted(c.user_id or "" for c in clients)


async def test_contacts_lists_users_with_online_flags_and_my_groups(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            async with connect(url) as carol:
                await carol.send("register", username="carol", password="correct horse battery", name="Carol C.")
                carol.user_id = (await carol.expect("register-ok"))["userId"]
            await alice.send("group-create", name="team", members=[bob.user_id])
            group = await alice.expect("group-ok")
            await bob.send("group-create", name="not alice's", members=[carol.user_id])
            await bob.expect("group-ok")
            await alice.send("contacts", rid="c")
            contacts = await alice.expect("contacts")
            assert contacts["rid"] == "c"
            users = {u["userId"]: u for u in contacts["users"]}
            extra = {"deptId": None, "unread": 0}  # issue 13's additive fields
            assert users[bob.user_id] == {"userId": bob.user_id, "name": "bob", "online": True, **extra}
            assert users[carol.user_id] == {"userId": carol.user_id, "name": "Carol C.", "online": False, **extra}
            (mine,) = contacts["groups"]
            assert (mine["groupId"], mine["name"]) == (group["groupId"], "team")
            assert sorted(mine["members"]) == ids(alice, bob)


async def test_contacts_online_flag_follows_sessions(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")

            async def bob_online() -> bool:
                await alice.send("contacts")
                users = {u["userId"]: u for u in (await alice.expect("contacts"))["users"]}
                return bool(users[bob_id]["online"])

            async with connect(url) as bob:
                await bob.register_login("bob")
                bob_id = bob.user_id
                assert not await bob_online()  # logged in, not ready: no session
                await bob.ready()
                assert await bob_online()
            with trio.fail_after(3):
                while await bob_online():  # the node notices the close
                    await trio.sleep(0.05)


async def test_group_create_answers_the_creator_and_tells_every_member_session(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            alice_pc = await online(stack, url, "alice", register=False, client="pc")
            bob = await online(stack, url, "bob")
            bob_phone = await online(stack, url, "bob", register=False, client="android")
            carol = await online(stack, url, "carol")
            outsider = await online(stack, url, "dave")
            await alice.send("group-create", name="team", members=[bob.user_id, carol.user_id], rid="mk")
            created = await alice.expect("group-ok")
            assert created["rid"] == "mk" and created["name"] == "team"
            assert created["groupId"].isdigit()
            assert sorted(created["members"]) == ids(alice, bob, carol)  # the creator is a member
            for session in (alice_pc, bob, bob_phone, carol):
                told = await session.expect("group-ok")
                assert told["groupId"] == created["groupId"] and sorted(told["members"]) == ids(alice, bob, carol)
                assert "rid" not in told
            await outsider.no_frame("group-ok")
            await alice.no_frame("group-ok")


async def test_group_create_with_an_unknown_member_or_bad_name_is_refused(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            await alice.send("group-create", name="team", members=["123456789"], rid="nf")
            assert (await alice.expect_error("not-found"))["rid"] == "nf"
            await alice.send("group-create", name="", members=[], rid="empty")
            assert (await alice.expect_error("invalid"))["rid"] == "empty"
            await alice.send("contacts")
            assert (await alice.expect("contacts"))["groups"] == []


async def test_owner_adds_members_and_everyone_involved_hears(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice, bob, carol = await all_online(stack, url, "alice", "bob", "carol")
            group_id = await make_group(alice, [bob])
            await alice.send("group-add", groupId=group_id, members=[carol.user_id], rid="add")
            changed = await alice.expect("group-ok")
            assert changed["rid"] == "add" and sorted(changed["members"]) == ids(alice, bob, carol)
            for member in (bob, carol):
                assert sorted((await member.expect("group-ok"))["members"]) == ids(alice, bob, carol)
            ack = await bob.chat(group_id, "welcome carol", "w-1", chat_type="group")
            assert (await carol.expect("message"))["id"] == ack["id"]


async def test_only_the_owner_may_add_or_remove_members(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice, bob, carol = await all_online(stack, url, "alice", "bob", "carol")
            group_id = await make_group(alice, [bob])
            await bob.send("group-add", groupId=group_id, members=[carol.user_id], rid="a")
            assert (await bob.expect_error("forbidden"))["rid"] == "a"
            await bob.send("group-remove", groupId=group_id, members=[alice.user_id], rid="r")
            assert (await bob.expect_error("forbidden"))["rid"] == "r"
            await carol.send("group-add", groupId=group_id, members=[carol.user_id], rid="self")
            assert (await carol.expect_error("forbidden"))["rid"] == "self"
            await alice.send("contacts")
            (group,) = (await alice.expect("contacts"))["groups"]
            assert sorted(group["members"]) == ids(alice, bob)


async def test_owner_removes_a_member_who_is_told_and_can_no_longer_post(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice, bob, carol = await all_online(stack, url, "alice", "bob", "carol")
            group_id = await make_group(alice, [bob, carol])
            await alice.send("group-remove", groupId=group_id, members=[bob.user_id], rid="rm")
            changed = await alice.expect("group-ok")
            assert changed["rid"] == "rm" and sorted(changed["members"]) == ids(alice, carol)
            told = await bob.expect("group-ok")  # the removed member hears of it
            assert told["groupId"] == group_id and bob.user_id not in told["members"]
            assert sorted((await carol.expect("group-ok"))["members"]) == ids(alice, carol)
            await bob.send("message", cid="gone", chatId=group_id, type="group", messageType="text", content="x")
            await bob.expect_error("not-member")
            ack = await alice.chat(group_id, "without bob", "wb-1", chat_type="group")
            assert (await carol.expect("message"))["id"] == ack["id"]
            await bob.no_frame("message")


async def test_the_owner_cannot_be_removed(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            group_id = await make_group(alice, name="solo")
            await alice.send("group-remove", groupId=group_id, members=[alice.user_id], rid="me")
            assert (await alice.expect_error("invalid"))["rid"] == "me"


async def test_changing_an_unknown_group_is_not_found(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            for code in ("group-add", "group-remove"):
                await alice.send(code, groupId="123456789", members=[bob.user_id], rid=code)
                assert (await alice.expect_error("not-found"))["rid"] == code


async def test_adding_an_unknown_user_is_not_found_and_changes_nothing(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            group_id = await make_group(alice)
            await alice.send("group-add", groupId=group_id, members=["123456789"], rid="ghost")
            assert (await alice.expect_error("not-found"))["rid"] == "ghost"
            await alice.send("contacts")
            (group,) = (await alice.expect("contacts"))["groups"]
            assert group["members"] == [alice.user_id]


async def test_group_create_is_limited_per_hour_and_in_all(start_node) -> None:
    """Attack: one user creates groups without end (each a directory write and a fan-out to
    its members). Defended: vim.group.create-per-hour groups an hour (`rate-limited`, nothing
    created, nobody told) and vim.group.max-owned owned in all (`forbidden`). Here 2 an hour
    and 3 in all; the node's wall clock is moved an hour on."""
    later = [0]
    node: RunningNode = await start_node(extra={"group": {"create-per-hour": 2, "max-owned": 3}},
                                         clock_ms=lambda: int(time.time() * 1000) + later[0])
    url = f"ws://127.0.0.1:{node.client_port}/"
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            alice, bob = await all_online(stack, url, "alice", "bob")
            for n in range(2):
                await make_group(alice, [bob], name=f"g{n}")
            await alice.send("group-create", name="one too many", members=[bob.user_id], rid="third")
            refused = await alice.expect_error("rate-limited")
            assert refused["rid"] == "third" and "2 groups" in refused["detail"]
            await bob.send("group-create", name="bob's", members=[alice.user_id])  # another user's own count
            await bob.expect("group-ok")
            await alice.expect("group-ok")
            later[0] = 3601 * 1000
            await make_group(alice, [bob], name="an hour later")
            await alice.send("group-create", name="a fourth", members=[], rid="fourth")
            refused = await alice.expect_error("forbidden")
            assert refused["rid"] == "fourth" and "at most 3" in refused["detail"]
            await bob.no_frame("group-ok")
            await alice.send("contacts")
            owned = [g for g in (await alice.expect("contacts"))["groups"] if g["owner"] == alice.user_id]
            assert sorted(g["name"] for g in owned) == ["an hour later", "g0", "g1"]
