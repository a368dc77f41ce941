"""Test support: free ports, node configs in temp folders, node processes, a protocol client."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import trio
import yaml
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection, open_websocket_url

PASSWORD = "correct horse battery"
_barriers = itertools.count(1)
_marks = itertools.count(1)  # relay_barrier's marks: `read` timestamps, unique in the test process
_probes: set[str] = set()  # user ids of relay_barrier's probes: their `read` frames are marks


ROOT = Path(__file__).resolve().parent.parent

# A child process for tests of CPU accounting: it burns 0.3 s of CPU once it reads a line on
# stdin, says "burnt", and stays alive until its stdin closes.
BURN_CPU = (
    "import sys, time\n"
    "sys.stdin.readline()\n"
    "start = time.process_time()\n"
    "while time.process_time() < start + 0.3:\n"
    "    pass\n"
    "print('burnt', flush=True)\n"
    "sys.stdin.read()\n"
)
# A child process that only stays alive until its stdin closes.
IDLE = "import sys; sys.stdin.read()"


def script_module(script: str, name: str | None = None) -> ModuleType:
    """scripts/`script` (a file, not a package module) loaded as a module `name` (default: its
    stem), registered in sys.modules under that name (dataclasses and attrs need it)."""
    module_name = name or Path(script).stem
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "scripts" / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux's default range: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()
# Ports browsers refuse to open (Chromium's kRestrictedPorts; of those from 10000 on, only
# 10080): a web page served there fails with ERR_UNSAFE_PORT.
BROWSER_UNSAFE_PORTS = frozenset({10080})


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range and not handed out before
    in this process. A port from bind(0) is an ephemeral one: an outgoing connection (to
    Redis, MariaDB, another node) could take it between this check and the server's own bind
    (seen in CI as a node's `vim.http.port ... Address already in use`)."""
    low = 10_000
    high = _ephemeral_low() - 1
    for _ in range(200):
        port = secrets.randbelow(high - low + 1) + low if high > low else 0
        if port in _handed_out or port in BROWSER_UNSAFE_PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {low}-{high} after 200 tries")


def write_config(
    folder: Path,
    *,
    node_id: str = "node-a",
    node_type: str = "master",
    redis_url: str,
    master_url: str | None = None,
    websocket: dict[str, Any] | None = None,
    store: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    name: str | None = None,
) -> Path:
    """A node config in `folder` with free ports; the secret is shared by the folder's nodes."""
    folder.mkdir(parents=True, exist_ok=True)
    secret = folder / "secret.key"
    if not secret.exists():
        secret.write_text(secrets.token_hex(32))
        secret.chmod(0o600)  # as docs/security.md asks (the node warns otherwise)
    ws: dict[str, Any] = {"host": "127.0.0.1", "port": free_port()}
    if node_type == "master":
        ws["forward-port"] = free_port()
    ws.update(websocket or {})
    cluster: dict[str, Any] = {"node-type": node_type, "node-id": node_id, "secret-file": "secret.key"}
    if master_url:
        cluster["master-url"] = master_url
    vim: dict[str, Any] = {
        "cluster": cluster,
        "websocket": ws,
        "redis": {"url": redis_url},
        "store": store or {"directory": "sqlite:data/directory.db", "messages": "sqlite:data/messages.db"},
    }
    for section, values in (extra or {}).items():
        vim.setdefault(section, {}).update(values)
    path = folder / (name or f"{node_id}.yaml")
    path.write_text(yaml.safe_dump({"vim": vim}))
    return path


def wait_port(port: int, timeout: float = 20.0, process: subprocess.Popen | None = None,
              host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"node process exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout} s")


