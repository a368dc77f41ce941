"""Standby masters (issue 11.2): the active master dies or is cut off from Redis under steady
cross-node traffic; a standby takes over with a newer epoch, the nodes follow, and nothing
acked is lost. Real node processes, the session's real Redis (a TCP proxy in front of it for
the node that is cut off).

Each test starts its own cluster: master-a (active), master-b (standby), dept-1, dept-2. The
department nodes name only master-a in `master-url`: they find master-b through Redis.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import trio
from trio_websocket import ConnectionClosed

from vim_cluster.node.forward_link import client_handshake
from vim_cluster.node.ws_open import open_link
from vim_cluster.protocol import forward_frames as ff
from vim_cluster.protocol.forward import PeerStream
from vim_cluster.protocol.forward_connection import ForwardConnection, PeerRole

from ..support import free_port
from .harness import DEPT1, DEPT2, Cluster, ClusterNode, blocking, nodes_table
from .proxy import ProxyThread
from .traffic import Traffic, flowing_traffic, traffic_pairs

A, B = "master-a", "master-b"


def metric(node: ClusterNode, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", node.metrics(), re.MULTILINE)
    assert found, f"{name} not in {node.name}'s /metrics"
    return float(found.group(1))


def log_time(node: ClusterNode, event: str) -> float:
    """The wall-clock time (s) of the node's first log line with `event`."""
    for line in node.log_text().splitlines():
        if f" {event} " in line:
            stamp = line.split(" ", 1)[0].rstrip("Z")
            return time.mktime(time.strptime(stamp.split(".")[0], "%Y-%m-%dT%H:%M:%S")) - time.timezone \
                + float("0." + stamp.split(".")[1])
    raise AssertionError(f"{node.name} never logged {event}:\n{node.log_tail()}")


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    """Polls a condition on real processes (their /metrics, their logs) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def start_cluster(folder: Path, redis_url: str, a_redis_url: str | None = None,
                  a_forward_url: str | None = None, slave_master_url: str | None = None) -> Cluster:
    """master-a first (it takes the lease), then master-b (standby), then the department nodes."""
    cluster = Cluster(folder, redis_url)
    try:
        def write_a() -> ClusterNode:
            node = cluster.write_node(A, "master")
            text = node.config.read_text()
            if a_redis_url:
                text = text.replace(redis_url, a_redis_url)
            if a_forward_url:
                text = text.replace("node-type: master", f"node-type: master\n    forward-url: {a_forward_url}")
            node.config.write_text(text)
            return node

        a = cluster._start_node(write_a)
        a_url = f"ws://127.0.0.1:{a.forward_port}/forward"
        cluster._start_node(lambda: cluster.write_node(B, "master", a_url))
        for name in (DEPT1, DEPT2):
            def write_slave(name: str = name) -> ClusterNode:
                return cluster.write_node(name, "slave", slave_master_url or a_url)

            cluster._start_node(write_slave)
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture
def failover_cluster(tmp_path: Path, redis_url: str) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path / "cluster", redis_url)
    try:
        yield cluster
    finally:
        cluster.stop()


def steady_traffic(cluster: Cluster) -> Callable[[contextlib.AsyncExitStack], Awaitable[Traffic]]:
    """dept-1 <-> dept-2 both ways, and master-b's own client -> dept-1 (the standby's queue)."""
    pairs = [("d1", DEPT1, DEPT2), ("d2", DEPT2, DEPT1), ("mb", B, DEPT1)]
    return lambda stack: traffic_pairs(stack, cluster, secrets.token_hex(3), pairs)


def known_ids(traffic: Traffic) -> set[str]:
    """Every message id acked or delivered so far."""
    return {i for ids in traffic.acked.values() for i in ids} | \
        {i for c in traffic.collectors.values() for i in c.arrived}


def first_new_delivery(traffic: Traffic, before: set[str]) -> float | None:
    """When the first message acked after `before` was taken reached its recipient: only the
    new master can have relayed it."""
    times = [t for c in traffic.collectors.values() for m, t in c.arrived.items() if m not in before]
    return min(times) if times else None


async def test_sigkill_of_the_active_master_a_standby_takes_over_and_nothing_acked_is_lost(
    failover_cluster: Cluster,
) -> None:
    cluster = failover_cluster
    a, b = cluster.nodes[A], cluster.nodes[B]
    assert metric(a, "vim_master_active") == 1 and metric(b, "vim_master_active") == 0
    epoch = metric(a, "vim_master_epoch")
    with trio.fail_after(90):
        async with flowing_traffic(steady_traffic(cluster)) as traffic:  # on exit: flows through master-b
            killed_at = time.monotonic()
            a.kill()  # SIGKILL: no lease release, no goodbye to the links
            before = known_ids(traffic)
            while (resumed := first_new_delivery(traffic, before)) is None:
                await trio.sleep(0.05)  # polls the collectors: a message acked after the kill, delivered
            await blocking(wait_for, lambda: metric(b, "vim_master_active") == 1, 15, "master-b relays")
            nodes_after_kill = await blocking(cluster.cli, "nodes", "--config", str(b.config))

    assert metric(b, "vim_master_epoch") == epoch + 1
    assert metric(b, "vim_master_takeovers_total") == 1
    assert traffic.total() > 30 and traffic.refused == 0
    print(f"\nfailover after SIGKILL: first cross-node delivery {resumed - killed_at:.2f} s after the kill; "
          f"{traffic.total()} acked, all delivered; duplicates seen by clients: "
          f"{sum(c.duplicates for c in traffic.collectors.values())}")

    # `vim-cluster nodes` names the new master, its epoch, and (once master-a is back) the standby
    assert nodes_after_kill.returncode == 0, nodes_after_kill.stderr
    table = nodes_table(nodes_after_kill.stdout)
    assert table[B]["ROLE"] == "master" and table[DEPT1]["ROLE"] == "slave"
    assert f"active master: {B}, epoch {int(epoch) + 1}, forward ws://127.0.0.1:{b.forward_port}/forward" \
        in nodes_after_kill.stdout
    assert "takeovers: 2 (the first start included)" in nodes_after_kill.stdout
    await blocking(a.start)  # the old master comes back: as a standby
    await blocking(a.wait_health, 200, 20)
    shown = await blocking(cluster.cli, "nodes", "--config", str(b.config))
    assert nodes_table(shown.stdout)[A]["ROLE"] == "standby"
    assert f"standbys: {A}" in shown.stdout and f"active master: {B}, epoch {int(epoch) + 1}" in shown.stdout
    assert json.loads(json.dumps(a.healthz()[1]))["role"] == "standby"


@pytest.fixture
def split_cluster(tmp_path: Path, redis_url: str) -> Iterator[tuple[Cluster, ProxyThread]]:
    """The cluster, master-a reaching Redis through a proxy the test can cut."""
    port = urlsplit(redis_url).port
    assert port is not None
    proxy = ProxyThread(port).start()
    try:
        cluster = start_cluster(tmp_path / "cluster", redis_url,
                                a_redis_url=redis_url.replace(f":{port}/", f":{proxy.port}/"))
        try:
            yield cluster, proxy
        finally:
            cluster.stop()
    finally:
        proxy.stop()


async def test_a_master_cut_off_from_redis_stops_relaying_before_its_lease_lapses_and_is_fenced(
    split_cluster: tuple[Cluster, ProxyThread],
) -> None:
    """Split brain: master-a loses Redis (a TCP proxy cut) but not its slaves. It must stop
    relaying before its lease can lapse, so master-b, which takes over only after the lapse,
    never relays at the same time; frames of master-a's epoch are refused by master-b."""
    cluster, proxy = split_cluster
    a, b = cluster.nodes[A], cluster.nodes[B]
    old_epoch = int(metric(a, "vim_master_epoch"))
    with trio.fail_after(90):
        async with flowing_traffic(steady_traffic(cluster)):  # on exit: flows through master-b
            await blocking(proxy.sever)  # master-a: no Redis; its links to the slaves stay
            await blocking(wait_for, lambda: metric(b, "vim_master_active") == 1, 20, "master-b relays")
            assert metric(a, "vim_master_active") == 0
    stopped, took_over = log_time(a, "master_relay_deadline"), log_time(b, "master_takeover")
    assert stopped < took_over, f"master-a relayed until {stopped}, master-b took over at {took_over}"
    assert metric(b, "vim_master_epoch") == old_epoch + 1

    # A frame of the old epoch (what master-a's links would carry) is refused by master-b.
    fenced_before = metric(b, "vim_forward_fenced_frames_total")
    secret = (cluster.folder / "secret.key").read_text().strip().encode()
    with trio.fail_after(10):
        async with open_link(f"ws://127.0.0.1:{b.forward_port}/forward", None, timeout=5,
                             max_message_size=1 << 20) as ws:
            conn: ForwardConnection[None] = ForwardConnection(PeerRole.OPERATOR, "operator-test", secret,
                                                              stream=PeerStream())
            opened = await client_handshake(ws, conn, [])
            assert opened.epoch == old_epoch + 1
            await ws.send_message(ff.encode_frame(ff.Beat(0), old_epoch))  # master-a's epoch
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.get_message()
    assert metric(b, "vim_forward_fenced_frames_total") == fenced_before + 1

    # Redis back: master-a finds the lease held by a newer master and stays a standby.
    await blocking(proxy.restore)
    await blocking(wait_for, lambda: a.healthz()[1].get("role") == "standby" and a.healthz()[0] == 200,
                   20, "master-a follows master-b as a standby")
    assert metric(a, "vim_master_active") == 0 and metric(a, "vim_master_epoch") == old_epoch + 1


