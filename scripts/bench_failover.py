"""Failover time after SIGKILL of the active master (issue 11): from the kill to the first
cross-node delivery of a message sent after it, over N takeovers.

Usage: .venv/bin/python scripts/bench_failover.py [--takeovers 10] [--redis URL] [--every 0.02]

Starts master-a and master-b (both `node-type: master`: one active, one standby), dept-1 and
dept-2 (whose `master-url` lists both masters) as `vim-cluster run` processes on loopback, with
a private embedded Redis unless --redis is given. A sender on dept-1 sends to a recipient on
dept-2 every --every seconds. Each round SIGKILLs the master Redis names as active, waits for
the first delivery of a message sent after the kill, then starts the killed node again (it
comes back as a standby) before the next round. Prints each round, min/median/max, and checks
at the end that every acked message arrived (duplicates dropped by id, as clients do).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import trio
import yaml
from trio_websocket import open_websocket_url

from vim_cluster.adapters.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from vim_cluster.adapters.redis_registry import RedisRegistry
from vim_cluster.bench import create_users, expect, ready, send

NODES = ("master-a", "master-b", "dept-1", "dept-2")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    def __init__(self, folder: Path, node_id: str, redis_url: str, forward: dict[str, int]) -> None:
        self.node_id = node_id
        self.port, self.http = free_port(), free_port()
        master = node_id.startswith("master")
        ws: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "rate-limit": 100000}
        if master:
            ws["forward-port"] = forward[node_id]
        urls = [f"ws://127.0.0.1:{port}/forward" for name, port in forward.items() if name != node_id]
        cluster = {"node-type": "master" if master else "slave", "node-id": node_id, "secret-file": "secret.key",
                   "master-url": urls}
        vim = {"cluster": cluster, "websocket": ws, "http": {"port": self.http}, "redis": {"url": redis_url},
               "store": {"directory": "sqlite:data/directory.db", "messages": "sqlite:data/messages.db"}}
        self.config = folder / f"{node_id}.yaml"
        self.config.write_text(yaml.safe_dump({"vim": vim}))
        self.log = folder / f"{node_id}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "vim_cluster.cli", "run", str(self.config)],
                                            stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while b" ready at " not in self.log.read_bytes()[start:]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.node_id} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/healthz", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.node_id} not healthy:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Probe:
    """Sends dept-1 -> dept-2 steadily; remembers send, ack and first-arrival times by cid."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.acked: dict[str, str] = {}  # cid -> message id
        self.arrived: dict[str, float] = {}  # cid -> first arrival
        self.ids: set[str] = set()
        self.duplicates = 0
        self.changed = trio.Event()

    async def sender(self, url: str, account: Any, to: str, every: float) -> None:
        async with open_websocket_url(url) as ws:
            await ready(ws, account)
            for i in range(10**9):
                cid = f"p{i}"
                self.sent[cid] = time.monotonic()
                await send(ws, "message", cid=cid, chatId=to, type="friend", messageType="text", content=cid)
                try:
                    ack = await expect(ws, "ack")
                except RuntimeError:
                    continue  # refused (not acked): nothing to deliver
                self.acked[ack["cid"]] = ack["id"]
                await trio.sleep(every)

    async def recipient(self, url: str, account: Any) -> None:
        async with open_websocket_url(url) as ws, trio.open_nursery() as nursery:
            await ready(ws, account)
            nursery.start_soon(self._keep_alive, ws)
            while True:
                frame = json.loads(await ws.get_message())
                if frame["code"] != "message":
                    continue
                message = frame["message"]
                if message["id"] in self.ids:
                    self.duplicates += 1
                    continue
                self.ids.add(message["id"])
                self.arrived[message["content"]] = time.monotonic()
                self.changed.set()
                self.changed = trio.Event()

    @staticmethod
    async def _keep_alive(ws: Any) -> None:
        """The recipient sends nothing else: ping within the nodes' idle timeout (60 s)."""
        while True:
            await trio.sleep(20)
            await send(ws, "ping")

    def first_sent_after(self, moment: float) -> float | None:
        times = [self.arrived[c] for c, t in self.sent.items() if t > moment and c in self.arrived]
        return min(times) if times else None


def active_master(redis_url: str) -> str:
    registry = RedisRegistry(redis_url)
    try:
        view = registry.active_master()
    finally:
        registry.close()
    if view is None or not view.alive:
        raise RuntimeError("no active master in Redis")
    return view.node_id


async def run(args: argparse.Namespace, folder: Path, redis_url: str) -> list[float]:
    forward = {"master-a": free_port(), "master-b": free_port()}
    (folder / "secret.key").write_text(os.urandom(32).hex())
    (folder / "secret.key").chmod(0o600)
    nodes = {name: Node(folder, name, redis_url, forward) for name in NODES}
    try:
        for name in NODES:
            await trio.to_thread.run_sync(nodes[name].start)
        for node in nodes.values():
            await trio.to_thread.run_sync(node.wait_healthy)
        d1, d2 = f"ws://127.0.0.1:{nodes['dept-1'].port}/", f"ws://127.0.0.1:{nodes['dept-2'].port}/"
        tag = os.urandom(3).hex()
        (sender,) = await create_users(d1, 1, f"fs{tag}-")
        (recipient,) = await create_users(d2, 1, f"fr{tag}-")
        probe = Probe()
        times: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe.recipient, d2, recipient)
            await trio.sleep(0.5)
            nursery.start_soon(probe.sender, d1, sender, recipient.user_id, args.every)
            await trio.sleep(1.0)
            for round_ in range(1, args.takeovers + 1):
                victim = nodes[await trio.to_thread.run_sync(active_master, redis_url)]
                killed = time.monotonic()
                await trio.to_thread.run_sync(victim.kill)
                with trio.fail_after(60):
                    while (first := probe.first_sent_after(killed)) is None:
                        await probe.changed.wait()
                times.append(first - killed)
                print(f"round {round_:2d}: killed {victim.node_id}: first cross-node delivery after "
                      f"{first - killed:.2f} s", flush=True)
                await trio.to_thread.run_sync(victim.start)  # back as a standby
                await trio.to_thread.run_sync(victim.wait_healthy)
                await trio.sleep(1.0)
            with trio.fail_after(30):  # nothing acked is lost
                while missing := [c for c in probe.acked if c not in probe.arrived]:
                    await probe.changed.wait()
            nursery.cancel_scope.cancel()
        print(f"messages acked: {len(probe.acked)}, delivered (deduplicated by id): {len(probe.arrived)}, "
              f"lost: {len(missing)}, duplicates dropped: {probe.duplicates}")
        return times
    finally:
        for node in nodes.values():
            node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--takeovers", type=int, default=10, help="SIGKILLs of the active master (default 10)")
    parser.add_argument("--redis", help="a Redis URL (default: a private embedded Redis)")
    parser.add_argument("--every", type=float, default=0.02, help="seconds between the probe's messages")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vim-failover-") as tmp:
        folder = Path(tmp)
        redis_url = args.redis or ensure_embedded_redis(folder / "redis")
        try:
            times = trio.run(run, args, folder, redis_url)
        finally:
            if not args.redis:
                stop_embedded_redis(folder / "redis")
    print(f"failover after SIGKILL of the active master, {len(times)} takeovers: min {min(times):.2f} s, "
          f"median {statistics.median(times):.2f} s, max {max(times):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
