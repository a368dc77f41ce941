"""A bad day for Redis under steady cross-node traffic on a 3-node cluster (subprocess nodes on a
real, separate redis-server without persistence): killed and kept down, restarted empty,
paused with SIGSTOP.

What every test asserts: nothing acked is lost (each acked message reaches its recipient's
live session, counted after dropping duplicates by id), no node stops itself, and the cluster
is fully serving again (cross-node delivery and new logins on every node) within a bound.
The measured times are printed and appended to /tmp/vim-measurements.txt.
"""

from __future__ import annotations

import secrets
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from vim_cluster.adapters.redis_registry import RedisRegistry
from vim_cluster.model import UserId
from vim_cluster.tunables import DEFAULTS

from ..cluster.harness import Cluster, blocking
from ..cluster.traffic import Traffic, assert_nobody_stopped, bad_day
from ..servers import RedisServer, redis_process  # noqa: F401 - the fixture
from ..support import flush_redis

pytestmark = pytest.mark.timeout(240)
MEASUREMENTS = "/tmp/vim-measurements.txt"
RETAKE_BOUND_S = 5.0  # issue 11: re-registered, leases re-taken, routes republished within this
SERVING_BOUND_S = 10.0  # back to full service (a new login on every node + a round trip) after Redis returns
# After an outage longer than a worker id's hold, each node's id is a fresh take in a new
# generation: it mints again once that generation has settled (core/lease.py, rule F).
SERVING_AFTER_LONG_OUTAGE_BOUND_S = DEFAULTS.lease_settle_s + 2 * 2.0 + 2.0
RESTARTS = 5  # restarts-empty measured
DOWN_S = 12.0  # Redis killed and kept down: longer than a lease (10 s TTL)
PAUSE_S = 6.0  # Redis paused (SIGSTOP): longer than the nodes' 5 s socket timeout


def record(lines: list[str]) -> None:
    text = "\n".join(lines)
    print("\n" + text)
    with open(MEASUREMENTS, "a") as out:
        out.write(text + "\n")


@pytest.fixture
def loss_cluster(tmp_path: Path, redis_process: RedisServer) -> Iterator[Cluster]:  # noqa: F811
    flush_redis(redis_process.url)
    cluster = Cluster(tmp_path / "cluster", redis_process.url).start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def retaken(registry: RedisRegistry, cluster: Cluster, traffic: Traffic, since: float) -> float:
    """Waits until every node is registered and alive, holds a worker id of its own, and every
    live session of the traffic has its route again; returns the seconds from `since`."""
    users = [UserId(int(c.client.user_id)) for c in traffic.collectors.values() if c.client.user_id]
    with trio.fail_after(RETAKE_BOUND_S * 3):
        while True:
            nodes = await blocking(registry.nodes)
            workers = await blocking(registry.workers)
            routes = await blocking(registry.routes, users)
            if ({n.node_id for n in nodes if n.alive} == set(cluster.nodes) and len(workers) == len(cluster.nodes)
                    and all(routes.get(u) for u in users)):
                assert len(set(workers.values())) == len(workers), f"one owner, two worker ids? {workers}"
                return time.monotonic() - since
            await trio.sleep(0.05)