async def test_master_url_candidates_are_the_fallback_when_the_published_url_does_not_answer(
    tmp_path: Path, redis_url: str,
) -> None:
    """master-a publishes a forward URL nobody listens on (vim.cluster.forward-url); the
    department nodes list a dead candidate first and master-a's real URL second."""
    dead = f"ws://127.0.0.1:{free_port()}/forward"  # nothing listens there
    cluster = Cluster(tmp_path / "cluster", redis_url)
    try:
        def write_a() -> ClusterNode:
            node = cluster.write_node(A, "master")
            node.config.write_text(node.config.read_text().replace(
                "node-type: master", f"node-type: master\n    forward-url: {dead}"))
            return node

        a = cluster._start_node(write_a)
        candidates = f"{dead}, ws://127.0.0.1:{a.forward_port}/forward"
        cluster._start_node(lambda: cluster.write_node(DEPT1, "slave", candidates))
        await blocking(cluster.dept1.wait_health, 200, 30)
        assert "forward_link_up" in cluster.dept1.log_text()
        assert f"master_url=ws://127.0.0.1:{a.forward_port}/forward" in cluster.dept1.log_text()
    finally:
        cluster.stop()


def in_send_order(traffic: Traffic) -> None:
    """Per sender, the first deliveries came in ack (send) order."""
    for name, ids in traffic.acked.items():
        acked = set(ids)
        arrived = [i for i in traffic.collectors[name].order if i in acked]
        assert arrived == ids[:len(arrived)], f"{name}: delivered out of its send order"


