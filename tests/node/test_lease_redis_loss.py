"""The lease against a real, separate redis-server that loses its data (SIGKILL, started again
empty), with heartbeats driven by the test so every interleaving is chosen, not raced.

Each test names the bad day it plays; core/lease.py has the rules and why they are safe.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest
import trio

from vim_cluster.adapters.redis_registry import RedisRegistry
from vim_cluster.config import load_config
from vim_cluster.core.lease import KeyState
from vim_cluster.errors import StoreUnavailable
from vim_cluster.ids import MAX_WORKER
from vim_cluster.model import UserId
from vim_cluster.node.app import RunningNode, serve_node
from vim_cluster.node.blocking import BlockingRunner
from vim_cluster.node.heartbeat import Lease, LeasedIds, LeaseLost
from vim_cluster.ports import NodeInfo, Route
from vim_cluster.tunables import DEFAULTS

from ..servers import RedisServer, redis_process  # noqa: F401 - the fixture
from ..support import connect, flush_redis, write_config


def describe(node_id: str, role: str = "slave") -> Callable[[], NodeInfo]:
    return lambda: NodeInfo(node_id, role, "ws://127.0.0.1:1/", None, None, os.getpid(), "t", 0, 0, 0)


def same_slot(node_id: str) -> str:
    """Another node id whose first-choice worker id is `node_id`'s."""
    slot = zlib.crc32(node_id.encode()) % (MAX_WORKER + 1)
    return next(f"twin-{i}" for i in range(1_000_000) if zlib.crc32(f"twin-{i}".encode()) % (MAX_WORKER + 1) == slot)


@pytest.fixture
async def registry(redis_process: RedisServer) -> AsyncIterator[RedisRegistry]:  # noqa: F811
    flush_redis(redis_process.url)
    registry = RedisRegistry(redis_process.url)
    yield registry
    registry.close()


async def lease(registry: RedisRegistry, node_id: str, role: str = "slave") -> Lease:
    held = Lease(registry, BlockingRunner("redis", 4), describe(node_id, role))
    await held.acquire()
    return held


async def beat_until_redis_answers(held: Lease, republish: Callable[[], object] | None = None) -> None:
    with trio.fail_after(15):
        while not await held.beat(republish):  # type: ignore[arg-type]
            await trio.sleep(0.1)


async def test_redis_restarted_empty_every_key_is_retaken_and_nothing_stops(
    registry: RedisRegistry, redis_process: RedisServer,  # noqa: F811
) -> None:
    """Bad day: Redis crashes without persistence and comes back empty under a master and a
    slave. Before the fix both stopped, 'another process took the lock'. Now the next beat
    re-takes node lock and worker id (the master lease: test_mastership), republishes routes, and minting never pauses."""
    master, slave = await lease(registry, "m", "master"), await lease(registry, "s")
    workers_before = (master.worker, slave.worker)
    ids = LeasedIds(slave, lambda: 1_800_000_000_000)
    before = await ids.next_id()
    republished: list[int] = []

    async def republish() -> int:
        await trio.to_thread.run_sync(registry.republish_routes, [(UserId(7), Route("s1", "s", "web", None))])
        republished.append(1)
        return 1

    redis_process.restart_empty()  # from this thread: the server dies with the thread that started it
    await beat_until_redis_answers(master)
    await beat_until_redis_answers(slave, republish)

    assert (master.worker, slave.worker) == workers_before
    assert registry.workers() == {master.worker: master.owner, slave.worker: slave.owner}
    assert {n.node_id for n in registry.nodes() if n.alive} == {"m", "s"}
    assert republished and registry.routes([UserId(7)])[UserId(7)] == [Route("s1", "s", "web", None)]
    with trio.fail_after(0.5):  # the holders re-took their own ids: no settling wait
        assert await ids.next_id() > before


async def test_a_new_node_takes_a_live_nodes_worker_id_before_its_heartbeat_and_both_stay_unique(
    registry: RedisRegistry, redis_process: RedisServer,  # noqa: F811
) -> None:
    """Bad day: Redis comes back empty and a node starting right then takes, before the old
    holder's next heartbeat, the very worker id the old holder mints with. The old holder
    sees another owner, gives that id up at once and takes another (it does not stop); the
    newcomer mints only once the generation has settled, when the old holder has long stopped
    using the id; the two never hold one id."""
    old = await lease(registry, "dept-1")
    redis_process.restart_empty()  # from this thread: the server dies with the thread that started it
    new = await lease(registry, same_slot("dept-1"))  # gets there before dept-1's heartbeat
    assert new.worker == (zlib.crc32(b"dept-1") % (MAX_WORKER + 1))
    assert new.gate.wait_s(trio.current_time()) == pytest.approx(DEFAULTS.lease_settle_s, abs=0.5)

    taken = old.worker
    await beat_until_redis_answers(old)
    assert old.worker is not None and old.worker != taken
    wait = old.gate.wait_s(trio.current_time())
    assert wait is not None and wait > DEFAULTS.lease_settle_s - 1.5  # a fresh take in a young generation
    assert registry.workers() == {taken: new.owner, old.worker: old.owner}

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(new.run)  # its heartbeats keep confirming the id while it settles
        with trio.fail_after(DEFAULTS.lease_settle_s + 2):
            await LeasedIds(new, lambda: 1_800_000_000_000).next_id()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - started > DEFAULTS.lease_settle_s - 1.0


