"""One user on several devices (PROTOCOL.md §2.1 multi-device, §2.2 multi-device sync)."""

from __future__ import annotations

import contextlib
import threading

import trio

from vim_cluster.errors import StoreUnavailable
from vim_cluster.model import UserId
from vim_cluster.node.app import RunningNode
from vim_cluster.ports import Route

from ..support import connect, online
from .test_presence import cluster_of_two, ws_url


async def test_every_device_of_the_recipient_gets_every_message(url: str) -> None:
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob_web = await online(stack, url, "bob", client="web")
            bob_pc = await online(stack, url, "bob", register=False, client="pc")
            bob_phone = await online(stack, url, "bob", register=False, client="android")
            assert bob_web.user_id is not None
            acks = [await alice.chat(bob_web.user_id, f"m{i}", f"c{i}") for i in range(3)]
            for device in (bob_web, bob_pc, bob_phone):
                got = [await device.expect("message") for _ in acks]
                assert [m["id"] for m in got] == [a["id"] for a in acks]
                assert [m["content"] for m in got] == ["m0", "m1", "m2"]
                assert all(m["fromId"] == alice.user_id and m["chatId"] == bob_web.user_id for m in got)


async def test_the_senders_other_devices_get_the_message_and_the_sending_session_only_the_ack(url: str) -> None:
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            bob = await online(stack, url, "bob")
            alice_web = await online(stack, url, "alice", client="web")
            alice_pc = await online(stack, url, "alice", register=False, client="pc")
            assert bob.user_id is not None
            ack = await alice_web.chat(bob.user_id, "synced", "c-sync")
            copy = await alice_pc.expect("message")
            assert copy["id"] == ack["id"] and copy["cid"] == "c-sync"
            assert copy["fromId"] == alice_web.user_id and copy["chatId"] == bob.user_id
            assert copy["content"] == "synced" and copy["timestamp"] == ack["timestamp"]
            assert (await bob.expect("message"))["id"] == ack["id"]
            await alice_web.no_frame("message")


async def test_a_second_session_of_one_client_type_replaces_the_first_with_other_login(
    node: RunningNode, url: str
) -> None:
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            first = await online(stack, url, "bob", client="web", uuid="web-1")
            phone = await online(stack, url, "bob", register=False, client="android", uuid="phone-1")
            second = await online(stack, url, "bob", register=False, client="web", uuid="web-2")
            notice = await first.expect("other-login")
            assert notice == {"uuid": "web-2", "nodeId": node.ctx.node_id}
            reason = await first.expect_closed()
            assert reason.code != 1000 or reason.reason  # closed by the node, not by the client
            await phone.no_frame("other-login")  # other client types stay
            await second.no_frame("other-login")
            assert second.user_id is not None
            ack = await alice.chat(second.user_id, "after", "c-after")
            assert (await second.expect("message"))["id"] == ack["id"]
            assert (await phone.expect("message"))["id"] == ack["id"]
            assert not phone.ws.closed and not second.ws.closed


async def test_a_replaced_session_gets_no_more_frames(url: str) -> None:
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            old = await online(stack, url, "bob", client="pc")
            await online(stack, url, "bob", register=False, client="pc")
            await old.expect("other-login")
            await old.expect_closed()
            assert old.user_id is not None
            await alice.chat(old.user_id, "to the new one", "c-new")
            assert all(frame["code"] != "message" for frame in old.backlog)


async def test_handshake_login_with_the_same_client_type_also_replaces(url: str) -> None:
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            first = await online(stack, url, "bob", client="ios", uuid="ios-1")
            assert first.token
            second = await stack.enter_async_context(connect(f"{url}?token={first.token}&client=ios&uuid=ios-2"))
            notice = await first.expect("other-login")
            assert notice["uuid"] == "ios-2"
            await first.expect_closed()
            await second.send("ping", rid="alive")
            assert (await second.expect("pong"))["rid"] == "alive"


async def test_a_device_going_away_leaves_the_others_receiving(url: str) -> None:
    with trio.fail_after(15):
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            bob_pc = await online(stack, url, "bob", client="pc")
            async with connect(url) as bob_web:
                await bob_web.login("bob")
                await bob_web.ready(client="web")
            assert bob_pc.user_id is not None
            ack = await alice.chat(bob_pc.user_id, "still here", "c-still")
            assert (await bob_pc.expect("message"))["id"] == ack["id"]