@pytest.mark.parametrize("hang_s", [6.0, 13.0])  # past the master lease (4 s); and past the node lock (10 s)
async def test_a_hung_master_resumed_after_a_takeover_steps_down_and_nothing_acked_is_lost(
    failover_cluster: Cluster, hang_s: float,
) -> None:
    """master-a is SIGSTOPped (hung, not dead) past its lease; master-b takes over and the
    traffic flows through it, to and from master-a's own clients too once it runs again. On
    SIGCONT master-a does not relay beside master-b: it stops at its relay deadline, steps down
    and links to master-b as a standby, handing its own clients' packets over."""
    cluster = failover_cluster
    a, b = cluster.nodes[A], cluster.nodes[B]
    epoch = int(metric(a, "vim_master_epoch"))
    pairs = [("d1", DEPT1, DEPT2), ("d2", DEPT2, DEPT1), ("mb", B, DEPT1), ("ma", A, DEPT2), ("ta", DEPT1, A)]
    with trio.fail_after(120):
        async with flowing_traffic(lambda stack: traffic_pairs(stack, cluster, secrets.token_hex(3), pairs),
                                   check_timeout=45) as traffic:
            a.signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            try:
                await blocking(wait_for, lambda: metric(b, "vim_master_active") == 1, 20, "master-b relays")
                wanted = {n: len(traffic.acked[n]) + 5 for n in ("d1", "d2", "mb", "ta")}
                while any(len(traffic.acked[n]) < k for n, k in wanted.items()):  # through master-b
                    await trio.sleep(0.05)  # polls the acks of the senders not on master-a
                shown = await blocking(cluster.cli, "nodes", "--config", str(b.config))
                await trio.sleep(max(0.0, stopped_at + hang_s - time.monotonic()))  # the hang's length is under test
            finally:
                a.signal(signal.SIGCONT)
            await blocking(wait_for, lambda: a.healthz()[1].get("role") == "standby", 20, "master-a a standby")
    in_send_order(traffic)
    table = nodes_table(shown.stdout)
    assert table[A]["ROLE"] == "standby" and table[B]["ROLE"] == "master", shown.stdout
    assert f"active master: {B}, epoch {epoch + 1}" in shown.stdout
    stepped_down = log_time(a, "master_stepped_down")
    assert log_time(a, "master_relay_deadline") <= stepped_down < log_time(a, "forward_link_up")
    assert not re.search(r"\]\s+relaying\s", a.log_text().split("master_relay_deadline", 1)[1])  # never again
    assert metric(b, "vim_master_epoch") == epoch + 1 and metric(a, "vim_master_active") == 0
    assert metric(a, "vim_master_epoch") == epoch + 1