async def test_redis_restarted_empty_under_traffic_loses_nothing_and_serves_again_within_5_s(
    loss_cluster: Cluster, redis_process: RedisServer,  # noqa: F811
) -> None:
    """Bad day: Redis crashes without persistence and comes straight back empty (as after a
    FLUSHALL or a failover to an empty replica), five times, while three senders on three
    nodes keep sending across nodes. Before the fix every node stopped itself ("another
    process took its lock") and the cluster stayed down until a person restarted it. Now each
    node re-takes its lease and worker id at its next heartbeat and republishes its sessions'
    routes: measured here, with the time until the cluster is fully serving again."""
    cluster, tag = loss_cluster, secrets.token_hex(3)
    registry = RedisRegistry(redis_process.url)
    retakes: list[float] = []
    serving: list[float] = []
    try:
        with trio.fail_after(200):
            async with bad_day(cluster, tag) as (traffic, prober):
                for _ in range(RESTARTS):
                    await traffic.flowing()  # steady traffic on every pair before the crash
                    redis_process.restart_empty()  # from this thread: the server dies with the thread that started it
                    back = time.monotonic()
                    retakes.append(await retaken(registry, cluster, traffic, back))
                    serving.append(await prober.serving_again(back, SERVING_BOUND_S))
    finally:
        registry.close()
    assert_nobody_stopped(cluster)
    assert max(retakes) <= RETAKE_BOUND_S, retakes
    record([
        f"== Redis restarted empty under traffic ({time.strftime('%Y-%m-%d %H:%M:%S')}, {RESTARTS} restarts, "
        f"redis-server SIGKILL + start, no persistence)",
        f"acked {traffic.total()} cross-node messages, refused {traffic.refused}, lost 0",
        f"nodes re-registered, leases and worker ids re-taken, routes republished: "
        f"min {min(retakes):.2f} s, median {statistics.median(retakes):.2f} s, max {max(retakes):.2f} s",
        f"fully serving again (new logins on every node + cross-node round trip): "
        f"min {min(serving):.2f} s, median {statistics.median(serving):.2f} s, max {max(serving):.2f} s",
    ])


async def test_redis_killed_and_down_for_a_while_nothing_acked_is_lost_and_no_node_stops(
    loss_cluster: Cluster, redis_process: RedisServer,  # noqa: F811
) -> None:
    """Bad day: Redis is killed and stays down longer than a lease (12 s > the 10 s TTL), then
    comes back empty. Meanwhile the nodes must not stop, must not ack what they cannot keep,
    and stop minting ids once no one can confirm their worker ids (so no id is ever minted
    twice); cross-node traffic on already-open sessions keeps flowing as long as ids can be
    minted. Back, every node re-takes everything and serves again once its fresh worker id
    has settled."""
    cluster, tag = loss_cluster, secrets.token_hex(3)
    with trio.fail_after(200):
        async with bad_day(cluster, tag) as (traffic, prober):
            redis_process.kill()
            down_at = time.monotonic()
            await trio.sleep(DOWN_S)  # the outage's length is what is under test: longer than a lease
            acked_while_down = traffic.total()
            redis_process.start()  # from this thread: the server dies with the thread that started it
            back = time.monotonic()
            serving = await prober.serving_again(back, SERVING_AFTER_LONG_OUTAGE_BOUND_S)
    assert_nobody_stopped(cluster)
    record([
        f"== Redis killed and down {DOWN_S:g} s under traffic ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        f"acked {traffic.total()} cross-node messages ({acked_while_down} by the end of the {back - down_at:.1f} s "
        f"outage), refused {traffic.refused}, lost 0",
        f"fully serving again {serving:.2f} s after Redis came back empty (worker ids re-taken "
        f"afresh settle for {DEFAULTS.lease_settle_s} s: the outage outlasted their {DEFAULTS.lease_hold_s} s hold)",
    ])


async def test_redis_paused_under_traffic_nothing_acked_is_lost_and_no_node_stops(
    loss_cluster: Cluster, redis_process: RedisServer,  # noqa: F811
) -> None:
    """Bad day: Redis hangs (SIGSTOP: a stuck disk, a swapped-out VM) for 6 s, longer than the
    nodes' 5 s socket timeout, then resumes with its data. Calls time out instead of
    hanging the nodes; nothing acked is lost, no node stops, and full service is back within
    the bound once Redis answers."""
    cluster, tag = loss_cluster, secrets.token_hex(3)
    with trio.fail_after(200):
        async with bad_day(cluster, tag) as (traffic, prober):
            redis_process.signal(signal.SIGSTOP)
            try:
                await trio.sleep(PAUSE_S)  # the pause's length is what is under test: beyond the socket timeout
            finally:
                redis_process.signal(signal.SIGCONT)
            back = time.monotonic()
            serving = await prober.serving_again(back, SERVING_BOUND_S)
    assert_nobody_stopped(cluster)
    record([
        f"== Redis paused {PAUSE_S:g} s (SIGSTOP/SIGCONT) under traffic ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        f"acked {traffic.total()} cross-node messages, refused {traffic.refused}, lost 0",
        f"fully serving again {serving:.2f} s after SIGCONT",
    ])