class NodeProcess:
    """`vim-cluster run CONFIG` as a subprocess; stopped (or killed) by the test."""

    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None, host: str = "127.0.0.1") -> None:
        self.config = config
        self.port = port
        self.host = host  # where it listens (its vim.websocket.host)
        self.url = f"ws://{host}:{port}/"
        self.log = config.with_suffix(".log")
        self._env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        # Another checkout's interpreter runs that checkout's code (a rolling upgrade's older
        # nodes), from its own folder: `-m` imports from the working directory first.
        self.python: str = sys.executable
        self.cwd: Path | None = None

    def start(self, timeout: float = 20.0) -> NodeProcess:
        """Starts the node; returns once it says it is ready (its ports are bound before it
        registers, so an open port alone does not mean ready)."""
        log_from = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", "vim_cluster.cli", "run", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=self._env, cwd=self.cwd,
            )
        deadline = time.monotonic() + timeout
        wait_port(self.port, timeout, self.process, self.host)
        while b" ready at " not in self.log.read_bytes()[log_from:]:
            if self.process.poll() is not None:
                raise RuntimeError(f"node process exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the node did not say it is ready within {timeout} s")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode if self.process else None


async def tcp_from(source: str, port: int) -> trio.SocketStream:
    """A TCP connection to 127.0.0.1:port whose source address is `source` (127.x.y.z: all
    loopback on Linux, one machine as many hosts)."""
    sock = trio.socket.socket()
    try:
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