async def test_sigterm_of_the_active_master_hands_over_at_once_and_nothing_acked_is_lost(
    failover_cluster: Cluster,
) -> None:
    """A graceful stop gives the lease up (operations.md: "SIGTERM hands over at once"): master-b
    takes over without waiting for the 4 s lease to lapse."""
    cluster = failover_cluster
    a, b = cluster.nodes[A], cluster.nodes[B]
    epoch = int(metric(a, "vim_master_epoch"))
    with trio.fail_after(90):
        async with flowing_traffic(steady_traffic(cluster)) as traffic:
            stopped_at = time.monotonic()
            a.signal(signal.SIGTERM)
            before = known_ids(traffic)
            while (resumed := first_new_delivery(traffic, before)) is None:
                await trio.sleep(0.05)  # polls the collectors: a message acked after the stop, delivered
            assert await blocking(a.wait_exit, 30) == 0
    in_send_order(traffic)
    assert log_time(b, "master_takeover") - log_time(a, "node_stopping") < 1.5
    assert resumed - stopped_at < 3.0, f"first new cross-node delivery {resumed - stopped_at:.2f} s after SIGTERM"
    assert metric(b, "vim_master_epoch") == epoch + 1 and metric(b, "vim_master_active") == 1


async def test_a_flushed_redis_costs_no_failover_and_nothing_acked_is_lost(failover_cluster: Cluster) -> None:
    """FLUSHALL under traffic: Redis loses its data without failing anyone's request. master-a
    takes its lease again in place (a new epoch) and keeps relaying; master-b, which never saw
    Redis fail, leaves the lease to it (before, it took over: a needless failover)."""
    cluster = failover_cluster
    a, b = cluster.nodes[A], cluster.nodes[B]
    epoch = int(metric(a, "vim_master_epoch"))
    with trio.fail_after(90):
        async with flowing_traffic(steady_traffic(cluster)) as traffic:
            with redis.Redis.from_url(cluster.redis_url) as r:
                r.flushall()
            await blocking(wait_for, lambda: metric(a, "vim_master_epoch") > epoch, 15, "master-a retakes its lease")
            await traffic.flowing()
    in_send_order(traffic)
    assert metric(a, "vim_master_active") == 1 and metric(b, "vim_master_active") == 0
    assert metric(b, "vim_master_takeovers_total") == 0
    assert "master_lease_retaken" in a.log_text()
