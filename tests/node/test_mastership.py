"""The master lease against a real Redis: who may claim it, the fencing epoch, the relay
deadline of a master cut off from Redis, and the epoch after Redis lost its data."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import attrs
import pytest
import redis
import trio

from vim_cluster.adapters.redis_registry import Keys, RedisRegistry
from vim_cluster.core.mastership import Fence, Renewal
from vim_cluster.node.blocking import BlockingRunner
from vim_cluster.node.master_finder import MasterFinder
from vim_cluster.node.mastership import MasterMetrics, Mastership
from vim_cluster.node.metrics import NodeMetrics
from vim_cluster.ports import NodeInfo
from vim_cluster.tunables import Tunables

from ..cluster.proxy import TcpProxy
from ..servers import RedisServer, redis_process  # noqa: F401 - the fixture
from ..support import flush_redis

T = Tunables()  # the defaults, handed to each Mastership as a node does
TTL_MS = int(T.master_ttl_s * 1000)


@pytest.fixture
def registry(redis_url: str) -> Iterator[RedisRegistry]:
    held = RedisRegistry(redis_url)
    yield held
    held.close()


def mastership(registry: RedisRegistry, node_id: str, fence: Fence | None = None) -> Mastership:
    fence = fence or Fence()
    return Mastership(registry, BlockingRunner("redis", 4), node_id, f"host/{os.getpid()}/{node_id}",
                      lambda: f"ws://127.0.0.1:1/{node_id}", fence, MasterMetrics(NodeMetrics(node_id).registry, fence), T)


@contextlib.asynccontextmanager
async def active_and_standby(url: str) -> AsyncIterator[tuple[Mastership, Mastership, RedisRegistry]]:
    """On an emptied Redis: `a` running and holding the lease, `b` running as its standby, and
    b's registry; both stopped on the way out."""
    flush_redis(url)
    registries = [RedisRegistry(url) for _ in range(2)]
    try:
        active, standby = mastership(registries[0], "a"), mastership(registries[1], "b")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(active.run)
            with trio.fail_after(5):
                while not active.holding:
                    await active.changed()
            nursery.start_soon(standby.run)
            yield active, standby, registries[1]
            nursery.cancel_scope.cancel()
    finally:
        for registry in registries:
            registry.close()


def test_only_one_claim_holds_and_every_takeover_raises_the_epoch(registry: RedisRegistry) -> None:
    assert registry.claim_master("a", "oa", "ws://a/forward", TTL_MS, 0) == 1
    assert registry.claim_master("b", "ob", "ws://b/forward", TTL_MS, 0) is None  # a holds it
    assert registry.renew_master("b", "ob", 1, TTL_MS) is Renewal.OTHER
    assert registry.renew_master("a", "oa", 1, TTL_MS) is Renewal.RENEWED
    registry.release_master("b", "ob")  # not b's: nothing happens
    assert registry.active_master().node_id == "a"  # type: ignore[union-attr]
    registry.release_master("a", "oa")
    assert registry.renew_master("a", "oa", 1, TTL_MS) is Renewal.MISSING
    assert registry.claim_master("b", "ob", "ws://b/forward", TTL_MS, 0) == 2
    view = registry.active_master()
    assert view is not None and (view.node_id, view.epoch, view.forward_url, view.takeovers, view.alive) == \
        ("b", 2, "ws://b/forward", 2, True)
    assert registry.claim_master("c", "oc", "ws://c/forward", TTL_MS, 0, replacing="ob") is None  # not c's own


async def test_a_claim_whose_answer_was_lost_is_recognised_by_the_next_one(registry: RedisRegistry) -> None:
    """Bad day: a standby's claim was sent into a network cut, its socket timed out, and TCP
    delivered it once the network healed: it took the lapsed lease, and its answer was lost.
    Before the fix the standby's next claim found the lease held ("by another") and nobody
    relayed until it lapsed again (4 s), the old master having found it 'other'. Now the next
    claim takes it again with a new epoch."""
    standby = mastership(registry, "b")
    lost = await trio.to_thread.run_sync(registry.claim_master, "b", standby.owner, standby.forward_url(), TTL_MS, 0)
    assert lost == 1  # what the standby never hears
    await standby.try_claim()
    assert standby.holding and standby.epoch == 2
    assert await trio.to_thread.run_sync(registry.claim_master, "c", "oc", "ws://c/", TTL_MS, 0) is None