async def test_another_owner_of_the_node_id_still_stops_the_node(registry: RedisRegistry) -> None:
    """The one loss that must stop a node: a second process serving the same node id."""
    first = await lease(registry, "dept-2")
    await trio.to_thread.run_sync(registry.release_node, "dept-2", first.owner, first.worker)
    await lease(registry, "dept-2")  # another process now holds the node id
    with pytest.raises(LeaseLost, match="another process holds this node id"):
        await first.beat()


async def test_a_lapse_whose_retaking_beat_went_unanswered_still_republishes_the_routes(
    registry: RedisRegistry,
) -> None:
    """Bad day: the node is cut from Redis past its lease's TTL, so the master declares it dead
    and purges its routes. A heartbeat sent into the cut reaches Redis once the network is back
    (TCP delivers what a timed-out socket had queued) and re-takes the lock, but its answer is
    lost, so the node's next beat finds the lock RENEWED. Before the fix the node never
    published its routes again: its users looked offline to every other node until they logged
    in again (seen as the master's missing `lease_retaken` in 1 of 4 multihost long cuts). Now
    a beat after lease_hold_s without a confirmed one publishes them, and so does the next (a
    master that read the node dead just before may purge them once more)."""
    short = attrs.evolve(DEFAULTS, lease_ttl_s=2, lease_hold_s=1.5, lease_settle_s=1.6, lease_heartbeat_s=0.5)
    short.check()
    held = Lease(registry, BlockingRunner("redis", 4), describe("dept-4"), short)
    await held.acquire()
    republished: list[float] = []

    async def republish() -> int:
        republished.append(trio.current_time())
        return 1

    assert await held.beat(republish) and republished == []  # a beat on time publishes nothing
    await trio.sleep(short.lease_ttl_s + 0.5)  # the cut: no beat answered; the lock expires
    assert await trio.to_thread.run_sync(registry.node_owner, "dept-4") is None
    unanswered = await trio.to_thread.run_sync(registry.heartbeat, held.describe(), held.owner, held.ttl_s,
                                               held.worker)
    assert unanswered.node is KeyState.RETAKEN  # what the node never hears
    assert await held.beat(republish) and len(republished) == 1  # finds it RENEWED, publishes anyway
    assert await held.beat(republish) and len(republished) == 2  # once more, after any late purge
    assert await held.beat(republish) and len(republished) == 2


async def test_redis_unreachable_minting_waits_then_answers_unavailable(
    registry: RedisRegistry, redis_process: RedisServer, autojump_clock: trio.abc.Clock,  # noqa: F811
) -> None:
    """Bad day: Redis is gone for longer than a worker id's hold. Nobody can confirm the id is
    still this node's, so it stops minting (the key expires meanwhile and another node may take
    it) and says so (StoreUnavailable -> `error unavailable`), instead of risking a duplicate."""
    held = await lease(registry, "dept-3")
    ids = LeasedIds(held, lambda: 1_800_000_000_000)
    await ids.next_id()
    redis_process.kill()
    await trio.sleep(10)
    with pytest.raises(StoreUnavailable, match="no confirmed worker id"):
        await ids.next_id()


async def test_a_node_on_a_brand_new_redis_settles_before_it_serves(
    redis_process: RedisServer, nursery: trio.Nursery, tmp_path: Path,  # noqa: F811
) -> None:
    """An empty Redis cannot tell a first start from a loss (a node cut off from it may still
    mint with any worker id): the first node's worker id is a fresh take in a young generation,
    so it waits until the generation settled before it serves, and then mints at once."""
    config = load_config(write_config(tmp_path, node_id="first", redis_url=redis_process.url))
    started = trio.current_time()
    with trio.fail_after(DEFAULTS.lease_settle_s + 10):
        running: RunningNode = await nursery.start(serve_node, config)
    assert trio.current_time() - started > DEFAULTS.lease_settle_s - 1.0
    with trio.fail_after(5):
        async with connect(f"ws://127.0.0.1:{running.client_port}/") as client:
            await client.register_login("first-user")
    running.stop()
