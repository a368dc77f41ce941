"""serve_node's start and stop (node/app.py): the node's tunables take effect (a config key, and
a Tunables handed to the node under a virtual clock), and a node that cannot take its lease
closes what it opened (stores and ports)."""

from __future__ import annotations

import socket
from pathlib import Path

import attrs
import pytest
import redis
import trio
from trio.testing import MockClock

from vim_cluster.adapters.redis_registry import Keys
from vim_cluster.config import load_config, sqlite_path
from vim_cluster.node.app import RunningNode, serve_node
from vim_cluster.node.heartbeat import NodeIdTaken
from vim_cluster.tunables import DEFAULTS

from ..support import connect, write_config


async def test_a_configured_master_lease_ttl_is_the_ttl_of_the_lease_in_redis(start_node, redis_url: str) -> None:
    await start_node(extra={"cluster": {"master-lease-ttl": 12}})  # the default is 4 s
    direct = redis.Redis.from_url(redis_url)
    try:
        left_ms = await trio.to_thread.run_sync(direct.pttl, Keys.MASTER_LOCK)
    finally:
        direct.close()
    # Renewed every 12/5 s with a 12 s TTL: never below 9.6 s left; the default TTL is 4 s.
    assert 12_000 * 4 // 5 - 500 <= left_ms <= 12_000, left_ms


async def test_the_nodes_tunables_set_its_auth_timeout(start_node, jump_clock: MockClock) -> None:
    with trio.fail_after(10 + 5):
        node: RunningNode = await start_node(tunables=attrs.evolve(DEFAULTS, client_auth_timeout_s=3.0))
        async with connect(f"ws://127.0.0.1:{node.client_port}/") as client:
            jump_clock.jump(2.8)
            await client.no_frame("error")  # a barrier: anonymous for 2.8 s, still open
            jump_clock.jump(0.3)  # past 3 s (the default is 10 s)
            reason = await client.expect_closed(timeout=4)
            assert (reason.code, reason.reason) == (4003, "not authenticated within 3 s")


def _wal(url: str) -> Path:
    path = sqlite_path(url)
    assert path is not None
    return Path(path + "-wal")  # SQLite (WAL mode) deletes it when the last connection closes


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_a_node_whose_lease_is_held_elsewhere_closes_its_stores_and_ports(
        start_node, redis_url: str, tmp_path: Path) -> None:
    first: RunningNode = await start_node(node_id="twin")
    assert _wal(first.ctx.config.store.messages).exists()  # an open store shows (the check can fail)
    second = load_config(write_config(tmp_path / "second", node_id="twin", redis_url=redis_url))
    with trio.fail_after(20), pytest.raises(NodeIdTaken):
        await serve_node(second)
    assert not _wal(second.store.directory).exists(), "the directory store was left open"
    assert not _wal(second.store.messages).exists(), "the message store was left open"
    assert _port_free(second.websocket.port) and second.websocket.forward_port is not None
    assert _port_free(second.websocket.forward_port)
