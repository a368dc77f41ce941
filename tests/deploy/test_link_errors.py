"""A slave whose forward link fails says which master URL and why, in one line (its log and
/healthz): connection refused, timeout, the cluster secret, TLS verification (test_tls.py)."""

from __future__ import annotations

import functools
from pathlib import Path

import trio

from ..support import free_port
from .pki import Nodes, nodes, wait_link_problem

__all__ = ["nodes"]


async def test_a_refused_connection_is_named(nodes: Nodes) -> None:
    port = free_port()
    master_url = f"ws://127.0.0.1:{port}/forward"
    _, slave = await nodes.start("dept-1", None, master_url=master_url)
    body = await wait_link_problem(slave, None, "refused")
    assert body["checks"]["master_link"] == (
        f"down: cannot reach {master_url}: connection refused by 127.0.0.1:{port} "
        "(is the node running and the port right?)")


async def test_a_master_with_another_secret_is_named(nodes: Nodes, tmp_path: Path, redis_url: str,
                                                      nursery: trio.Nursery) -> None:
    other = Nodes(nursery, tmp_path / "other-cluster", redis_url)  # another folder: another secret
    master, _ = await other.start("master", None)
    master_url = f"ws://127.0.0.1:{master.forward_port}/forward"
    _, slave = await nodes.start("dept-1", None, master_url=master_url)
    body = await wait_link_problem(slave, None, "secret")
    assert body["checks"]["master_link"] == (
        f"down: {master_url} refused this node: the master does not hold the cluster secret")
    master.stop()


async def test_a_silent_port_is_a_named_timeout(nodes: Nodes, nursery: trio.Nursery) -> None:
    """Something accepts the TCP connection and never answers the WebSocket upgrade."""
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    master_url = f"ws://127.0.0.1:{port}/forward"
    _, slave = await nodes.start("dept-1", None, master_url=master_url)
    body = await wait_link_problem(slave, None, "timeout")
    assert body["checks"]["master_link"] == (
        f"down: cannot reach {master_url}: timeout: no WebSocket upgrade within 5 s "
        "(is it a vim-cluster port, and ws/wss right?)")
    assert held