class Client:
    """A protocol client: JSON (or MessagePack) frames, with a backlog for out-of-order codes."""

    def __init__(self, ws: WebSocketConnection, binary: bool = False) -> None:
        self.ws = ws
        self.binary = binary
        self.backlog: list[dict[str, Any]] = []
        self.user_id: str | None = None
        self.token: str | None = None

    async def send(self, code: str, **message: Any) -> None:
        frame = {"code": code, "message": message}
        await self.ws.send_message(msgpack.packb(frame) if self.binary else json.dumps(frame))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send_message(data)

    @staticmethod
    def parse(data: str | bytes) -> dict[str, Any]:
        """One frame from the node as a dict; the raw `pong` becomes code `raw-pong`."""
        if data == "pong":
            return {"code": "raw-pong", "message": {}}
        return msgpack.unpackb(data) if isinstance(data, bytes) else json.loads(data)

    async def receive(self) -> dict[str, Any]:
        """The next frame off the socket (not the backlog). A `relay_barrier` mark meant for
        another session of this user, or left from an earlier barrier, is no frame of the test:
        dropped."""
        while True:
            frame = self.parse(await self.ws.get_message())
            if not (frame["code"] == "read" and str(frame["message"].get("by")) in _probes):
                return frame

    async def next_frame(self) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        return await self.receive()

    async def expect_closed(self, timeout: float = 5.0) -> CloseReason:
        """Reads (into the backlog) until the node closes the connection; returns why."""
        with trio.fail_after(timeout):
            while True:
                try:
                    frame = await self.receive()
                except ConnectionClosed as exc:
                    assert exc.reason is not None
                    return exc.reason
                self.backlog.append(frame)

    async def expect(self, code: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame with `code` (its `message`); other frames stay in the backlog."""
        with trio.fail_after(timeout):
            for i, frame in enumerate(self.backlog):
                if frame["code"] == code:
                    return self.backlog.pop(i)["message"]
            while True:
                frame = await self.receive()
                if frame["code"] == code:
                    return frame["message"]
                self.backlog.append(frame)

    async def expect_error(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        error = await self.expect("error", timeout)
        assert error["error"] == kind, error
        return error

    async def barrier(self, timeout: float = 5.0) -> None:
        """A ping/pong round trip: a node answers a connection's frames in order and queues its
        frames in order, so once the pong is here, every frame the node queued for this
        connection before it read the ping is in the backlog."""
        rid = f"barrier-{next(_barriers)}"
        await self.send("ping", rid=rid)
        with trio.fail_after(timeout):
            while True:
                frame = await self.receive()
                if frame["code"] == "pong" and frame["message"].get("rid") == rid:
                    return
                self.backlog.append(frame)

    async def no_frame(self, code: str) -> None:
        """Asserts that no frame with `code` came, after a `barrier` (no fixed wait): whatever
        this connection's node did before it (an ack someone got, a reply on another
        connection) queued its frames before the pong. A frame another node would forward is
        not ordered by this barrier: use `no_relayed_frame` for that."""
        await self.barrier()
        self.assert_none(code)

    def assert_none(self, code: str) -> None:
        """No frame with `code` is in the backlog (what came before the last barrier)."""
        unexpected = [frame for frame in self.backlog if frame["code"] == code]
        assert not unexpected, f"unexpected {code}: {unexpected}"

    async def wait_mark(self, probe: str, mark: int, timeout: float = 10.0) -> None:
        """Reads (into the backlog) until the `read` mark `mark` of probe user `probe` came."""
        with trio.fail_after(timeout):
            while True:
                frame = self.parse(await self.ws.get_message())
                body = frame["message"]
                if frame["code"] == "read" and str(body.get("by")) == probe and body.get("timestamp") == mark:
                    return
                if not (frame["code"] == "read" and str(body.get("by")) in _probes):
                    self.backlog.append(frame)

    async def register_login(self, username: str, password: str = PASSWORD) -> str:
        await self.send("register", username=username, password=password)
        reply = await self.expect("register-ok")
        await self.send("login", username=username, password=password)
        login = await self.expect("login-ok")
        assert login["userId"] == reply["userId"]
        self.user_id, self.token = login["userId"], login["token"]
        return login["token"]

    async def login(self, username: str, password: str = PASSWORD) -> str:
        await self.send("login", username=username, password=password)
        login = await self.expect("login-ok")
        self.user_id, self.token = login["userId"], login["token"]
        return login["token"]

    async def ready(self, token: str | None = None, client: str = "web", **extra: Any) -> list[dict[str, Any]]:
        """Sends ready; returns the offline messages replayed before sync-done."""
        await self.send("ready", token=token or self.token, client=client, **extra)
        self.user_id = (await self.expect("ready-ok"))["userId"]
        replayed: list[dict[str, Any]] = []
        with trio.fail_after(10):
            while True:
                frame = await self.next_frame()
                if frame["code"] == "sync-done":
                    assert frame["message"]["count"] == len(replayed), (frame, len(replayed))
                    return replayed
                if frame["code"] == "message" and frame["message"].get("offline"):
                    replayed.append(frame["message"])
                else:
                    self.backlog.append(frame)

    async def chat(self, chat_id: str, content: str, cid: str, chat_type: str = "friend") -> dict[str, Any]:
        await self.send("message", cid=cid, chatId=chat_id, type=chat_type, messageType="text", content=content)
        return await self.expect("ack")


async def online(
    stack: contextlib.AsyncExitStack,
    url: str,
    username: str,
    *,
    register: bool = True,
    client: str = "web",
    binary: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    **ready: Any,
) -> Client:
    """A ready Client (registered first unless `register=False`), closed with `stack`."""
    c = await stack.enter_async_context(connect(url, binary, ssl_context=ssl_context))
    if register:
        await c.register_login(username)
    else:
        await c.login(username)
    await c.ready(client=client, **ready)
    return c


async def all_online(stack: contextlib.AsyncExitStack, url: str, *usernames: str) -> list[Client]:
    """`online` for each of `usernames` (new users) on `url`, in order."""
    return [await online(stack, url, name) for name in usernames]


async def make_group(owner: Client, members: Sequence[Client] = (), name: str = "team",
                     told: Sequence[Client] | None = None) -> str:
    """`owner` creates a group with `members` (the owner joins by itself); waits for the
    owner's `group-ok` and the one each client in `told` (default: `members`) gets. Returns the
    group id."""
    await owner.send("group-create", name=name, members=[m.user_id for m in members])
    group_id = (await owner.expect("group-ok"))["groupId"]
    for member in members if told is None else told:
        assert (await member.expect("group-ok"))["groupId"] == group_id
    return str(group_id)


async def relay_barrier(receivers: Sequence[Client], sources: Sequence[str], master: str,
                        timeout: float = 10.0) -> None:
    """Waits until whatever the nodes at `sources` (client URLs) sent over the forward
    channel before this call has reached `receivers` (queued in their backlogs): the
    cross-node `barrier`, no fixed wait.

    Why it holds: a node sends its packets to the master in order, the master handles each
    link's packets in order and pushes what it forwards to each node's link in order, and a
    node hands what arrives to its sessions in order. So a mark sent from a source node after
    the frame in question travels behind it, and so does a mark the master sends once it
    handled the source's mark. A mark is a `read` (friend, `timestamp` = a small unique
    number: a no-op for read cursors, no message is stored) from a probe user of its own on
    the node that sends it: from a probe on each source to a probe on the master, then from
    the master's probe to each receiver's user. The second hop also orders what the master
    relays back to the source node itself (a receiver on the sending node)."""
    async with contextlib.AsyncExitStack() as stack:
        master_probe = await _probe(stack, master)
        for url in dict.fromkeys(sources):
            if url != master:
                await _mark(await _probe(stack, url), [master_probe], timeout)
        await _mark(master_probe, receivers, timeout)


async def no_relayed_frame(code: str, receivers: Sequence[Client], sources: Sequence[str], master: str) -> None:
    """Asserts that none of `receivers` got a frame with `code` that a node at `sources`
    sent (or the master relayed) before this call: a `relay_barrier`, then each backlog."""
    await relay_barrier(receivers, sources, master)
    for receiver in receivers:
        receiver.assert_none(code)


async def _probe(stack: contextlib.AsyncExitStack, url: str) -> Client:
    probe = await online(stack, url, f"mark-{secrets.token_hex(6)}")
    assert probe.user_id is not None
    _probes.add(str(probe.user_id))
    return probe


async def _mark(probe: Client, receivers: Sequence[Client], timeout: float) -> None:
    """`probe` sends a mark to each receiver's user; waits until each receiver has it."""
    mark = next(_marks)
    assert all(r.user_id for r in receivers), "a relay_barrier receiver is not ready (no user id)"
    for user in dict.fromkeys(r.user_id for r in receivers):
        await probe.send("read", chatId=user, type="friend", timestamp=mark)
    await probe.barrier()  # handled: a refused mark fails here, not as a timeout below
    errors = [frame for frame in probe.backlog if frame["code"] == "error"]
    assert not errors, f"a relay_barrier mark was refused: {errors}"
    for receiver in receivers:
        await receiver.wait_mark(str(probe.user_id), mark, timeout)


