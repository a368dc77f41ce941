"""Asymmetric partitions: ONE node cut from Redis (a pulled cable: tests/cluster/proxy.py's
`stall`, so what it sent meanwhile reaches Redis once the cut heals), while its clients and
its forward links stay up. Every node reaches the session's real Redis through a proxy of its
own; the traffic is numbered (tests/cluster/traffic.py) and checked when the test ends: nothing
acked is lost, each sender's messages arrive in its send order, and the cluster serves again
(new logins and a cross-node round trip) within a stated time after the cut heals.

The nodes: master (active), master-b (standby, in the tests that have one), dept-1, dept-2.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from vim_cluster.tunables import DEFAULTS

from ..support import PASSWORD, Client, connect, online
from .harness import DEPT1, DEPT2, MASTER, Cluster, ClusterNode, blocking, routes_on, run_cli
from .proxy import ProxyThread
from .test_failover import in_send_order, log_time, metric, wait_for
from .traffic import Traffic, assert_nobody_stopped, bad_day, flowing_traffic, send, traffic_pairs

B = "master-b"
HEAL_BOUND_S = 20.0  # the cluster serves again (new logins, a round trip) this long after a cut heals
# numbered pairs through the active master and across the departments, with master-b's users
MASTER_PAIRS = [("d1", DEPT1, DEPT2), ("d2", DEPT2, DEPT1), ("mb", B, DEPT1), ("m", MASTER, DEPT2), ("tm", DEPT1, MASTER)]


@contextlib.asynccontextmanager
async def stalled(proxy: ProxyThread) -> AsyncIterator[float]:
    """`proxy` stalled (a pulled cable) for the block, healed on the way out whatever happens;
    yields when the cut began."""
    await blocking(proxy.stall)
    try:
        yield time.monotonic()
    finally:
        await blocking(proxy.unstall)


@contextlib.contextmanager
def cut_cluster(folder: Path, redis_url: str, standby: bool) -> Iterator[tuple[Cluster, dict[str, ProxyThread]]]:
    """master (then master-b, a standby), dept-1 and dept-2, each reaching Redis through a
    proxy of its own (`proxies[name]`); the department nodes name the master's forward URL."""
    port = urlsplit(redis_url).port
    assert port is not None
    cluster = Cluster(folder, redis_url)
    proxies: dict[str, ProxyThread] = {}

    def write(name: str, node_type: str, master_url: str | None = None) -> ClusterNode:
        proxies.setdefault(name, ProxyThread(port).start())
        node = cluster.write_node(name, node_type, master_url)
        node.config.write_text(node.config.read_text().replace(
            redis_url, redis_url.replace(f":{port}/", f":{proxies[name].port}/")))
        return node

    try:
        master = cluster._start_node(lambda: write(MASTER, "master"))
        forward = f"ws://127.0.0.1:{master.forward_port}/forward"
        for name, node_type in ([(B, "master")] if standby else []) + [(DEPT1, "slave"), (DEPT2, "slave")]:
            cluster._start_node(lambda name=name, node_type=node_type: write(name, node_type, forward))  # type: ignore[misc]
        cluster.wait_healthy()
        yield cluster, proxies
    finally:
        try:
            cluster.stop()
        finally:
            for proxy in proxies.values():
                proxy.stop()


@pytest.fixture
def with_standby(tmp_path: Path, redis_url: str) -> Iterator[tuple[Cluster, dict[str, ProxyThread]]]:
    with cut_cluster(tmp_path / "cluster", redis_url, standby=True) as cut:
        yield cut


@pytest.fixture
def without_standby(tmp_path: Path, redis_url: str) -> Iterator[tuple[Cluster, dict[str, ProxyThread]]]:
    with cut_cluster(tmp_path / "cluster", redis_url, standby=False) as cut:
        yield cut


def standby_ready(node: ClusterNode) -> bool:
    status, body = node.healthz()
    return status == 200 and body.get("role") == "standby"


async def login_in_cut(url: str, username: str, password: str) -> tuple[dict[str, Any], float]:
    """A registered user's login on a node cut from Redis: its first answer (`login-ok` or an
    `error`) and how long it took."""
    started = time.monotonic()
    async with connect(url) as client:
        await client.send("login", username=username, password=password)
        while True:
            frame = await client.next_frame()
            if frame["code"] in ("login-ok", "error"):
                return frame, time.monotonic() - started


async def receipt_round(sender: Client, recipient: Client, cid: str) -> None:
    """sender -> recipient on another node, the recipient confirms it (`received`), and the
    sender gets the `receipt`."""
    assert recipient.user_id is not None
    ack = await send(sender, recipient.user_id, cid)
    assert ack is not None, "the message was refused"
    assert (await recipient.expect("message", 10))["id"] == ack["id"]
    await recipient.send("received", ids=[ack["id"]])
    receipt = await sender.expect("receipt", 10)
    assert receipt["id"] == ack["id"] and receipt["status"] == "delivered", receipt


