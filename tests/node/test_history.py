"""History paging (PROTOCOL.md §2.3 `history`)."""

from __future__ import annotations

import contextlib

import pytest
import trio

from ..support import make_group, online


async def test_history_pages_backwards_oldest_first_with_more(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            ids = []
            for i in range(7):
                sender, peer = (alice, bob) if i % 2 == 0 else (bob, alice)
                assert peer.user_id is not None
                ids.append((await sender.chat(peer.user_id, f"h{i}", f"h-{i}"))["id"])
            await alice.send("history", chatId=bob.user_id, type="friend", limit=3, rid="p1")
            page = await alice.expect("history")
            assert (page["chatId"], page["type"], page["rid"], page["more"]) == (bob.user_id, "friend", "p1", True)
            assert [m["id"] for m in page["messages"]] == ids[4:]
            assert [m["content"] for m in page["messages"]] == ["h4", "h5", "h6"]
            await alice.send("history", chatId=bob.user_id, type="friend", limit=3, before=ids[4])
            page = await alice.expect("history")
            assert [m["id"] for m in page["messages"]] == ids[1:4] and page["more"] is True
            await alice.send("history", chatId=bob.user_id, type="friend", limit=3, before=ids[1])
            page = await alice.expect("history")
            assert [m["id"] for m in page["messages"]] == ids[:1] and page["more"] is False


async def test_both_peers_see_the_same_conversation(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            carol = await online(stack, url, "carol")
            assert bob.user_id is not None
            mine = await alice.chat(bob.user_id, "to bob", "c-1")
            assert alice.user_id is not None
            theirs = await bob.chat(alice.user_id, "to alice", "c-2")
            assert carol.user_id is not None
            await alice.chat(carol.user_id, "to carol: another conversation", "c-3")
            for client, peer in ((alice, bob), (bob, alice)):
                await client.send("history", chatId=peer.user_id, type="friend")
                page = await client.expect("history")
                assert [m["id"] for m in page["messages"]] == [mine["id"], theirs["id"]]
                assert page["more"] is False
                first = page["messages"][0]
                assert (first["fromId"], first["chatId"], first["type"]) == (alice.user_id, bob.user_id, "friend")


async def test_history_limit_defaults_to_50(url: str) -> None:
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            for i in range(52):
                await alice.send("message", cid=f"d-{i}", chatId=bob.user_id, type="friend",
                                 messageType="text", content=str(i))
            acks = [await alice.expect("ack") for _ in range(52)]
            await bob.send("history", chatId=alice.user_id, type="friend")
            page = await bob.expect("history")
            assert [m["id"] for m in page["messages"]] == [a["id"] for a in acks[2:]]
            assert page["more"] is True


async def test_group_history_for_members_only(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            eve = await online(stack, url, "eve")
            group_id = await make_group(alice, [bob], told=[])
            acks = [await alice.chat(group_id, "g0", "g-0", chat_type="group"),
                    await bob.chat(group_id, "g1", "g-1", chat_type="group")]
            await bob.send("history", chatId=group_id, type="group", limit=100)
            page = await bob.expect("history")
            assert [m["id"] for m in page["messages"]] == [a["id"] for a in acks]
            assert (page["chatId"], page["type"], page["more"]) == (group_id, "group", False)
            await eve.send("history", chatId=group_id, type="group", rid="peek")
            assert (await eve.expect_error("forbidden"))["rid"] == "peek"


async def test_history_of_an_unknown_user_or_group_is_not_found(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            for chat_type in ("friend", "group"):
                await alice.send("history", chatId="123456789", type=chat_type, rid=chat_type)
                assert (await alice.expect_error("not-found"))["rid"] == chat_type


@pytest.mark.parametrize("limit", [0, 101, -1, "10", 2.5])
async def test_history_limit_outside_1_to_100_is_invalid(url: str, limit: object) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            await alice.send("history", chatId=bob.user_id, type="friend", limit=limit, rid="lim")
            assert (await alice.expect_error("invalid"))["rid"] == "lim"


async def test_empty_conversation_has_empty_history(url: str) -> None:
    with trio.fail_after(10):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob = await online(stack, url, "bob")
            await alice.send("history", chatId=bob.user_id, type="friend", limit=1)
            page = await alice.expect("history")
            assert (page["messages"], page["more"]) == ([], False)
