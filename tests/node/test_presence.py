"""Presence across the cluster (issue 13): `presence {userId, online, nodeId?}` to every
session when a user's first session opens and their last closes, on any node, coalesced."""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import pytest
import trio
from trio.testing import MockClock
from trio_websocket import open_websocket_url

from vim_cluster.model import User, UserId
from vim_cluster.node.app import RunningNode
from vim_cluster.node.forward_hub import MasterRelay
from vim_cluster.tunables import DEFAULTS

from ..support import Client, connect, online

STORM_USERS = 1000


def changes(frame: dict[str, Any]) -> list[dict[str, Any]]:
    return list(frame.get("users", [frame]))


async def watching(client: Client) -> Client:
    """The client asks for `contacts`, and so gets presence updates from then on."""
    await client.send("contacts", rid="watch")
    await client.expect("contacts")
    return client


async def next_change(client: Client, user_id: str | None) -> dict[str, Any]:
    """The next presence change about `user_id` (others' changes are skipped)."""
    while True:
        for change in changes(await client.expect("presence")):
            if change["userId"] == user_id:
                return change


async def cluster_of_two(start_node: Any) -> tuple[RunningNode, RunningNode]:
    master = await start_node(node_id="m")
    slave = await start_node(node_id="s", node_type="slave",
                             master_url=f"ws://127.0.0.1:{master.forward_port}/forward")
    with trio.fail_after(15):
        while not (slave.ctx.delivery.cluster.healthy() and master.ctx.delivery.cluster.warm.is_set()):
            await trio.sleep(0.05)
    return master, slave


def ws_url(node: RunningNode, token: str | None = None) -> str:
    return f"ws://127.0.0.1:{node.client_port}/" + (f"?token={token}" if token else "")


async def no_presence(client: Client, clock: MockClock) -> None:
    """No presence frame through two coalescing windows (virtual time, then a barrier each)."""
    for _ in range(2):
        clock.jump(DEFAULTS.presence_window_s)
        await client.no_frame("presence")


async def test_contacts_hear_a_user_come_online_and_go_offline(node: RunningNode, url: str,
                                                               jump_clock: MockClock) -> None:
    with trio.fail_after(10 + 2 * DEFAULTS.presence_window_s):
        async with contextlib.AsyncExitStack() as stack:
            alice = await watching(await online(stack, url, "alice"))
            async with connect(url) as bob:
                await bob.register_login("bob")
                await bob.ready()
                assert await next_change(alice, bob.user_id) == {
                    "userId": bob.user_id, "online": True, "nodeId": node.ctx.node_id}
                async with connect(url) as bob_pc:  # a second session: no news
                    await bob_pc.login("bob")
                    await bob_pc.ready(client="pc")
                    await no_presence(alice, jump_clock)
            assert await next_change(alice, bob.user_id) == {"userId": bob.user_id, "online": False}


async def test_sessions_that_never_asked_for_contacts_get_no_presence(url: str, jump_clock: MockClock) -> None:
    with trio.fail_after(10 + 2 * DEFAULTS.presence_window_s):
        async with contextlib.AsyncExitStack() as stack:
            bot = await online(stack, url, "bot")
            watcher = await watching(await online(stack, url, "watcher"))
            carol = await online(stack, url, "carol")
            assert (await next_change(watcher, carol.user_id))["online"] is True
            await no_presence(bot, jump_clock)


async def test_presence_crosses_nodes_through_the_master(start_node: Any) -> None:
    master, slave = await cluster_of_two(start_node)
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            on_master = await watching(await online(stack, ws_url(master), "alice"))
            on_slave = await watching(await online(stack, ws_url(slave), "bob"))
            assert await next_change(on_master, on_slave.user_id) == {
                "userId": on_slave.user_id, "online": True, "nodeId": "s"}
            async with connect(ws_url(master)) as carol:
                await carol.register_login("carol")
                await carol.ready()
                assert (await next_change(on_slave, carol.user_id))["nodeId"] == "m"
            assert await next_change(on_slave, carol.user_id) == {"userId": carol.user_id, "online": False}


@pytest.mark.timeout(180)
async def test_a_reconnect_storm_of_1000_users_sends_a_bounded_number_of_presence_frames(
    start_node: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    """1,000 users on the slave all drop and reconnect at once; an observer on the master
    counts presence frames. Uncoalesced it would get 2,000 (one per session open or close)."""
    master, slave = await cluster_of_two(start_node)
    ctx = slave.ctx
    users = [User(UserId(await ctx.ids.next_id()), f"storm{n}", f"Storm {n}", "-") for n in range(STORM_USERS)]
    for user in users:
        await ctx.db(ctx.directory.create_user, user)
    tokens = [ctx.tokens.issue(u.id, ctx.clock_ms())[0] for u in users]
    relay = master.ctx.delivery.cluster
    assert isinstance(relay, MasterRelay)
    async with contextlib.AsyncExitStack() as stack:
        observer = await watching(await online(stack, ws_url(master), "observer"))

        async def all_connected(expected: int) -> None:
            while relay.board.online() != expected or relay.routes.take_touched():
                await trio.sleep(DEFAULTS.presence_window_s)
            await trio.sleep(DEFAULTS.presence_window_s * 1.5)  # one more window: nothing pending

        async def hold(token: str, stop: trio.Event, opened: list[int]) -> None:
            async with open_websocket_url(ws_url(slave, token)) as ws:
                await ws.send_message('{"code":"ping"}')
                await ws.get_message()
                opened.append(1)
                await stop.wait()

        async def frames_so_far() -> list[dict[str, Any]]:
            seen = [f["message"] for f in observer.backlog if f["code"] == "presence"]
            observer.backlog = [f for f in observer.backlog if f["code"] != "presence"]
            return seen

        with trio.fail_after(150):
            async with trio.open_nursery() as nursery:
                first = trio.Event()
                opened: list[int] = []
                for token in tokens:
                    nursery.start_soon(hold, token, first, opened)
                while len(opened) < STORM_USERS:
                    await trio.sleep(0.05)
                await all_connected(STORM_USERS + 1)
                await observer.send("ping")
                await observer.expect("pong")
                await frames_so_far()
                started = time.monotonic()
                first.set()  # every user drops...
                second = trio.Event()
                reopened: list[int] = []
                for token in tokens:  # ...and reconnects at once
                    nursery.start_soon(hold, token, second, reopened)
                while len(reopened) < STORM_USERS:
                    await trio.sleep(0.01)
                storm_s = time.monotonic() - started
                await all_connected(STORM_USERS + 1)
                await observer.send("ping")
                await observer.expect("pong")
                frames = await frames_so_far()
                second.set()
    entries = sum(len(changes(f)) for f in frames)
    windows = math.ceil(storm_s / DEFAULTS.presence_window_s) + 2
    per_window = math.ceil(2 * STORM_USERS / DEFAULTS.presence_chunk)
    with capsys.disabled():
        print(f"\npresence storm: {STORM_USERS} users reconnected in {storm_s:.2f} s; the observer got "
              f"{len(frames)} presence frames with {entries} changes (bound {windows} windows x "
              f"{per_window} frames; uncoalesced: {2 * STORM_USERS})")
    assert len(frames) <= windows * per_window
    assert entries <= 2 * STORM_USERS  # at most one offline and one online per user