def arrivals_between(traffic: Traffic, name: str, start: float, end: float) -> int:
    return sum(1 for t in traffic.collectors[name].arrived.values() if start <= t < end)


@pytest.mark.parametrize("cut_s", [5.0, 13.0])  # within the node lock's TTL (10 s); and past it
async def test_a_department_node_cut_from_redis_only_keeps_relaying_and_heals_without_a_restart(
    without_standby: tuple[Cluster, dict[str, ProxyThread]], cut_s: float,
) -> None:
    """dept-2 loses Redis; its clients and its link to the master stay. Messages to its users
    keep arriving through the link all along (the master relays from its own route table, and
    keeps the linked peer whatever Redis says of its lease), and receipts cross both ways; its
    users' sends are acked while its worker id is confirmed (lease_hold_s, 8 s), then wait for
    Redis (10 s at most, then refused: never acked and lost); a new login answers `error
    unavailable` (Redis counts login attempts).
    Past the lock's TTL the master purges dept-2's routes in Redis; once the cut heals dept-2
    takes its lock again, publishes its routes again and serves on, no restart."""
    cluster, proxies = without_standby
    tag = secrets.token_hex(3)
    with trio.fail_after(100):
        async with bad_day(cluster, tag, check_timeout=30) as (traffic, prober), \
                contextlib.AsyncExitStack() as stack:
            at_dept2 = traffic.pairs[0][2]  # d1-to-d2's recipient, on dept-2
            assert at_dept2.user_id is not None
            alice = await online(stack, cluster.dept1.url, f"alice-{tag}")
            bob = await online(stack, cluster.dept2.url, f"bob-{tag}")
            async with stalled(proxies[DEPT2]) as cut_at:
                await receipt_round(alice, bob, "to-bob-in-cut")  # bob confirms: alice's receipt crosses
                await receipt_round(bob, alice, "to-alice-in-cut")  # within dept-2's worker-id hold (8 s)
                if cut_s > 10:  # a login in the cut: Redis counts login attempts (the lockout)
                    login, login_s = await login_in_cut(cluster.dept2.url, prober.names[DEPT2], PASSWORD)
                    assert login["code"] == "error" and login["message"]["error"] == "unavailable", login
                    assert login_s < 6, f"the login was answered after {login_s:.1f} s"
                await trio.sleep(max(0.0, cut_at + cut_s - 2 - time.monotonic()))
                await receipt_round(alice, bob, "to-bob-late-in-cut")  # past the hold too: confirms need no Redis
                await trio.sleep(max(0.0, cut_at + cut_s - time.monotonic()))  # the cut's length is under test
            healed_at = time.monotonic()
            delivered_in_cut = arrivals_between(traffic, "d1-to-d2", cut_at, healed_at)
            serving_in = await prober.serving_again(healed_at, HEAL_BOUND_S)
            await blocking(wait_for, lambda: routes_on(cluster.redis_url, str(at_dept2.user_id), DEPT2),
                           HEAL_BOUND_S, "dept-2's routes published again")
            routes_back_in = time.monotonic() - healed_at
    in_send_order(traffic)
    assert_nobody_stopped(cluster)
    # about one message every 0.05 s reached dept-2's user through the link during the cut
    assert delivered_in_cut > cut_s * 5, f"only {delivered_in_cut} messages reached dept-2 in a {cut_s} s cut"
    master_log = cluster.master.log_text()
    assert "its lease lapsed in Redis" not in master_log  # the linked peer was kept
    if cut_s > 10:
        assert re.search(r"dead_node_routes_purged .*dead_node=dept-2", master_log), cluster.master.log_tail()
        assert "lease_lapsed" in cluster.dept2.log_text()
    print(f"\ndept-2 cut from Redis for {cut_s} s: {delivered_in_cut} messages reached it meanwhile; "
          f"{traffic.refused} sends refused; serving again {serving_in:.1f} s after the cut healed, "
          f"its routes back in Redis after {routes_back_in:.1f} s")


