"""A rolling upgrade from the previous release's nodes, under traffic (docs/operations.md,
Upgrading a node): master, dept-1 and dept-2 start from the previous release, then are
replaced one at a time (dept-2, the master, dept-1) by this checkout's. During every step
senders on the two other nodes send to each other; after it, a round trip (message, receipt)
between every pair of nodes, old and new alike, and `vim-cluster nodes` of both versions.
Nothing acked may be lost: each receiver (it confirms nothing) finds every message acked to
it in its offline replay at the end, in acked order, and got them live meanwhile.

The previous release is a checkout with a virtualenv (`.venv`), named by VIM_PREVIOUS_RELEASE.
scripts/test.sh (and so CI) makes one from this repository's history (its PREVIOUS_RELEASE
commit, run with this checkout's .venv: the dependencies are the same); by hand, e.g.
`git clone -q . /tmp/prev && git -C /tmp/prev checkout -q 4b4c6e9 && (cd /tmp/prev && .
scripts/venv.sh test)`. Without it the test is skipped."""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from ..support import Client, Collector, connect, online
from .harness import DEPT1, DEPT2, MASTER, Cluster, ClusterNode, blocking, cli_env, nodes_table
from .traffic import send

pytestmark = pytest.mark.timeout(300)
PREVIOUS = Path(os.environ.get("VIM_PREVIOUS_RELEASE", "/nonexistent"))
OLD_PYTHON = PREVIOUS / ".venv" / "bin" / "python"


def on_release(node: ClusterNode, root: Path | None) -> ClusterNode:
    """`node` run by the checkout at `root` (None: this one)."""
    if root is not None:
        node.process.python, node.process.cwd = str(root / ".venv" / "bin" / "python"), root
    return node


def replaced(node: ClusterNode) -> ClusterNode:
    """The node with the same config and ports, run by this checkout."""
    return ClusterNode(node.name, node.config, node.port, node.http_port, node.forward_port)


def cli(python: Path | str, root: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "vim_cluster.cli", *args], capture_output=True, text=True,
                          timeout=60, env=cli_env(), cwd=root)


@pytest.fixture
def old_cluster(tmp_path: Path, redis_url: str) -> Iterator[Cluster]:
    if not OLD_PYTHON.exists():
        pytest.skip("VIM_PREVIOUS_RELEASE names no checkout with a .venv (the previous release)")
    code = subprocess.run([str(OLD_PYTHON), "-c", "import vim_cluster; print(vim_cluster.__file__)"],
                          capture_output=True, text=True, timeout=60, cwd=PREVIOUS, check=True)
    assert Path(code.stdout.strip()).is_relative_to(PREVIOUS.resolve()), code.stdout  # its own code, not ours
    cluster = Cluster(tmp_path / "cluster", redis_url)
    try:
        cluster._start_node(lambda: on_release(cluster.write_node(MASTER, "master"), PREVIOUS))
        for name in (DEPT1, DEPT2):
            cluster._start_node(lambda name=name: on_release(  # type: ignore[misc]
                cluster.write_node(name, "slave", cluster.forward_url), PREVIOUS))
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop()


class Pair:
    """A sender on one node to a receiver on another; the receiver confirms nothing."""

    def __init__(self, sender: Client, receiver: Client, username: str) -> None:
        self.sender, self.receiver, self.username = sender, receiver, username
        self.collector = Collector(receiver)
        self.acked: list[str] = []

    async def run(self, stop: trio.Event, tag: str) -> None:
        assert self.receiver.user_id is not None
        for i in itertools.count():
            if stop.is_set():
                return
            ack = await send(self.sender, self.receiver.user_id, f"{tag}-{i}")
            assert ack is not None, f"{tag}-{i} refused"
            self.acked.append(ack["id"])
            await trio.sleep(0.02)


async def round_trip(a: ClusterNode, b: ClusterNode) -> None:
    """A message from a's user to b's, delivered live and confirmed; a gets the receipt."""
    async with contextlib.AsyncExitStack() as stack:
        tag = secrets.token_hex(3)
        x, y = await online(stack, a.url, f"rt-{tag}-x"), await online(stack, b.url, f"rt-{tag}-y")
        ack = await send(x, str(y.user_id), f"rt-{tag}")
        assert ack is not None
        assert (await y.expect("message", 15))["id"] == ack["id"], (a.name, b.name)
        await y.send("received", ids=[ack["id"]])
        assert (await x.expect("receipt", 15))["id"] == ack["id"], (a.name, b.name)


def check_listings(cluster: Cluster) -> None:
    for python, root in ((OLD_PYTHON, PREVIOUS), (sys.executable, None)):
        shown = cli(python, root, "nodes", "--config", str(cluster.master.config))
        assert shown.returncode == 0, (python, shown.stderr)
        table = nodes_table(shown.stdout)
        assert {n: table[n]["ALIVE"] for n in (MASTER, DEPT1, DEPT2)} == dict.fromkeys((MASTER, DEPT1, DEPT2), "yes")


async def test_a_rolling_upgrade_from_the_previous_release_under_traffic_loses_nothing_acked(
    old_cluster: Cluster,
) -> None:
    cluster = old_cluster
    pairs: list[Pair] = []
    with trio.fail_after(240):
        async with contextlib.AsyncExitStack() as stack:
            for name in (DEPT2, MASTER, DEPT1):
                others = [cluster.nodes[n] for n in (MASTER, DEPT1, DEPT2) if n != name]
                stop = trio.Event()
                step: list[Pair] = []
                for a, b in (others, others[::-1]):
                    username = f"up-{secrets.token_hex(4)}"
                    sender = await online(stack, a.url, f"up-{secrets.token_hex(4)}")
                    step.append(Pair(sender, await online(stack, b.url, username), username))
                async with trio.open_nursery() as nursery:
                    for i, pair in enumerate(step):
                        nursery.start_soon(pair.collector.run)
                        nursery.start_soon(pair.run, stop, f"{name}-{i}")
                    old = cluster.nodes[name]
                    await blocking(old.stop)
                    node = cluster.nodes[name] = replaced(old)
                    await blocking(node.start)
                    await blocking(cluster.wait_healthy)
                    stop.set()
                    for pair in step:
                        assert await pair.collector.wait_for(pair.acked, 30), (name, pair.username)
                        pair.collector.stop()
                pairs += step
                for a, b in itertools.permutations(cluster.nodes.values(), 2):
                    await round_trip(a, b)
                await blocking(check_listings, cluster)
        assert all(len(pair.acked) > 10 for pair in pairs), [len(pair.acked) for pair in pairs]
        for pair in pairs:  # the offline replay: everything acked, in acked order
            async with connect(cluster.dept1.url) as again:
                await again.login(pair.username)
                replayed = await again.ready(client="pc")
                assert [m["id"] for m in replayed] == pair.acked, pair.username
    for node in cluster.nodes.values():
        assert "Traceback" not in node.log_text(), f"{node.name}:\n{node.log_tail(60)}"
