"""`vim.redis.url: redis+sentinel://...`: the Redis primary dies (SIGKILL) under cross-node
traffic, Debian's redis-sentinel promotes the replica, and the cluster follows it.

Asserts: nothing acked is lost (counted after dropping duplicates by id), no node stops, and
full service (a new login on every node and a cross-node round trip) is back within a bound.
Measures (printed, appended to /tmp/vim-measurements.txt) the failover as the cluster sees it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from vim_cluster.adapters.redis_registry import RedisRegistry

from ..servers import SentinelSet, redis_sentinel_set  # noqa: F401 - the fixture
from ..support import flush_redis
from .harness import Cluster, blocking
from .traffic import assert_nobody_stopped, bad_day

pytestmark = pytest.mark.timeout(240)
MEASUREMENTS = "/tmp/vim-measurements.txt"
# Sentinel's down-after is 1 s (tests/servers.py); then an election and the promotion, then
# the nodes' next calls find the new primary. Generous for a loaded machine.
FAILOVER_BOUND_S = 20.0


@pytest.fixture
def sentinel_cluster(tmp_path: Path, redis_sentinel_set: SentinelSet) -> Iterator[Cluster]:  # noqa: F811
    flush_redis(redis_sentinel_set.sentinel.url)
    cluster = Cluster(tmp_path / "cluster", redis_sentinel_set.sentinel.url).start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_redis_primary_killed_sentinel_promotes_the_replica_and_nothing_acked_is_lost(
    sentinel_cluster: Cluster, redis_sentinel_set: SentinelSet,  # noqa: F811
) -> None:
    """Bad day: the Redis primary's host dies (SIGKILL) while three senders on three nodes send
    across nodes. Sentinel promotes the replica; the nodes find it through the Sentinel, keep
    their leases (replicated) or re-take them, and the cluster keeps relaying."""
    cluster, servers, tag = sentinel_cluster, redis_sentinel_set, secrets.token_hex(3)
    registry = RedisRegistry(servers.sentinel.url)
    try:
        with trio.fail_after(200):
            async with bad_day(cluster, tag, check_timeout=30) as (traffic, prober):
                acked_before = traffic.total()
                servers.primary.kill()
                killed = time.monotonic()
                with trio.fail_after(FAILOVER_BOUND_S):
                    while await blocking(servers.sentinel.primary_port) != servers.replica.port:
                        await trio.sleep(0.05)  # polls Sentinel (a separate process) for the promotion
                promoted = time.monotonic() - killed
                serving = await prober.serving_again(killed, FAILOVER_BOUND_S)
                alive = {n.node_id for n in await blocking(registry.nodes) if n.alive}
                assert alive == set(cluster.nodes), alive
    finally:
        registry.close()
    assert_nobody_stopped(cluster)
    assert traffic.total() > acked_before
    text = "\n".join([
        f"== Redis primary SIGKILLed, Sentinel failover to the replica ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        f"acked {traffic.total()} cross-node messages ({acked_before} before the kill), refused {traffic.refused}, "
        f"lost 0",
        f"Sentinel reported the replica as primary {promoted:.2f} s after the kill; the cluster was fully "
        f"serving (new logins on every node + cross-node round trip) {serving:.2f} s after the kill",
    ])
    print("\n" + text)
    with open(MEASUREMENTS, "a") as out:
        out.write(text + "\n")
