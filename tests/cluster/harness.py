"""A 3-node cluster (master, dept-1, dept-2) of `vim-cluster run` subprocesses for tests.

Every node of one cluster shares the Redis URL, the secret (one folder) and the SQLite stores
(absolute URLs). `Cluster.start()` returns once both slaves' /healthz answer 200 (their master
link is up); `Cluster.stop()` never leaves a process behind (SIGTERM, then SIGKILL).
The blocking helpers here are for sync fixtures; async tests call them via `blocking(...)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import redis
import trio

from ..support import (
    Client,
    NodeProcess,
    SteadySender,
    free_port,
    no_relayed_frame,
    online,
    relay_barrier,
    write_config,
)
from ..support import (
    Collector as Collector,  # moved to support; traffic.py and tests/chaos import it here
)
from .proxy import ProxyThread

T = TypeVar("T")
MASTER, DEPT1, DEPT2 = "master", "dept-1", "dept-2"
START_TIMEOUT = 30.0


@contextlib.asynccontextmanager
async def alice_on_dept1(cluster: Cluster) -> AsyncIterator[tuple[contextlib.AsyncExitStack, trio.Nursery, Client, str]]:
    """(stack, nursery, alice, tag): a new user alice online on dept-1, a nursery for the
    test's readers and senders, and a fresh `tag` for the test's other names."""
    tag = secrets.token_hex(3)
    async with contextlib.AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        yield stack, nursery, await online(stack, cluster.dept1.url, f"alice-{tag}"), tag


async def steady_to_dept2(stack: contextlib.AsyncExitStack, nursery: trio.Nursery, cluster: Cluster,
                          sender: Client, tag: str, arrived: int) -> tuple[Collector, SteadySender]:
    """A new user bob-<tag> online on dept-2 with a Collector running, and a SteadySender from
    `sender` to bob running; returns once `arrived` messages reached bob (fails after 15 s)."""
    bob = await online(stack, cluster.dept2.url, f"bob-{tag}")
    at_bob = Collector(bob)
    nursery.start_soon(at_bob.run)
    assert bob.user_id is not None
    steady = SteadySender(sender, bob.user_id)
    nursery.start_soon(steady.run)
    assert await at_bob.wait_for(arrived, 15), f"{len(at_bob.order)} of {arrived} messages reached bob in 15 s"
    return at_bob, steady


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking helper in a worker thread, so the test's trio loop keeps serving."""
    return await trio.to_thread.run_sync(lambda: fn(*args))


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; HTTP errors are answers too. Raises OSError if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str, timeout: float = 30.0, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`vim-cluster ARGS...` as a subprocess with the tests' environment."""
    return subprocess.run(
        [sys.executable, "-m", "vim_cluster.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=cli_env(), input=stdin,
    )


def nodes_table(stdout: str) -> dict[str, dict[str, str]]:
    """`vim-cluster nodes` output as {node: {column: cell}} (cells are 2+ spaces apart; the
    table ends at the first blank line, the master summary follows)."""
    lines = stdout.split("\n\n")[0].splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    return {cells[0]: dict(zip(header, cells, strict=True))
            for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[1:])}