async def test_a_standby_cut_from_redis_does_not_take_over_when_it_heals(
    with_standby: tuple[Cluster, dict[str, ProxyThread]],
) -> None:
    """master-b (a standby) loses Redis for longer than the master lease and its own node
    lock, while the master is fine. What it sent into the cut reaches Redis when it heals (its
    lookups, maybe a claim): none of it takes the lease from the live master, and master-b
    stays a standby, linked to it; no failover, no new epoch."""
    cluster, proxies = with_standby
    master, b = cluster.master, cluster.nodes[B]
    epoch = int(metric(master, "vim_master_epoch"))
    pairs = [("d1", DEPT1, DEPT2), ("d2", DEPT2, DEPT1), ("mb", B, DEPT1), ("tb", DEPT2, B)]
    with trio.fail_after(100):
        async with flowing_traffic(lambda stack: traffic_pairs(stack, cluster, secrets.token_hex(3), pairs),
                                   check_timeout=30) as traffic:
            async with stalled(proxies[B]):
                await trio.sleep(13.0)  # past the master lease (4 s) and the node lock (10 s)
            await blocking(wait_for, lambda: "lease_lapsed" in b.log_text(), HEAL_BOUND_S, "master-b beats again")
            await traffic.flowing()
    in_send_order(traffic)
    assert_nobody_stopped(cluster)
    assert metric(master, "vim_master_active") == 1 and metric(b, "vim_master_active") == 0
    assert metric(b, "vim_master_takeovers_total") == 0 and "master_takeover" not in b.log_text()
    assert metric(master, "vim_master_epoch") == epoch and metric(b, "vim_master_epoch") == epoch
    assert b.healthz()[1].get("role") == "standby"


async def test_an_active_master_cut_from_redis_is_fenced_and_a_standby_takes_over(
    with_standby: tuple[Cluster, dict[str, ProxyThread]],
) -> None:
    """The active master loses Redis (a stall: its renewals reach Redis when the cut heals,
    after master-b took over), not its links. It stops relaying at its relay deadline, before
    master-b takes the lease; the department nodes follow master-b; once healed the old master
    links to master-b as a standby. Nothing acked is lost, order holds."""
    cluster, proxies = with_standby
    master, b = cluster.master, cluster.nodes[B]
    epoch = int(metric(master, "vim_master_epoch"))
    with trio.fail_after(100):
        async with flowing_traffic(lambda stack: traffic_pairs(stack, cluster, secrets.token_hex(3), MASTER_PAIRS),
                                   check_timeout=30) as traffic:
            async with stalled(proxies[MASTER]) as cut_at:
                await blocking(wait_for, lambda: metric(b, "vim_master_active") == 1, 20, "master-b relays")
                # past the old master's node lock (10 s): its renewals and heartbeats arrive late
                await trio.sleep(max(0.0, cut_at + 13.0 - time.monotonic()))
            healed_at = time.monotonic()
            await blocking(wait_for, lambda: standby_ready(master),
                           HEAL_BOUND_S, "the old master a standby")
            standby_in = time.monotonic() - healed_at
    in_send_order(traffic)
    assert log_time(master, "master_relay_deadline") < log_time(b, "master_takeover")
    assert metric(b, "vim_master_epoch") == epoch + 1 and metric(master, "vim_master_epoch") == epoch + 1
    assert metric(master, "vim_master_active") == 0 and metric(b, "vim_master_active") == 1
    assert cluster.master.running() and cluster.dept1.running() and cluster.dept2.running()
    print(f"\nactive master stalled: master-b took over; the old master a standby {standby_in:.1f} s after the cut healed")


@pytest.mark.parametrize("cut_s", [8.0, 13.0])  # past the master lease (4 s); and past the node lock (10 s)
async def test_an_active_master_cut_from_redis_without_a_standby_relays_again_when_it_heals(
    without_standby: tuple[Cluster, dict[str, ProxyThread]], cut_s: float,
) -> None:
    """No standby: the master cut from Redis stops relaying at its deadline (3 s) and nobody
    relays until the cut heals; the department nodes hold their acked packets meanwhile. When
    it heals the master takes its lease again (a new epoch) and relays what was held."""
    cluster, proxies = without_standby
    master = cluster.master
    epoch = int(metric(master, "vim_master_epoch"))
    tag = secrets.token_hex(3)
    with trio.fail_after(100):
        async with bad_day(cluster, tag, check_timeout=30) as (traffic, prober):
            async with stalled(proxies[MASTER]) as cut_at:
                await blocking(wait_for, lambda: metric(master, "vim_master_active") == 0, 10, "the master stops")
                await trio.sleep(max(0.0, cut_at + cut_s - time.monotonic()))  # the cut's length is under test
            healed_at = time.monotonic()
            serving_in = await prober.serving_again(healed_at, HEAL_BOUND_S)
    in_send_order(traffic)
    assert_nobody_stopped(cluster)
    assert metric(master, "vim_master_active") == 1 and metric(master, "vim_master_epoch") > epoch
    print(f"\nlone master stalled {cut_s} s: serving again {serving_in:.1f} s after the cut healed")



