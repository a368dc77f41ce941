"""/dashboard.json's fetches of other nodes' /stats.json (node/peer_fetch.py) under a flood."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
import trio
import trio.testing

from vim_cluster.adapters.redis_registry import Keys
from vim_cluster.node.app import RunningNode
from vim_cluster.node.peer_fetch import PEER_FETCHES, PeerFetches
from vim_cluster.ports import NodeInfo

from ..support import all_online, free_port
from .test_http import http

FLOOD = 60


async def silent_listener(nursery: trio.Nursery, accepted: list[int]) -> int:
    """A port that accepts connections (counted in `accepted`) and never answers: a node that
    hangs. Its connections stay open until the nursery ends."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def hold(stream: trio.SocketStream) -> None:
        accepted.append(1)
        async with stream:
            await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, hold, listeners)
    return int(listeners[0].socket.getsockname()[1])


def register(node: RunningNode, node_id: str, http_port: int) -> Callable[[], bool]:
    info = NodeInfo(node_id, "slave", f"ws://127.0.0.1:{free_port()}/", None, f"http://127.0.0.1:{http_port}/",
                    os.getpid(), "t", 0, 0, node.ctx.clock_ms())
    return lambda: node.ctx.registry.acquire_node(info, f"owner-{node_id}", 60)


async def test_a_dashboard_flood_with_a_hung_node_and_a_dead_one_stays_off_the_default_thread_pool(
        start_node, redis_url: str) -> None:
    """Attack: 60 /dashboard.json requests at once (tabs, or anyone who reaches the HTTP port)
    while one node registered alive accepts connections and never answers and another's lease
    lapsed. Defended: the hung node is asked once (the requests share that fetch), the dead
    one not at all, trio's default thread pool (40 threads, the node's address lookups) stays
    free, every request is answered within the wait with both shown unreachable, and messages
    (store work) flow meanwhile."""
    node: RunningNode = await start_node(extra={"http": {"port": free_port()}})
    assert node.http_port
    hung: list[int] = []
    dead: list[int] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as servers, contextlib.AsyncExitStack() as stack:
            await node.ctx.redis(register(node, "hung", await silent_listener(servers, hung)))
            await node.ctx.redis(register(node, "dead", await silent_listener(servers, dead)))
            redis.Redis.from_url(redis_url).delete(Keys.node_lock("dead"))
            url = f"ws://127.0.0.1:{node.client_port}/"
            alice, bob = await all_online(stack, url, "alice", "bob")
            assert bob.user_id is not None
            pool = trio.to_thread.current_default_thread_limiter()
            most_borrowed = 0
            answers: list[dict] = []

            async def dashboard() -> None:
                status, _, body = await http(node.http_port or 0, "/dashboard.json")
                assert status == 200
                answers.append(json.loads(body))

            async with trio.open_nursery() as flood:
                for _ in range(FLOOD):
                    flood.start_soon(dashboard)
                for i in range(20):
                    await alice.chat(bob.user_id, f"m{i}", f"c{i}")
                    most_borrowed = max(most_borrowed, pool.borrowed_tokens)
                while len(answers) < FLOOD:
                    most_borrowed = max(most_borrowed, pool.borrowed_tokens)
                    await trio.sleep(0.01)
            for i in range(20):
                assert (await bob.expect("message"))["content"] == f"m{i}"
            assert (len(hung), len(dead)) == (1, 0), (hung, dead)
            assert most_borrowed <= 2, most_borrowed
            for answer in answers:
                stats = {n["node"]: n["stats"] for n in answer["nodes"]}
                assert stats["hung"]["status"] == stats["dead"]["status"] == "unreachable"
                assert stats["dead"]["error"] == "not alive in Redis"
            servers.cancel_scope.cancel()


async def test_peer_fetches_beyond_the_limit_are_refused_at_once_and_shared_per_url() -> None:
    """PEER_FETCHES fetches of hung URLs hold their threads; one more URL is refused
    (trio.WouldBlock) without a thread; a second request of a running URL shares its fetch."""
    fetches = PeerFetches()
    release = threading.Event()
    started: list[str] = []

    def hang(url: str) -> tuple[int, Any]:
        started.append(url)
        release.wait(10)
        return 200, {"node": url}

    answers: dict[str, tuple[int, Any]] = {}

    async def ask(url: str) -> None:
        answers[url + f"#{len(answers)}"] = await fetches.get(url, lambda: hang(url))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for n in range(PEER_FETCHES):
                nursery.start_soon(ask, f"u{n}")
            nursery.start_soon(ask, "u0")
            await trio.testing.wait_all_tasks_blocked()
            assert fetches.in_flight() == PEER_FETCHES
            with pytest.raises(trio.WouldBlock):
                await fetches.get("one-more", lambda: hang("one-more"))
            release.set()
    assert sorted(started) == [f"u{n}" for n in range(PEER_FETCHES)]  # u0 once
    assert len(answers) == PEER_FETCHES + 1 and fetches.in_flight() == 0
    assert fetches.limiter.borrowed_tokens == 0


async def test_a_node_answering_what_is_not_http_is_shown_unreachable(start_node) -> None:
    """A node registered alive whose HTTP port answers something that is not HTTP (another
    program took the port) or cuts its answer short: that node is shown unreachable, with
    the cause; /dashboard.json still answers 200 (urllib raises http.client's errors, which
    are no OSError: they failed the whole request)."""
    node: RunningNode = await start_node(extra={"http": {"port": free_port()}})
    assert node.http_port

    async def garbage(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(4096)
            await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n")

    async def short(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(4096)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"status\"")

    with trio.fail_after(20):
        async with trio.open_nursery() as servers:
            for name, handler in (("garbage", garbage), ("short", short)):
                listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                servers.start_soon(trio.serve_listeners, handler, listeners)
                await node.ctx.redis(register(node, name, int(listeners[0].socket.getsockname()[1])))
            status, _, body = await http(node.http_port, "/dashboard.json")
            assert status == 200, body
            stats = {n["node"]: n["stats"] for n in json.loads(body)["nodes"]}
            assert stats["garbage"]["status"] == stats["short"]["status"] == "unreachable", stats
            assert stats["garbage"]["error"] and stats["short"]["error"]
            servers.cancel_scope.cancel()