async def test_a_standby_claims_only_after_the_lease_lapsed(registry: RedisRegistry) -> None:
    active, standby = mastership(registry, "a"), mastership(registry, "b")
    await active.try_claim()
    await standby.try_claim()
    assert active.holding and active.relaying and not standby.holding
    started = trio.current_time()
    with trio.fail_after(T.master_ttl_s + 3):
        while not standby.holding:  # a never renews: its lease lapses
            await standby.try_claim()
            await trio.sleep(0.1)
    assert trio.current_time() - started > T.master_ttl_s - 1.0
    assert standby.epoch == active.epoch + 1 and standby.fence.known == standby.epoch


async def test_a_master_cut_off_from_redis_stops_relaying_before_its_lease_can_lapse(redis_url: str) -> None:
    port = urlsplit(redis_url).port
    assert port is not None
    proxy = TcpProxy(port)
    direct = redis.Redis.from_url(redis_url)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        cut = RedisRegistry(redis_url.replace(f":{port}/", f":{proxy.port}/"))
        master = mastership(cut, "a")
        nursery.start_soon(master.run)
        with trio.fail_after(5):
            while not master.relaying:
                await master.changed()
        proxy.sever()
        severed = trio.current_time()
        with trio.fail_after(T.master_relay_s + 2):
            while master.relaying:
                await master.changed()
        stopped = trio.current_time()
        # The lease is still held in Redis when the master stops: the margin before any standby could claim it.
        left_ms = await trio.to_thread.run_sync(direct.pttl, Keys.MASTER_LOCK)
        assert left_ms > 500, f"stopped relaying only {left_ms} ms before the lease lapses"
        assert stopped - severed <= T.master_relay_s + 0.5
        assert master.holding  # it did not hear of a newer master: it waits, relaying nothing
        nursery.cancel_scope.cancel()
    cut.close()
    direct.close()


async def test_after_redis_lost_its_data_the_epoch_still_rises(redis_process: RedisServer) -> None:  # noqa: F811
    flush_redis(redis_process.url)
    registry = RedisRegistry(redis_process.url)
    try:
        fence = Fence()
        first = mastership(registry, "a", fence)
        await first.try_claim()
        await first.release()
        second = mastership(registry, "b", fence)
        await second.try_claim()
        assert second.epoch == 2
        redis_process.restart_empty()
        third = mastership(registry, "c", fence)  # knows epoch 2 (its fence): Redis' counter starts at 0
        with trio.fail_after(10):
            while not third.holding:
                await third.try_claim()
                await trio.sleep(0.1)
        assert third.epoch == 3
    finally:
        registry.close()


async def test_the_finder_falls_back_to_the_candidates_when_redis_names_no_live_master(
    registry: RedisRegistry,
) -> None:
    finder = MasterFinder(registry, BlockingRunner("redis", 2), ("ws://x:1/forward", "ws://y:2/forward"), Fence())
    assert [await finder.locate() for _ in range(3)] == ["ws://x:1/forward", "ws://y:2/forward", "ws://x:1/forward"]
    registry.claim_master("m", "om", "ws://published:3/forward", TTL_MS, 0)
    # a live master: candidates not tried yet come first (one may be a proxy to it), then its URL
    assert await finder.locate() == "ws://x:1/forward"
    finder.linked("ws://y:2/forward", "m", 1)  # y reached m
    assert await finder.locate() == "ws://y:2/forward"
    finder.reaches.clear()
    finder.tried.update({"ws://x:1/forward", "ws://y:2/forward"})
    assert await finder.locate() == "ws://published:3/forward"




async def test_an_empty_redis_restart_leaves_the_lease_to_the_active_master(
        redis_process: RedisServer) -> None:  # noqa: F811
    """Redis restarted empty: the lease is missing for everyone. The active master takes it
    again in place (a new epoch); a standby that saw Redis away leaves it to it for
    T.master_retake_grace_s, so a Redis restart costs no failover."""
    async with active_and_standby(redis_process.url) as (active, standby, seen):
        epoch = active.epoch
        await trio.to_thread.run_sync(redis_process.kill)
        with trio.fail_after(5):
            while standby.redis_lost_at is None:  # the standby saw Redis away
                await trio.sleep(0.05)
        await trio.to_thread.run_sync(redis_process.start)
        with trio.fail_after(10):
            while active.epoch == epoch:
                await active.changed()
        assert active.holding and not standby.holding
        await trio.sleep(T.master_retake_grace_s + 4 * T.master_claim_poll_s)  # the standby's grace is over
        assert active.holding and not standby.holding
        assert (await trio.to_thread.run_sync(seen.active_master)).node_id == "a"  # type: ignore[union-attr]