async def test_a_session_closed_while_its_node_is_cut_from_redis_leaves_no_route_behind(
    without_standby: tuple[Cluster, dict[str, ProxyThread]],
) -> None:
    """A session on dept-2 closes while dept-2 cannot reach Redis (its connections reset: the
    route's removal is refused, not delayed), for less than the node lock's TTL, so the master
    never purges dept-2's routes. Once Redis answers again the route goes at dept-2's next
    heartbeat; before, it stayed until dept-2 stopped: `whereis` and every `contacts` showed a
    user who had left as online on a live node."""
    cluster, proxies = without_standby
    tag = secrets.token_hex(3)
    with trio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            await online(stack, cluster.dept2.url, f"stays-{tag}")
            async with contextlib.AsyncExitStack() as leaving:
                gone = await online(leaving, cluster.dept2.url, f"leaves-{tag}")
                assert gone.user_id is not None
                assert routes_on(cluster.redis_url, gone.user_id, DEPT2)
                await blocking(proxies[DEPT2].sever)
            try:
                await blocking(wait_for, lambda: "route_remove_failed" in cluster.dept2.log_text(), 10,
                               "dept-2 could not remove the route")
            finally:
                await blocking(proxies[DEPT2].restore)
            await blocking(wait_for, lambda: not routes_on(cluster.redis_url, str(gone.user_id), DEPT2),
                           3 * DEFAULTS.lease_heartbeat_s + 5, "the closed session's route removed")
            located = await blocking(run_cli, "whereis", f"leaves-{tag}", "--config", str(cluster.master.config))
            assert located.returncode == 1 and "no session" in located.stdout, located
    assert "lease_lapsed" not in cluster.dept2.log_text() and "dead_node_routes_purged" not in cluster.master.log_text()


async def test_an_active_master_cut_from_redis_past_its_relay_deadline_but_not_its_lease_relays_again(
    with_standby: tuple[Cluster, dict[str, ProxyThread]],
) -> None:
    """The active master loses Redis for about 3.5 s: past its relay deadline (3 s, it stops relaying
    and closes its links) but not past its lease (4 s, renewed by what it sent into the cut
    once it heals). master-b never takes over; the master relays again, same epoch."""
    cluster, proxies = with_standby
    master, b = cluster.master, cluster.nodes[B]
    epoch = int(metric(master, "vim_master_epoch"))
    with trio.fail_after(100):
        async with flowing_traffic(lambda stack: traffic_pairs(stack, cluster, secrets.token_hex(3), MASTER_PAIRS),
                                   check_timeout=30) as traffic:
            async with stalled(proxies[MASTER]):
                await blocking(wait_for, lambda: metric(master, "vim_master_active") == 0, 10, "the master stops")
                await trio.sleep(0.4)  # the cut's length is under test: 3.4 s or more, under the lease's 4 s
            healed_at = time.monotonic()
            await blocking(wait_for, lambda: metric(master, "vim_master_active") == 1, HEAL_BOUND_S, "it relays again")
            relaying_in = time.monotonic() - healed_at
    in_send_order(traffic)
    assert_nobody_stopped(cluster)
    assert metric(b, "vim_master_takeovers_total") == 0 and metric(master, "vim_master_epoch") == epoch
    # Once: the late answer to the renewal sent into the cut is followed by a fresh renewal at
    # once (before, the next one came 0.8 s later, after the deadline that late answer set, and
    # the master stopped relaying, closing every link, a second time).
    assert master.log_text().count("master_relay_deadline") == 1, master.log_tail()
    print(f"\nmaster stalled past its relay deadline only: relaying again {relaying_in:.1f} s after the cut healed")


async def test_a_department_node_cut_from_redis_through_a_failover_follows_the_new_master_once_healed(
    with_standby: tuple[Cluster, dict[str, ProxyThread]],
) -> None:
    """Two faults: dept-2 cannot reach Redis, and meanwhile the active master dies. dept-2
    learns of master-b only from Redis (its `master-url` names the old master alone), so its
    users' messages wait, acked, in its queue until its cut heals; then it follows master-b and
    they are delivered, in order."""
    cluster, proxies = with_standby
    b = cluster.nodes[B]
    pairs = [("d1", DEPT1, DEPT2), ("d2", DEPT2, DEPT1), ("mb", B, DEPT2)]
    with trio.fail_after(100):
        async with flowing_traffic(lambda stack: traffic_pairs(stack, cluster, secrets.token_hex(3), pairs),
                                   check_timeout=30) as traffic:
            async with stalled(proxies[DEPT2]):
                cluster.master.kill()
                await blocking(wait_for, lambda: metric(b, "vim_master_active") == 1, 20, "master-b relays")
                await trio.sleep(2.0)  # the cut outlasts the takeover
            healed_at = time.monotonic()
            await blocking(wait_for, lambda: cluster.dept2.healthz()[0] == 200, HEAL_BOUND_S, "dept-2 linked")
            linked_in = time.monotonic() - healed_at
    in_send_order(traffic)
    print(f"\ndept-2 cut through a failover: linked to master-b {linked_in:.1f} s after its cut healed")