class Collector:
    """Reads a client's frames in the background (`nursery.start_soon(c.run)`); keeps each
    message id's first arrival, in order. `stop()` hands the other frames back to the client."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.scope = trio.CancelScope()
        self.arrived: dict[str, float] = {}  # message id -> time.monotonic() of first arrival
        self.order: list[str] = []  # message ids, first arrivals only, in arrival order
        self.frames = 0  # message frames, duplicates included
        self.others: list[dict[str, Any]] = []
        self.closed = False
        self._changed = trio.Event()

    async def run(self) -> None:
        with self.scope:
            while True:
                try:
                    frame = await self.client.next_frame()
                except ConnectionClosed:
                    self.closed = True
                    self._wake()
                    return
                if frame["code"] != "message":
                    self.others.append(frame)
                    continue
                self.frames += 1
                message_id = frame["message"]["id"]
                if message_id not in self.arrived:
                    self.arrived[message_id] = time.monotonic()
                    self.order.append(message_id)
                self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def duplicates(self) -> int:
        return self.frames - len(self.order)

    async def wait_for(self, ids: list[str] | int, timeout: float) -> bool:
        """Waits until every id of `ids` (or, given a number, that many distinct messages)
        arrived (True), or `timeout` passed or the client closed (False)."""

        def done() -> bool:
            return len(self.order) >= ids if isinstance(ids, int) else set(ids) <= self.arrived.keys()

        with trio.move_on_after(timeout):
            while not done():
                if self.closed:
                    return False
                await self._changed.wait()
            return True
        return False

    async def wait_frames(self, count: int, timeout: float) -> bool:
        """Waits until `count` message frames (duplicates included) arrived (True), or
        `timeout` passed or the client closed (False)."""
        with trio.move_on_after(timeout):
            while self.frames < count:
                if self.closed:
                    return False
                await self._changed.wait()
            return True
        return False

    async def wait_closed(self, timeout: float) -> None:
        """Waits until the node closed the client's connection (fails after `timeout`)."""
        with trio.fail_after(timeout):
            while not self.closed:
                await self._changed.wait()

    def stop(self) -> None:
        self.scope.cancel()
        self.client.backlog[:0] = self.others
        self.others = []