async def test_a_flushed_redis_leaves_the_lease_to_the_active_master(redis_url: str) -> None:
    """Redis lost its data without going away (FLUSHALL, a fast restart or a failover to an empty
    replica between two polls): the standby never saw Redis fail, yet it must leave the missing
    lease to the active master, which takes it again in place, as after a restart it saw."""
    async with active_and_standby(redis_url) as (active, standby, seen):
        with trio.fail_after(5):
            while standby.fence.known != active.epoch:  # the standby knows the master
                await trio.sleep(0.05)
        epoch = active.epoch
        with redis.Redis.from_url(redis_url) as r:
            r.flushall()
        with trio.fail_after(10):
            while active.epoch == epoch and active.holding:
                await active.changed()
        await trio.sleep(T.master_retake_grace_s + 4 * T.master_claim_poll_s)
        assert active.holding and not standby.holding, "a Redis flush cost a failover"
        assert (await trio.to_thread.run_sync(seen.active_master)).node_id == "a"  # type: ignore[union-attr]


async def test_a_standby_takes_a_lost_lease_after_the_grace_when_no_master_takes_it_again(redis_url: str) -> None:
    """Redis lost its data and the master is gone too: the standby's grace only delays the takeover."""
    flush_redis(redis_url)
    fence = Fence()
    fence.learn(5)  # it knew a master of epoch 5, which Redis no longer names
    registry = RedisRegistry(redis_url)
    try:
        standby = mastership(registry, "b", fence)
        await standby.try_claim()
        assert not standby.holding  # the grace: the master may take it again in place
        with trio.fail_after(T.master_retake_grace_s + 2):
            while not standby.holding:
                await trio.sleep(T.master_claim_poll_s)
                await standby.try_claim()
        assert standby.epoch > 5
    finally:
        registry.close()


def test_draining_is_kept_beside_the_registration_and_unknown_fields_are_skipped(registry: RedisRegistry) -> None:
    """Nodes and tools older than `draining` refuse a registration field they do not know, and
    would fail to list the nodes during a rolling upgrade: it is a key of its own, with the
    lock's TTL. This node skips registration fields a newer node may add."""
    info = NodeInfo("a", "slave", "ws://a:1/", None, None, 1, "t", 0, 0, 0)
    assert registry.acquire_node(info, "owner-a", 30)
    registry.heartbeat(attrs.evolve(info, draining=True), "owner-a", 30, None)
    raw = registry._r.hget(Keys.NODES, "a")
    assert raw is not None and set(json.loads(raw)) <= {f.name for f in attrs.fields(NodeInfo)} - {"draining"}
    assert 0 < registry._r.ttl(Keys.node_draining("a")) <= 30
    assert [n.draining for n in registry.nodes()] == [True]
    registry._r.hset(Keys.NODES, "a", json.dumps(dict(json.loads(raw), zone="b")))  # a field from a newer node
    assert [(n.node_id, n.draining, n.alive) for n in registry.nodes()] == [("a", True, True)]
    registry.release_node("a", "owner-a")
    assert [(n.node_id, n.draining, n.alive) for n in registry.nodes()] == [("a", False, False)]
    assert registry.acquire_node(info, "owner-a2", 30)  # started again: not draining
    registry.heartbeat(info, "owner-a2", 30, None)
    assert [(n.draining, n.alive) for n in registry.nodes()] == [(False, True)]


def test_a_drained_nodes_mark_does_not_pass_to_an_older_node_started_under_its_id(registry: RedisRegistry) -> None:
    """A drained node killed (its draining key stays for the lock's TTL), then a node of the
    release before `draining` started under its id (a rollback during a rolling upgrade): that
    node neither deletes the key nor drains, and `nodes` must not call it draining."""
    info = NodeInfo("a", "slave", "ws://a:1/", None, None, 1, "t", 0, 0, 0)
    assert registry.acquire_node(info, "owner-a", 30)
    registry.heartbeat(attrs.evolve(info, draining=True), "owner-a", 30, None)
    # kill -9, the lock lapses; the older node takes it and registers as that release wrote it
    registry._r.delete(Keys.node_lock("a"))
    registry._r.set(Keys.node_lock("a"), "owner-older", ex=30)
    registry._r.hset(Keys.NODES, "a", json.dumps({**attrs.asdict(info), "alive": True}))
    assert registry._r.exists(Keys.node_draining("a"))
    assert [(n.node_id, n.draining, n.alive) for n in registry.nodes()] == [("a", False, True)]