def routes_on(redis_url: str, user_id: str, node_id: str) -> list[str]:
    """The sessions of `user_id` that Redis routes to `node_id` (straight from the keys)."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        fields = r.hgetall(f"vim:routes:{user_id}")
        members = r.smembers(f"vim:node-sessions:{node_id}")
    return [s for s, raw in fields.items() if json.loads(raw)["node_id"] == node_id] + \
        [m for m in members if m.startswith(f"{user_id}:")]


class ClusterNode:
    def __init__(self, name: str, config: Path, port: int, http_port: int, forward_port: int | None,
                 host: str = "127.0.0.1") -> None:
        self.name = name
        self.config = config
        self.port = port
        self.http_port = http_port
        self.forward_port = forward_port
        self.host = host  # the address it listens on (its vim.websocket.host)
        self.process = NodeProcess(config, port, env=cli_env(), host=host)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    def running(self) -> bool:
        return self.process.process is not None and self.process.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.process.start(timeout)

    def stop(self) -> int | None:
        """SIGTERM (a stopped process is continued first), SIGKILL if it lingers."""
        if self.running():
            os.kill(self.pid, signal.SIGCONT)
        return self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.process.process is not None
        return self.process.process.wait(timeout)

    def healthz(self, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
        status, body = http_get(f"http://{self.host}:{self.http_port}/healthz", timeout)
        return status, json.loads(body) if body.startswith("{") else {"raw": body}

    def metrics(self) -> str:
        status, body = http_get(f"http://{self.host}:{self.http_port}/metrics")
        assert status == 200, (status, body)
        return body

    def wait_health(self, expected: int, timeout: float = START_TIMEOUT) -> float:
        """Polls /healthz until it answers `expected`; returns the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"{self.name} exited ({self.process.process.returncode if self.process.process else None}); log:\n{self.log_tail()}")
            try:
                status, body = self.healthz(timeout=2.0)
                if status == expected:
                    return time.monotonic() - started
                last = (status, body)
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} /healthz never answered {expected} in {timeout} s (last: {last})\n"
                           f"{self.log_tail()}")

    def log_text(self) -> str:
        try:
            return self.process.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class Cluster:
    """master + dept-1 + dept-2; `proxied` slaves reach the master through a TcpProxy; `extra`
    adds config sections per node (`{"dept-2": {"cluster": {...}}}`, merged into its `vim`)."""

    def __init__(self, folder: Path, redis_url: str, proxied: tuple[str, ...] = (),
                 extra: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
        self.folder = folder
        self.redis_url = redis_url
        self.store = {
            "directory": f"sqlite://{folder / 'data' / 'directory.db'}",
            "messages": f"sqlite://{folder / 'data' / 'messages.db'}",
        }
        self.nodes: dict[str, ClusterNode] = {}
        self.proxies: dict[str, ProxyThread] = {}
        self._proxied = proxied
        self._extra = extra or {}

    @property
    def master(self) -> ClusterNode:
        return self.nodes[MASTER]

    @property
    def dept1(self) -> ClusterNode:
        return self.nodes[DEPT1]

    @property
    def dept2(self) -> ClusterNode:
        return self.nodes[DEPT2]

    @property
    def forward_url(self) -> str:
        return f"ws://127.0.0.1:{self.master.forward_port}/forward"

    def write_node(self, node_id: str, node_type: str, master_url: str | None = None,
                   folder: Path | None = None, host: str = "127.0.0.1") -> ClusterNode:
        """Writes a config for a node of this cluster (or of `folder`: another secret), listening
        on `host` only."""
        http_port = free_port()
        config = write_config(
            folder or self.folder, node_id=node_id, node_type=node_type, redis_url=self.redis_url,
            master_url=master_url, store=self.store, extra={**self._extra.get(node_id, {}), "http": {"port": http_port}},
            websocket={"host": host},
        )
        written = _read_yaml(config)["vim"]["websocket"]
        return ClusterNode(node_id, config, written["port"], http_port, written.get("forward-port"), host)

    def slave_master_url(self, node_id: str) -> str:
        if node_id in self._proxied:
            return f"ws://127.0.0.1:{self.proxies[node_id].port}/forward"
        return self.forward_url

    def start(self) -> Cluster:
        try:
            self._start_node(lambda: self.write_node(MASTER, "master"))
            for slave in self._proxied:
                assert self.master.forward_port is not None
                self.proxies[slave] = ProxyThread(self.master.forward_port).start()
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(
                    lambda name: self._start_node(lambda: self.write_node(name, "slave", self.slave_master_url(name))),
                    [DEPT1, DEPT2]))
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, write: Callable[[], ClusterNode], attempts: int = 3) -> ClusterNode:
        """Writes a config (free ports) and starts the node; on another process taking one of
        its ports between `free_port()` and the bind (tests run in parallel), tries new ports."""
        for attempt in range(attempts):
            node = write()
            self.nodes[node.name] = node  # from here on, stop() stops it whatever happens
            log_from = len(node.log_text())
            try:
                node.start()
                return node
            except RuntimeError:
                node.kill()
                if "Address already in use" not in node.log_text()[log_from:] or attempt == attempts - 1:
                    raise RuntimeError(f"{node.name} did not start:\n{node.log_tail()}") from None
        raise AssertionError("unreachable")

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Every node's /healthz answers 200 (a slave's only once its master link is up)."""
        for node in self.nodes.values():
            node.wait_health(200, timeout)

    def stop(self) -> None:
        """Stops every node and proxy; kills what does not stop. Never raises for a dead node."""
        try:
            with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
                list(pool.map(_stop_quietly, self.nodes.values()))
        finally:
            for node in self.nodes.values():
                node.kill()
            for proxy in self.proxies.values():
                proxy.stop()

    def check_running(self) -> None:
        """Raises unless every node process is still running (a broken module fixture)."""
        for node in self.nodes.values():
            if not node.running():
                raise RuntimeError(f"{node.name} is not running any more; log tail:\n{node.log_tail()}")

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, timeout=timeout)

    async def relay_barrier(self, receivers: list[Client], *sources: ClusterNode) -> None:
        """support.relay_barrier: what `sources` sent before has reached `receivers`."""
        await relay_barrier(receivers, [s.url for s in sources], self.master.url)

    async def no_relayed_frame(self, code: str, receivers: list[Client], *sources: ClusterNode) -> None:
        """support.no_relayed_frame: none of `receivers` got a `code` frame from `sources`."""
        await no_relayed_frame(code, receivers, [s.url for s in sources], self.master.url)


def _stop_quietly(node: ClusterNode) -> None:
    try:
        node.stop()
    except Exception:  # noqa: BLE001 - teardown: the finally kills it
        node.kill()


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())