class SteadySender:
    """Steady traffic: `sender` sends friend messages to `to` one after another (each after the
    ack of the one before), `every` seconds apart, until `stop()`; `acks` in ack order.
    `nursery.start_soon(s.run)`."""

    def __init__(self, sender: Client, to: str, every: float = 0.01, prefix: str = "m") -> None:
        self.sender, self.to, self.every, self.prefix = sender, to, every, prefix
        self.acks: list[dict[str, Any]] = []
        self._stopping = trio.Event()
        self._done = trio.Event()
        self._changed = trio.Event()

    async def run(self) -> None:
        try:
            i = 0
            while not self._stopping.is_set():
                self.acks.append(await self.sender.chat(self.to, f"{self.prefix} {i}", f"{self.prefix}-{i}"))
                self._changed.set()
                self._changed = trio.Event()
                i += 1
                await trio.sleep(self.every)
        finally:
            self._done.set()

    async def wait_acked(self, count: int) -> None:
        """Until `count` messages in all were acked."""
        while len(self.acks) < count:
            await self._changed.wait()

    async def stop(self) -> None:
        """Stops sending; returns once the message in flight was acked (or the sender ended)."""
        self._stopping.set()
        await self._done.wait()


def virtual_wall_clock() -> Callable[[], int]:
    """A node's wall clock (ms, `serve_node(clock_ms=...)`) that follows trio's clock, so a test
    on the `jump_clock` fixture moves it too (recall window, timestamps). Call inside trio."""
    offset = time.time() - trio.current_time()
    return lambda: int((offset + trio.current_time()) * 1000)


class connect:
    """`async with connect(url) as client:` a Client on a fresh WebSocket."""

    def __init__(self, url: str, binary: bool = False, message_queue_size: int = 1,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._cm = open_websocket_url(url, ssl_context, message_queue_size=message_queue_size)
        self._binary = binary

    async def __aenter__(self) -> Client:
        self._ws = await self._cm.__aenter__()
        return Client(self._ws, self._binary)

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._cm.__aexit__(*exc)
        except ConnectionClosed:
            pass  # the node closed first: that is what some tests test
        finally:
            # trio-websocket 0.12's client never closes its TCP stream when the server closed
            # the WebSocket first (aclose() returns early once a close reason is set), which
            # leaves a socket for the GC and a ResourceWarning. Closing twice is harmless.
            await trio.aclose_forcefully(self._ws._stream)




def flush_redis(url: str) -> None:
    """Empties a test's Redis as one no node has used: fresh worker ids mint at once (no node
    of an earlier test runs on it any more, so the wait after a Redis loss does not apply)."""
    from vim_cluster.adapters.redis_registry import RedisRegistry

    registry = RedisRegistry(url)
    try:
        registry.flush_as_new()
    finally:
        registry.close()