async def test_two_sessions_of_one_client_type_opening_at_once_on_two_nodes_leave_one(start_node) -> None:
    """The slave's session reads the user's routes while the master's opens: each node used to
    read them before adding its own, so each missed the other and both sessions stayed."""
    master, slave = await cluster_of_two(start_node)
    adding, opened = threading.Event(), threading.Event()
    real = slave.ctx.registry.add_route

    def add_route_once_the_master_opened(user_id: UserId, route: Route) -> list[Route]:
        adding.set()
        assert opened.wait(10)
        return real(user_id, route)

    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            on_slave = await stack.enter_async_context(connect(ws_url(slave)))
            await on_slave.register_login("bob")
            slave.ctx.registry.add_route = add_route_once_the_master_opened  # type: ignore[method-assign]
            await on_slave.send("ready", token=on_slave.token, client="web", uuid="web-s")
            await trio.to_thread.run_sync(adding.wait, 10)
            on_master = await stack.enter_async_context(connect(ws_url(master)))
            await on_master.login("bob")
            await on_master.ready(client="web", uuid="web-m")
            opened.set()
            await on_slave.expect("ready-ok")
            assert await on_master.expect("other-login") == {"uuid": "web-s", "nodeId": slave.ctx.node_id}
            assert (await on_master.expect_closed()).code == 4001
            await on_slave.send("ping", rid="alive")
            assert (await on_slave.expect("pong"))["rid"] == "alive"


async def test_a_session_replaced_while_it_joins_its_node_is_closed_all_the_same(start_node) -> None:
    """The master's new session reads the slave's session's route and kicks it, and the kick
    reaches the slave before that session joined its node's sessions: it used to find no one
    there and be dropped, and both sessions stayed."""
    master, slave = await cluster_of_two(start_node)
    kicked = threading.Event()
    real = slave.ctx.registry.add_route

    def add_route_and_wait_for_the_kick(user_id: UserId, route: Route) -> list[Route]:
        earlier = real(user_id, route)
        assert kicked.wait(10)
        return earlier

    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            carol = await online(stack, ws_url(slave), "carol")
            assert carol.user_id is not None
            on_slave = await stack.enter_async_context(connect(ws_url(slave)))
            await on_slave.register_login("bob")
            slave.ctx.registry.add_route = add_route_and_wait_for_the_kick  # type: ignore[method-assign]
            await on_slave.send("ready", token=on_slave.token, client="web", uuid="web-s")
            on_master = await stack.enter_async_context(connect(ws_url(master)))
            await on_master.login("bob")
            await on_master.ready(client="web", uuid="web-m")
            # The master sent the slave the kick while that session opened; what it relays to
            # the slave after it comes after it.
            await on_master.chat(carol.user_id, "after the kick", "c-1")
            await carol.expect("message")
            kicked.set()
            assert await on_slave.expect("other-login") == {"uuid": "web-m", "nodeId": master.ctx.node_id}
            assert (await on_slave.expect_closed()).code == 4001
            await on_master.send("ping", rid="alive")
            assert (await on_master.expect("pong"))["rid"] == "alive"


async def test_a_session_replaced_while_it_joins_does_not_close_the_one_that_replaced_it(start_node) -> None:
    """Two sessions of one client type open at once on one node; the later in Redis (it read
    the earlier's route) joins first and kicks the earlier, which is not joined yet (an early
    kick). The earlier, once it joins, takes that kick and must not in turn replace the later
    one, which it finds among the node's sessions: both were closed."""
    node: RunningNode = await start_node()
    added, release = threading.Event(), threading.Event()
    real = node.ctx.registry.add_route
    calls = 0

    def add_route_first_waits(user_id: UserId, route: Route) -> list[Route]:
        nonlocal calls
        calls += 1
        earlier = real(user_id, route)
        if calls == 1:
            added.set()
            assert release.wait(10)
        return earlier

    with trio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(connect(ws_url(node)))
            await first.register_login("bob")
            node.ctx.registry.add_route = add_route_first_waits  # type: ignore[method-assign]
            await first.send("ready", token=first.token, client="web", uuid="web-1")
            await trio.to_thread.run_sync(added.wait, 10)
            second = await stack.enter_async_context(connect(ws_url(node)))
            await second.login("bob")
            await second.ready(client="web", uuid="web-2")
            release.set()
            assert await first.expect("other-login") == {"uuid": "web-2", "nodeId": node.ctx.node_id}
            assert (await first.expect_closed()).code == 4001
            await second.send("ping", rid="alive")
            assert (await second.expect("pong"))["rid"] == "alive"


async def test_a_session_whose_route_was_written_but_its_open_failed_leaves_no_route(node: RunningNode, url: str) -> None:
    """Redis failed between the route's write and the read of which nodes are live (two round
    trips): the session did not open (`error unavailable`), and its route must not stay behind
    as a session that does not exist (whereis, presence) until the node stops."""
    registry = node.ctx.registry
    real = registry.add_route

    def written_then_failed(user_id: UserId, route: Route) -> list[Route]:
        real(user_id, route)
        raise StoreUnavailable("redis: connection lost after the route was written")

    with trio.fail_after(10):
        async with connect(url) as bob:
            await bob.register_login("bob")
            registry.add_route = written_then_failed  # type: ignore[method-assign]
            await bob.send("ready", token=bob.token, rid="r1")
            await bob.expect_error("unavailable")
            registry.add_route = real  # type: ignore[method-assign]
            assert bob.user_id is not None
            assert await node.ctx.redis(registry.routes, [UserId(int(bob.user_id))]) == {int(bob.user_id): []}
            await bob.ready()  # Redis answers again: the session opens
