"""A slave whose forward link fails says which master URL and why, in one line (its log and
/healthz): connection refused, timeout, the cluster secret, TLS verification (test_tls.py)."""

from __future__ import annotations

import functools
from pathlib import Path

import trio
import trio.testing

from vim_cluster.node.delivery import LocalDelivery
from vim_cluster.node.forward_link import SlaveLink
from vim_cluster.node.local_sessions import LocalSessions
from vim_cluster.node.metrics import NodeMetrics
from vim_cluster.protocol.forward_connection import UNREGISTERED

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
        f"down: {master_url} refused this node: this node and the master hold different cluster secrets "
        "(compare their vim.cluster.secret-file)")
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


async def test_a_slave_refused_as_unregistered_asks_its_lease_to_beat_at_once(nodes: Nodes) -> None:
    """After Redis restarts empty the master refuses a slave that Redis no longer lists as
    alive. The slave then heartbeats at once (its lease takes the lock again), not at its next
    interval: while it is unlinked its senders' acked packets wait in its outbox, and a crash
    in that window loses their relay (a chaos run, seed 376131, lost the order of 25). Other
    refusals do not ask."""
    _, master = await nodes.start("master", None)
    master_url = f"ws://127.0.0.1:{master.websocket.forward_port}/forward"

    async def refused(secret: bytes, wait_for_ask: bool) -> tuple[SlaveLink, bool]:
        asked = trio.Event()
        local = LocalDelivery("ghost", LocalSessions(), NodeMetrics("ghost"))  # never registered in Redis
        link = SlaveLink("ghost", master_url, secret, local, clock_ms=lambda: 0, reregister=asked.set)
        with trio.fail_after(10):
            async with trio.open_nursery() as inner:
                inner.start_soon(link.run)
                if wait_for_ask:
                    await asked.wait()  # asked after the refusal is recorded in link.problem
                else:  # no event to wait for: the failure shows only in link.problem
                    while "refused" not in link.problem:
                        await trio.sleep(0.02)
                    await trio.testing.wait_all_tasks_blocked()
                inner.cancel_scope.cancel()
        return link, asked.is_set()

    link, asked = await refused(master.cluster.secret, wait_for_ask=True)
    assert link.problem == f"{master_url} refused this node: master refused: unknown node id 'ghost': {UNREGISTERED}"
    assert asked
    link, asked = await refused(b"another secret, 32 bytes long...", wait_for_ask=False)
    assert "secret" in link.problem and not asked
