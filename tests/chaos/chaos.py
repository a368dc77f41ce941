"""The chaos suite: steady traffic while a seeded random schedule breaks the cluster, then the
accounting. Shared by the CI test (tests/chaos/test_chaos.py) and the long run
(`scripts/chaos.sh --duration S --seed N`, which runs `python -m tests.chaos.chaos`).

The cluster (`vim-cluster run` subprocesses, tests/cluster/harness.py) on a real Debian
`redis-server` the run starts itself (no persistence: restarted, it is empty):
- two masters (the default): master-a and master-b (one active, holding the master lease, the
  other standby), dept-1, dept-2. Each master's forward port is behind a TCP proxy the run
  controls, published as the master's `forward-url`; the other nodes name both proxies in
  `master-url` and find the active master through Redis. A cut link cuts every link of the
  active master (which keeps its Redis lease).
- one master (`masters=1`): master, dept-1, dept-2; each slave reaches the master through a
  proxy of its own; a cut link is one slave's.

Traffic (`Chatter`): users on every node, one WebSocket each, behaving as a real client does:
a session that drops is opened again on the same node (login, ready, offline replay); every
message received is confirmed (`received` for friend messages, `read` for group messages; a
replay's in batches after `sync-done`, live ones one by one);
a message whose ack did not come (the connection dropped, the node died) is sent again with
the SAME cid (the protocol's idempotent retry); a refused one (`error`) is retried too. Senders
are numbered; each sends its messages 0, 1, 2, ... in order to one conversation:
- cross-node friend pairs (dept-1 -> dept-2, dept-2 -> dept-1, master -> dept-2, dept-1 -> master),
- one local pair (dept-2 -> dept-2),
- offline traffic: dept-1 -> a dept-2 user who goes offline and comes back on a seeded rhythm,
- two groups (one sender each) with members on every node.

Faults (`schedule`, seeded): SIGKILL of the active master, of a standby master (when the
cluster has two), of a department node, SIGTERM of a department node (a graceful stop: it must
exit 0; since session 27, so a seed of an earlier run gives another schedule), Redis killed and
started again empty, a slave's link to the master cut at the proxy, Redis's network cut (since
session 31: every node reaches Redis through a proxy that stalls, a pulled cable that carries
nothing and closes nothing, for 4.5-13 s, past the master lease's 4 s TTL and at times past the
node lock's 10 s; what the nodes sent into it reaches Redis when it heals, requests they gave up
on included). One fault at a time: inject, wait `down` seconds,
repair (restart the process / restore the link), wait until every node is healthy, let
traffic run `quiet` seconds, next fault. The first faults are a shuffle of every kind, so a
short run still sees each kind once.

The accounting (`Report`), after the senders stopped, every fault was repaired, and every
user reconnected once more and synced (offline replay):
- acked: messages the senders got an `ack` for; expected deliveries: acked x recipients.
- delivered: (message id, recipient) pairs that arrived, duplicates dropped by id.
- lost: expected deliveries that never arrived (must be 0).
- duplicates: message frames a client received for an id it already had (before dedupe).
- out-of-order: per (sender, recipient), the first deliveries must come in send order (the
  sender's numbering, which is its ack order: it sends the next only after the ack); counted
  is every first delivery of a message numbered lower than one of the same sender that
  reached the same recipient before it (must be 0).
- cid reused: one sender's cid that reached a recipient under two ids (the idempotent retry
  failed; must be 0).
- per fault: the longest gap in cross-node delivery from the fault until the next fault (all
  cross-node pairs together, and the worst single pair; the offline user's pair is left out).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio
import yaml
from trio_websocket import ConnectionClosed, HandshakeError, wrap_client_stream

from ..cluster.harness import DEPT1, DEPT2, MASTER, Cluster, ClusterNode, blocking
from ..cluster.proxy import ProxyThread
from ..servers import RedisServer
from ..support import PASSWORD, Client, connect, flush_redis, free_port, online

MASTER_A, MASTER_B = "master-a", "master-b"  # the two-master cluster's masters
ACTIVE, STANDBY = "active", "standby"  # fault targets resolved when the fault comes
KILL_MASTER = "kill-master"
KILL_STANDBY = "kill-standby"
KILL_DEPT = "kill-dept"
STOP_DEPT = "stop-dept"  # SIGTERM: a graceful stop (it tells the master it leaves), then started again
RESTART_REDIS = "restart-redis"
CUT_LINK = "cut-link"
CUT_REDIS = "cut-redis"
DOWN_S = {CUT_REDIS: (4.5, 13.0)}  # a kind's own range of `down` seconds (else the run's)

RECONNECT_S = 0.25  # a client's pause before it opens its session again
SESSION_TIMEOUT_S = 15.0  # login + ready + replay, or the client tries again
ACK_TIMEOUT_S = 10.0  # no ack by then: the same cid is sent again
REFUSED_PAUSE_S = 0.3
RESEND_PAUSE_S = 0.1
HEAL_TIMEOUT_S = 60.0  # after a repair, every node healthy again within this
FINAL_SYNC_S = 30.0  # after the run: every expected delivery arrived within this
WARMUP_S = 3.0


class ChaosError(Exception):
    """The run could not do what it had to (a node that would not come back, a client stuck)."""


# -- the schedule ------------------------------------------------------------------------------


@attrs.frozen
class Fault:
    kind: str
    target: str  # a node name, "redis", or the slave whose link is cut
    down_s: float  # how long it stays broken
    quiet_s: float  # steady traffic after the cluster is healthy again


def schedule(seed: int, kinds: dict[str, list[str]], down: tuple[float, float] = (1.0, 3.0),
             quiet: tuple[float, float] = (2.0, 5.0)) -> Iterator[Fault]:
    """An endless seeded schedule: first every kind once (shuffled), then kinds at random.
    `kinds` maps each fault kind to the targets it may pick from."""
    rng = random.Random(seed)

    def make(kind: str) -> Fault:
        return Fault(kind, rng.choice(kinds[kind]), round(rng.uniform(*DOWN_S.get(kind, down)), 2),
                     round(rng.uniform(*quiet), 2))

    first = sorted(kinds)
    rng.shuffle(first)
    for kind in first:
        yield make(kind)
    while True:
        yield make(rng.choice(sorted(kinds)))


# -- the clients -------------------------------------------------------------------------------


RETRYABLE = (OSError, ConnectionClosed, HandshakeError, trio.BrokenResourceError, trio.ClosedResourceError,
             trio.TooSlowError)


class SessionRefused(Exception):
    """The node answered login or ready with an `error` (e.g. `unavailable` while Redis is down)."""


@attrs.define
class Arrival:
    at: float  # time.monotonic() of the first arrival
    from_id: str
    cid: str
    offline: bool


@attrs.define
class Target:
    chat_id: str
    kind: str  # "friend" | "group"
    recipients: list[Chatter]


class Chatter:
    """One user with one client (type `web`) on its home node; see the module docstring."""

    def __init__(self, run: ChaosRun, name: str, home: str) -> None:
        self.run = run
        self.name = name
        self.home = home
        self.user_id = ""
        # receiving
        self.first: dict[str, Arrival] = {}
        self.frames: collections.Counter[str] = collections.Counter()
        self.replayed_again = 0  # duplicates that came by offline replay
        self.sessions = 0  # sessions that reached sync-done
        self.session_failures: collections.Counter[str] = collections.Counter()
        # sending
        self.target: Target | None = None
        self.acked: list[str] = []  # message ids, in send order (index = the sender's number)
        self.acked_at: list[float] = []
        self.refused = 0
        self.resent = 0  # the same cid sent again after no ack
        self.finished = trio.Event()
        # the session
        self.want_online = True
        self.client: Client | None = None
        self._up = trio.Event()  # set at sync-done; replaced when the session ends
        self._changed = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._pending: str | None = None
        self._result: dict[str, Any] | str | None = None
        self._resolved = trio.Event()

    @property
    def url(self) -> str:
        return self.run.cluster.nodes[self.home].url

    def __repr__(self) -> str:
        return f"Chatter({self.name}@{self.home})"

    def state(self) -> str:
        """For a stuck client: what it waits for."""
        return (f"{self.name}@{self.home} user {self.user_id}: acked {len(self.acked)}, pending {self._pending}, "
                f"session {'up' if self.client else 'down'} ({self.sessions} so far), "
                f"failures {dict(self.session_failures)}")

    async def register(self) -> None:
        async with connect(self.url) as client:
            await client.register_login(self.run.username(self.name))
            assert client.user_id is not None
            self.user_id = client.user_id

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def reconnect(self) -> None:
        """Ends the current session; the client opens a new one (and gets the offline replay)."""
        if self._scope is not None:
            self._scope.cancel()

    def go_offline(self) -> None:
        self.want_online = False
        self.reconnect()
        self._wake()

    def go_online(self) -> None:
        self.want_online = True
        self._wake()

    async def live(self) -> None:
        """Keeps a session open (while `want_online`) until cancelled."""
        while True:
            while not self.want_online:
                await self._changed.wait()
            with trio.CancelScope() as scope:
                self._scope = scope
                try:
                    await self._connected()
                except* RETRYABLE as group:
                    self.session_failures[type(group.exceptions[0]).__name__] += 1
                except* SessionRefused as group:
                    self.session_failures[str(group.exceptions[0])] += 1
                finally:
                    self._scope = None
                    self.client = None
                    if self._up.is_set():  # (an unset one may have waiters: it stays)
                        self._up = trio.Event()
                    self._resolve(None)
            await trio.sleep(RECONNECT_S)

    async def _connected(self) -> None:
        """One session on a WebSocket whose TCP stream this client owns and always closes:
        trio-websocket's open_websocket_url leaves the socket open when the handshake fails
        (a node killed or starting while the client connects)."""
        parts = urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None
        stream = None
        try:
            with trio.fail_after(SESSION_TIMEOUT_S):
                stream = await trio.open_tcp_stream(parts.hostname, parts.port)
            async with trio.open_nursery() as nursery:  # the connection's reader task
                with trio.fail_after(SESSION_TIMEOUT_S):
                    ws = await wrap_client_stream(nursery, stream, f"{parts.hostname}:{parts.port}",
                                                  parts.path or "/", message_queue_size=1)
                await self._session(Client(ws))
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)

    async def _session(self, client: Client) -> None:
        with trio.fail_after(SESSION_TIMEOUT_S):
            await client.send("login", username=self.run.username(self.name), password=PASSWORD)
            token = (await self._answer(client, "login-ok"))["token"]
            await client.send("ready", token=token, client="web")
            await self._answer(client, "ready-ok")
            # The replay's messages are confirmed once it is done, in batches: fewer frames (and
            # none past the rate limit). Until 2026-12-04 the node read nothing from a client
            # while it replayed to it, and one frame sent back per replayed message stalled a
            # client that sends before it reads (this one) once the sockets' buffers filled
            # (session 31); the node now reads during the replay (protocol.md §2.5).
            replayed: list[dict[str, Any]] = []
            while (frame := await client.next_frame())["code"] != "sync-done":
                if frame["code"] == "message":
                    self._record(frame["message"])
                    replayed.append(frame["message"])
                else:
                    await self._handle(client, frame)
            await self._confirm(client, replayed)
        self.sessions += 1
        self.client = client
        self._up.set()
        self.run.changed()
        while True:
            await self._handle(client, await client.next_frame())

    async def _answer(self, client: Client, code: str) -> dict[str, Any]:
        while True:
            frame = await client.next_frame()
            if frame["code"] == code:
                return dict(frame["message"])
            if frame["code"] == "error":
                raise SessionRefused(f"{code}: {frame['message'].get('error')}")

    async def _handle(self, client: Client, frame: dict[str, Any]) -> None:
        code, message = frame["code"], frame["message"]
        if code == "message":
            self._record(message)
            if message["type"] == "group":
                await client.send("read", chatId=message["chatId"], type="group", timestamp=message["timestamp"])
            else:
                await client.send("received", ids=[message["id"]])
        elif code == "ack" and message.get("cid") == self._pending:
            self._resolve(message)
        elif code == "error" and self._pending is not None and message.get("cid") == self._pending:
            self._resolve(str(message.get("error")))

    async def _confirm(self, client: Client, messages: list[dict[str, Any]]) -> None:
        """`received` for the friend messages (1,000 ids a frame), `read` up to the newest of
        each group's."""
        friends = [m["id"] for m in messages if m["type"] != "group"]
        for start in range(0, len(friends), 1000):
            await client.send("received", ids=friends[start:start + 1000])
        newest: dict[str, int] = {}
        for m in messages:
            if m["type"] == "group":
                newest[m["chatId"]] = max(newest.get(m["chatId"], 0), m["timestamp"])
        for chat_id, timestamp in newest.items():
            await client.send("read", chatId=chat_id, type="group", timestamp=timestamp)

    def _record(self, message: dict[str, Any]) -> None:
        message_id = message["id"]
        self.frames[message_id] += 1
        if message_id in self.first and message.get("offline"):
            self.replayed_again += 1
        if message_id not in self.first:
            self.first[message_id] = Arrival(time.monotonic(), message["fromId"], message["cid"],
                                             bool(message.get("offline")))
            self.run.changed()

    def _resolve(self, result: dict[str, Any] | str | None) -> None:
        if self._pending is not None and not self._resolved.is_set():
            self._result = result
            self._resolved.set()

    async def _ready_client(self) -> Client:
        while self.client is None:
            await self._up.wait()
        return self.client

    async def send_loop(self, every: float) -> None:
        """Sends 0, 1, 2, ... to the target until the run stops; each message until it is acked."""
        assert self.target is not None
        index = 0
        try:
            while not self.run.stopping:
                cid = f"{self.name}-{index}"
                result = await self._send_one(cid)
                if isinstance(result, dict):
                    self.acked.append(str(result["id"]))
                    self.acked_at.append(time.monotonic())
                    index += 1
                    await trio.sleep(every)
                elif isinstance(result, str):
                    self.refused += 1
                    await trio.sleep(REFUSED_PAUSE_S)
                else:  # no answer: again on this session or the next (sending on a closed one
                    self.resent += 1  # fails without a checkpoint, so the pause is needed)
                    await trio.sleep(RESEND_PAUSE_S)
        finally:
            self.finished.set()

    async def _send_one(self, cid: str) -> dict[str, Any] | str | None:
        """The ack, an error kind (refused), or None (no answer: the session ended or timed out)."""
        assert self.target is not None
        client = await self._ready_client()
        self._pending, self._result, self._resolved = cid, None, trio.Event()
        try:
            await client.send("message", cid=cid, chatId=self.target.chat_id, type=self.target.kind,
                              messageType="text", content=cid)
            with trio.move_on_after(ACK_TIMEOUT_S):
                await self._resolved.wait()
            return self._result
        except RETRYABLE:
            return None
        finally:
            self._pending = None


# -- the run -----------------------------------------------------------------------------------


@attrs.define
class FaultRecord:
    fault: Fault
    at: float  # monotonic, injected
    target: str  # the node (proxy) it hit: `active` and `standby` resolved
    repaired: float = math.nan
    healthy: float = math.nan
    gap_all: float = math.nan
    gap_pair: float = math.nan
    gap_pair_name: str = ""
    notes: list[str] = attrs.Factory(list)


@attrs.define
class Report:
    seed: int
    asked: float  # the --duration asked for
    duration: float  # seconds of traffic (longer when the faults asked for needed more)
    masters: int
    faults: list[FaultRecord]
    acked: int
    acked_friend: int
    acked_group: int
    refused: int
    resent: int
    expected: int
    delivered: int
    lost: list[tuple[str, str, str]]  # (sender, recipient, message id)
    duplicates: int
    duplicates_replayed: int
    out_of_order: list[tuple[str, str, str]]  # (sender, recipient, message id delivered late)
    cid_reused: list[tuple[str, str]]  # (recipient, cid)
    unacked_delivered: int
    offline_replayed: int
    only_by_final_sync: list[tuple[str, str, str]]  # (sender, recipient, id) reached only by the last replay
    findings: list[str]
    folder: Path

    def table(self) -> str:
        t0 = self.faults[0].at - WARMUP_S if self.faults else 0.0
        lines = [
            f"== chaos run: seed {self.seed}, {self.duration:.0f} s of traffic, {len(self.faults)} faults, "
            f"{self.masters} master(s); replay: scripts/chaos.sh --duration {self.asked:.0f} --seed {self.seed} "
            f"--masters {self.masters}",
            f"{'#':>3}  {'at s':>6}  {'fault':<14} {'target':<8} {'down s':>6}  {'healthy s':>9}  "
            f"{'gap all s':>9}  {'gap pair s':>10}  pair",
        ]
        for n, f in enumerate(self.faults, 1):
            lines.append(
                f"{n:>3}  {f.at - t0:>6.1f}  {f.fault.kind:<14} {f.target:<8} {f.fault.down_s:>6.2f}  "
                f"{f.healthy - f.repaired:>9.2f}  {f.gap_all:>9.2f}  {f.gap_pair:>10.2f}  {f.gap_pair_name}"
                + (f"  ({'; '.join(f.notes)})" if f.notes else ""))
        rows = [
            ("messages acked", f"{self.acked} ({self.acked_friend} friend, {self.acked_group} group)"),
            ("refused (retried, same cid)", str(self.refused)),
            ("sent again after no ack (same cid)", str(self.resent)),
            ("deliveries expected (acked x recipients)", str(self.expected)),
            ("delivered after dedupe by id", str(self.delivered)),
            ("  of them by offline replay", str(self.offline_replayed)),
            ("  of them only by the replay after the run", str(len(self.only_by_final_sync))),
            ("lost (must be 0)", str(len(self.lost))),
            ("duplicates seen by clients before dedupe",
             f"{self.duplicates} ({self.duplicates_replayed} by offline replay, the rest live)"),
            ("out-of-order per (sender, recipient) (must be 0)", str(len(self.out_of_order))),
            ("one cid under two ids (must be 0)", str(len(self.cid_reused))),
            ("delivered but never acked", str(self.unacked_delivered)),
            ("longest cross-node gap after a fault", f"{max((f.gap_all for f in self.faults), default=0):.2f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        lines += [f"{k:<{width}}  {v}" for k, v in rows]
        lines += [f"FINDING: {finding}" for finding in self.findings]
        lines.append(f"logs: {self.folder}")
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.out_of_order or self.cid_reused)


class ChaosRun:
    def __init__(self, folder: Path, seed: int, duration: float, min_faults: int = 5, every: float = 0.1,
                 down: tuple[float, float] = (1.0, 3.0), quiet: tuple[float, float] = (2.0, 5.0),
                 masters: int = 1, log: Callable[[str], None] = print, forward_queue_bytes: int | None = None) -> None:
        self.folder = folder
        self.seed = seed
        self.duration = duration
        self.min_faults = min_faults
        self.every = every
        self.down, self.quiet = down, quiet
        self._log = log
        self.tag = f"{seed % 100000:05d}{random.Random().randrange(1000):03d}"
        if masters not in (1, 2):
            raise ValueError("masters must be 1 or 2")
        self.two_masters = masters == 2
        self.redis = RedisServer(folder / "redis-server")
        # every node reaches Redis through this proxy (CUT_REDIS stalls it); the run itself directly
        self.redis_proxy = ProxyThread(self.redis.port, listen_port=free_port())
        # one master: both slaves reach it through a proxy each (a cut link is one slave's);
        # two: each master publishes its forward URL through a proxy in front of it (a cut link
        # is every link of the active master, which keeps its Redis lease)
        self.cluster = Cluster(folder / "cluster", f"redis://127.0.0.1:{self.redis_proxy.proxy.listen_port}/0", proxied=() if self.two_masters else (DEPT1, DEPT2))
        if forward_queue_bytes is not None:  # every node's forward queue capped (vim.cluster.forward-queue-bytes)
            write_node = self.cluster.write_node

            def write_capped(*args: Any, **kwargs: Any) -> ClusterNode:
                node = write_node(*args, **kwargs)
                set_cluster_keys(node, {"forward-queue-bytes": forward_queue_bytes})
                return node

            self.cluster.write_node = write_capped  # type: ignore[method-assign]
        self.home_m1, self.home_m2 = (MASTER_A, MASTER_B) if self.two_masters else (MASTER, MASTER)
        self.stopping = False
        self.chatters: dict[str, Chatter] = {}
        self.offline_user: Chatter | None = None
        self.records: list[FaultRecord] = []
        self.findings: list[str] = []
        self.killed: set[str] = set()  # nodes the schedule killed (not yet restarted)
        self._changed = trio.Event()
        self.started = 0.0
        self.stopped = 0.0
        self.final_sync_at = math.inf

    def log(self, text: str) -> None:
        line = f"[chaos {time.strftime('%H:%M:%S')}] {text}"
        self._log(line)
        with open(self.folder / "chaos.log", "a") as out:
            out.write(line + "\n")

    def username(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- setup

    def start_servers(self) -> None:
        """Redis and the cluster. Call from the main thread: the Redis server is started so that
        it dies with the thread that started it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.redis.start()
        flush_redis(self.redis.url)
        self.redis_proxy.start()
        if self.two_masters:
            self._start_two_masters()
        else:
            self.cluster.start()

    def _start_two_masters(self) -> None:
        """master-a (it takes the lease first), master-b (standby), dept-1, dept-2; every master's
        forward port behind a proxy of its own, published as its `forward-url`; every other node
        names both proxies in `master-url` (candidates: the active one is found through Redis)."""
        cluster = self.cluster
        try:
            urls: list[str] = []

            def write_master(name: str) -> ClusterNode:
                node = cluster.write_node(name, "master", ",".join(urls) or None)
                if name in cluster.proxies:  # a retry on new ports
                    cluster.proxies.pop(name).stop()
                assert node.forward_port is not None
                proxy = cluster.proxies[name] = ProxyThread(node.forward_port).start()
                set_cluster_keys(node, {"forward-url": f"ws://127.0.0.1:{proxy.port}/forward"})
                return node

            cluster._start_node(lambda: write_master(MASTER_A))  # first: it takes the master lease
            urls.append(f"ws://127.0.0.1:{cluster.proxies[MASTER_A].port}/forward")
            cluster._start_node(lambda: write_master(MASTER_B))
            urls.append(f"ws://127.0.0.1:{cluster.proxies[MASTER_B].port}/forward")
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda name: cluster._start_node(
                    lambda: cluster.write_node(name, "slave", ",".join(urls))), (DEPT1, DEPT2)))
            cluster.wait_healthy()
        except BaseException:
            cluster.stop()
            raise

    async def stop_servers(self) -> None:
        try:
            await blocking(self.cluster.stop)  # in a thread: the proxies' threads are stopped from outside trio
        finally:
            await blocking(self.redis_proxy.stop)
            self.redis.kill()

    def fault_kinds(self) -> dict[str, list[str]]:
        if self.two_masters:
            return {KILL_MASTER: [ACTIVE], KILL_STANDBY: [STANDBY], KILL_DEPT: [DEPT1, DEPT2],
                    STOP_DEPT: [DEPT1, DEPT2], RESTART_REDIS: ["redis"], CUT_LINK: [ACTIVE], CUT_REDIS: ["redis"]}
        return {KILL_MASTER: [MASTER], KILL_DEPT: [DEPT1, DEPT2], STOP_DEPT: [DEPT1, DEPT2],
                RESTART_REDIS: ["redis"], CUT_LINK: sorted(self.cluster.proxies), CUT_REDIS: ["redis"]}

    def active_master(self) -> str:
        """The master whose /metrics says it relays (two-master clusters)."""
        for name in (MASTER_A, MASTER_B):
            node = self.cluster.nodes[name]
            try:
                if node.running() and re.search(r"^vim_master_active 1(\.0)?$", node.metrics(), re.MULTILINE):
                    return name
            except OSError:
                continue
        raise ChaosError("no master says it is active")

    async def resolve(self, target: str) -> str:
        """`active` / `standby` to a node name, at the moment of the fault."""
        if target not in (ACTIVE, STANDBY):
            return target
        active = await blocking(self.active_master)
        return active if target == ACTIVE else ({MASTER_A, MASTER_B} - {active}).pop()

    def _add(self, name: str, home: str) -> Chatter:
        chatter = self.chatters[name] = Chatter(self, name, home)
        return chatter

    async def make_users(self) -> None:
        pairs = [("a1", DEPT1, "b1", DEPT2), ("a2", DEPT2, "b2", DEPT1), ("a3", self.home_m1, "b3", DEPT2),
                 ("a4", DEPT1, "b4", self.home_m2), ("a5", DEPT2, "b5", DEPT2), ("a6", DEPT1, "off", DEPT2)]
        for sender, s_home, recipient, r_home in pairs:
            self._add(sender, s_home)
            self._add(recipient, r_home)
        self.offline_user = self.chatters["off"]
        members = [self._add("gm1", DEPT2), self._add("gm2", self.home_m1), self._add("gm3", DEPT1)]
        owners = [self._add("gs1", DEPT1), self._add("gs2", DEPT2)]
        for chatter in self.chatters.values():
            await chatter.register()
        for sender, _, recipient, _ in pairs:
            to = self.chatters[recipient]
            self.chatters[sender].target = Target(to.user_id, "friend", [to])
        for owner in owners:
            async with contextlib.AsyncExitStack() as stack:
                client = await online(stack, owner.url, self.username(owner.name), register=False)
                await client.send("group-create", name=f"chaos-{owner.name}", members=[m.user_id for m in members])
                group = await client.expect("group-ok", timeout=15)
            owner.target = Target(group["groupId"], "group", members)

    @property
    def senders(self) -> list[Chatter]:
        return [c for c in self.chatters.values() if c.target is not None]

    async def wait_all_online(self, timeout: float) -> None:
        with trio.fail_after(timeout):
            while not all(c.client is not None for c in self.chatters.values()):
                await self._changed.wait()

    # -- faults

    async def inject(self, fault: Fault, target: str) -> None:
        if fault.kind in (KILL_MASTER, KILL_STANDBY, KILL_DEPT):
            self.killed.add(target)
            await blocking(self.cluster.nodes[target].kill)
        elif fault.kind == STOP_DEPT:
            self.killed.add(target)
            exit_code = await blocking(self.cluster.nodes[target].stop)
            if exit_code != 0:
                self.findings.append(f"{target} exited {exit_code} on SIGTERM, not 0")
        elif fault.kind == RESTART_REDIS:
            self.redis.kill()  # from this thread: the server dies with the thread that started it
        elif fault.kind == CUT_LINK:
            await blocking(self.cluster.proxies[target].sever)
        elif fault.kind == CUT_REDIS:
            await blocking(self.redis_proxy.stall)
        else:
            raise ValueError(fault.kind)

    async def repair(self, fault: Fault, target: str) -> None:
        if fault.kind in (KILL_MASTER, KILL_STANDBY, KILL_DEPT, STOP_DEPT):
            await blocking(self.cluster.nodes[target].start, HEAL_TIMEOUT_S)
            self.killed.discard(target)
        elif fault.kind == RESTART_REDIS:
            self.redis.start()  # empty: no persistence
        elif fault.kind == CUT_LINK:
            await blocking(self.cluster.proxies[target].restore)
        elif fault.kind == CUT_REDIS:
            await blocking(self.redis_proxy.unstall)

    async def heal(self, record: FaultRecord) -> None:
        """Waits until every node is healthy; a node that exited on its own is a finding (it is
        started again)."""
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while True:
            for node in self.cluster.nodes.values():
                if not node.running() and node.name not in self.killed:
                    note = f"{node.name} exited on its own after {record.fault.kind} {record.target}"
                    self.findings.append(f"{note}; log tail:\n{node.log_tail(15)}")
                    record.notes.append(note)
                    self.log(note)
                    await blocking(node.start, HEAL_TIMEOUT_S)
            try:
                await blocking(self.cluster.wait_healthy, max(1.0, deadline - time.monotonic()))
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
            except TimeoutError as exc:
                raise ChaosError(f"not healthy {HEAL_TIMEOUT_S} s after repairing {record.fault}: {exc}") from exc

    async def offline_rhythm(self, rng: random.Random) -> None:
        assert self.offline_user is not None
        while not self.stopping:
            await trio.sleep(rng.uniform(2.0, 5.0))
            if self.stopping:
                break
            self.offline_user.go_offline()
            await trio.sleep(rng.uniform(2.0, 5.0))
            self.offline_user.go_online()
        self.offline_user.go_online()

    async def chaos(self) -> None:
        await trio.sleep(WARMUP_S)
        for fault in schedule(self.seed, self.fault_kinds(), self.down, self.quiet):
            if time.monotonic() - self.started >= self.duration and len(self.records) >= self.min_faults:
                return
            target = await self.resolve(fault.target)
            record = FaultRecord(fault, time.monotonic(), target)
            self.records.append(record)
            self.log(f"fault {len(self.records)}: {fault.kind} {target} for {fault.down_s} s")
            await self.inject(fault, target)
            await trio.sleep(fault.down_s)
            await self.repair(fault, target)
            record.repaired = time.monotonic()
            await self.heal(record)
            record.healthy = time.monotonic()
            self.log(f"healthy {record.healthy - record.repaired:.2f} s after the repair; quiet {fault.quiet_s} s")
            await trio.sleep(fault.quiet_s)

    async def run(self) -> Report:
        """Traffic + faults + the final sync; the servers must be started (`start_servers`)."""
        async with trio.open_nursery() as nursery:
            await self.make_users()
            for chatter in self.chatters.values():
                nursery.start_soon(chatter.live)
            await self.wait_all_online(60)
            self.log(f"seed {self.seed}: {len(self.chatters)} users online, {len(self.senders)} senders")
            self.started = time.monotonic()
            for sender in self.senders:
                nursery.start_soon(sender.send_loop, self.every)
            nursery.start_soon(self.offline_rhythm, random.Random(self.seed + 1))
            await self.chaos()
            self.stopping = True
            with trio.move_on_after(FINAL_SYNC_S):
                for sender in self.senders:
                    await sender.finished.wait()
            stuck = [s.state() for s in self.senders if not s.finished.is_set()]
            if stuck:
                raise ChaosError(f"senders with no ack for {FINAL_SYNC_S} s after the run: {stuck}")
            self.stopped = time.monotonic()
            self.log(f"senders stopped after {self.stopped - self.started:.1f} s; every user reconnects and syncs")
            await self.final_sync()
            nursery.cancel_scope.cancel()
        return self.report()

    def expected(self) -> Iterator[tuple[Chatter, Chatter, int, str]]:
        for sender in self.senders:
            assert sender.target is not None
            for recipient in sender.target.recipients:
                for index, message_id in enumerate(sender.acked):
                    yield sender, recipient, index, message_id

    def missing(self) -> list[tuple[str, str, str]]:
        return [(s.name, r.name, m) for s, r, _, m in self.expected() if m not in r.first]

    async def final_sync(self) -> None:
        """Every user opens a new session (offline replay); then waits until nothing is missing."""
        self.final_sync_at = time.monotonic()
        before = {c.name: c.sessions for c in self.chatters.values()}
        for chatter in self.chatters.values():
            chatter.reconnect()
        with trio.move_on_after(FINAL_SYNC_S):
            while any(c.sessions <= before[c.name] for c in self.chatters.values()) or self.missing():
                await self._changed.wait()
        stuck = [c.name for c in self.chatters.values() if c.sessions <= before[c.name]]
        if stuck:
            self.findings.append(f"users that could not open a session after the run: {stuck}")

    # -- the accounting

    def report(self) -> Report:
        by_id = {c.user_id: c for c in self.chatters.values()}
        lost = self.missing()
        out_of_order: list[tuple[str, str, str]] = []
        for sender in self.senders:
            assert sender.target is not None
            index_of = {m: i for i, m in enumerate(sender.acked)}
            for recipient in sender.target.recipients:
                arrivals = sorted((a.at, m) for m, a in recipient.first.items() if m in index_of)
                highest = -1
                for _, message_id in arrivals:
                    if index_of[message_id] < highest:
                        out_of_order.append((sender.name, recipient.name, message_id))
                    highest = max(highest, index_of[message_id])
        acked_ids = {m for s in self.senders for m in s.acked}
        cid_reused: list[tuple[str, str]] = []
        unacked = 0
        for recipient in self.chatters.values():
            ids_of_cid: dict[str, set[str]] = collections.defaultdict(set)
            for message_id, arrival in recipient.first.items():
                ids_of_cid[f"{arrival.from_id}/{arrival.cid}"].add(message_id)
                if message_id not in acked_ids and arrival.from_id in by_id:
                    unacked += 1
            cid_reused += [(recipient.name, cid) for cid, ids in ids_of_cid.items() if len(ids) > 1]
        expected = list(self.expected())
        delivered = sum(1 for _, r, _, m in expected if m in r.first)
        replayed = sum(1 for _, r, _, m in expected if m in r.first and r.first[m].offline)
        late = [(s.name, r.name, m) for s, r, _, m in expected
                if m in r.first and r.first[m].offline and r.first[m].at >= self.final_sync_at]
        duplicates = sum(n - 1 for c in self.chatters.values() for n in c.frames.values())
        self.measure_gaps()
        self.dump()
        findings = list(self.findings)
        if lost:
            findings.append(f"{len(lost)} acked deliveries lost, first: {lost[:5]}")
        if out_of_order:
            findings.append(f"{len(out_of_order)} out-of-order first deliveries, first: {out_of_order[:5]}")
        if cid_reused:
            findings.append(f"{len(cid_reused)} cids delivered under two ids, first: {cid_reused[:5]}")
        return Report(
            seed=self.seed, asked=self.duration, duration=self.stopped - self.started, masters=self.masters, faults=self.records,
            acked=len(acked_ids),
            acked_friend=sum(len(s.acked) for s in self.senders if s.target and s.target.kind == "friend"),
            acked_group=sum(len(s.acked) for s in self.senders if s.target and s.target.kind == "group"),
            refused=sum(s.refused for s in self.senders), resent=sum(s.resent for s in self.senders),
            expected=len(expected), delivered=delivered, lost=lost, duplicates=duplicates,
            duplicates_replayed=sum(c.replayed_again for c in self.chatters.values()),
            out_of_order=out_of_order, cid_reused=cid_reused, unacked_delivered=unacked,
            offline_replayed=replayed, only_by_final_sync=late, findings=findings, folder=self.folder,
        )

    def dump(self) -> None:
        """arrivals.json in the run's folder: every sender's acks and every user's arrivals (seconds
        since the traffic started), to trace a finding back to the node logs."""
        t0 = self.started
        data = {
            "seed": self.seed,
            "started_unix": time.time() - (time.monotonic() - t0),
            "faults": [{"kind": r.fault.kind, "target": r.target, "at": r.at - t0,
                        "repaired": r.repaired - t0, "healthy": r.healthy - t0} for r in self.records],
            "senders": {s.name: {"home": s.home, "user": s.user_id, "to": s.target.chat_id if s.target else None,
                                 "acked": [[m, at - t0] for m, at in zip(s.acked, s.acked_at, strict=True)]}
                        for s in self.senders},
            "users": {c.name: {"home": c.home, "user": c.user_id, "sessions": c.sessions,
                               "arrivals": [[m, a.at - t0, a.cid, a.offline, c.frames[m]]
                                            for m, a in sorted(c.first.items(), key=lambda kv: kv[1].at)]}
                      for c in self.chatters.values()},
        }
        (self.folder / "arrivals.json").write_text(json.dumps(data, indent=1))

    @property
    def masters(self) -> int:
        return sum(1 for name in self.cluster.nodes if name.startswith(MASTER))

    def cross_pairs(self) -> dict[str, list[float]]:
        """First-arrival times per cross-node (sender, recipient) pair, the offline user left out."""
        pairs: dict[str, list[float]] = {}
        for sender in self.senders:
            assert sender.target is not None
            ids = set(sender.acked)
            for recipient in sender.target.recipients:
                if recipient.home == sender.home or recipient is self.offline_user:
                    continue
                pairs[f"{sender.name}->{recipient.name}"] = sorted(
                    a.at for m, a in recipient.first.items() if m in ids)
        return pairs

    def measure_gaps(self) -> None:
        pairs = self.cross_pairs()
        merged = sorted(t for times in pairs.values() for t in times)
        for n, record in enumerate(self.records):
            end = self.records[n + 1].at if n + 1 < len(self.records) else self.stopped
            record.gap_all = longest_gap(merged, record.at, end)
            worst = max(pairs, key=lambda p: longest_gap(pairs[p], record.at, end))
            record.gap_pair, record.gap_pair_name = longest_gap(pairs[worst], record.at, end), worst


def set_cluster_keys(node: ClusterNode, keys: dict[str, Any]) -> None:
    """Adds keys to the `vim.cluster` section of a node's written config."""
    config = yaml.safe_load(node.config.read_text())
    config["vim"]["cluster"].update(keys)
    node.config.write_text(yaml.safe_dump(config))


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] with no time of `times` (sorted) in it."""
    points = [start, *(t for t in times if start < t < end), end]
    return max(b - a for a, b in zip(points, points[1:], strict=False))


async def run_chaos(folder: Path, seed: int, duration: float, **options: Any) -> Report:
    """Starts the servers, runs the schedule, stops the servers; the report (not yet asserted)."""
    run = ChaosRun(folder, seed, duration, **options)
    run.start_servers()
    try:
        return await run.run()
    finally:
        await run.stop_servers()


def seed_from_env(default: int | None = None) -> int:
    raw = os.environ.get("VIM_CHAOS_SEED", "")
    if raw:
        return int(raw)
    return default if default is not None else random.SystemRandom().randrange(1, 1_000_000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/chaos.sh",
        description="The chaos suite's long run: a master + two department nodes on a private redis-server, "
                    "steady cross-node, group and offline traffic, a seeded random schedule of faults (SIGKILL "
                    "of masters and department nodes, Redis restarted empty, links cut, Redis's network cut), then the accounting "
                    "table. Exits 1 if anything acked was lost, arrived out of order or under two ids.")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (default 600)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the schedule's seed (default: $VIM_CHAOS_SEED, else random; printed either way)")
    parser.add_argument("--min-faults", type=int, default=5, help="at least this many faults (default 5)")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between one sender's messages (default 0.1)")
    parser.add_argument("--masters", type=int, choices=(1, 2), default=2,
                        help="2: an active and a standby master (kills of either, the active one's links cut at "
                             "a proxy); 1: one master (a killed master is restarted, a slave's link is cut). "
                             "Default 2")
    parser.add_argument("--forward-queue-bytes", type=int, default=None, metavar="BYTES",
                        help="every node's vim.cluster.forward-queue-bytes (default: the node's default, 16 MiB); "
                             "a small one (65536) makes cut links empty their queues and the catch-up deliver")
    parser.add_argument("--keep", metavar="DIR", type=Path, default=None,
                        help="keep the logs in DIR (default: a temp folder, removed after a clean run)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.every <= 0 or args.min_faults < 0:
        parser.error("--duration and --every must be > 0, --min-faults >= 0")
    if args.forward_queue_bytes is not None and args.forward_queue_bytes < 65536:
        parser.error("--forward-queue-bytes must be at least 65536 (the config key's smallest)")
    seed = args.seed if args.seed is not None else seed_from_env()
    print(f"chaos: seed {seed}, {args.duration:.0f} s, {args.masters} master(s) (replay: scripts/chaos.sh "
          f"--duration {args.duration:.0f} --seed {seed} --masters {args.masters}"
          f"{f' --every {args.every:g}' if args.every != 0.1 else ''}"
          f"{f' --forward-queue-bytes {args.forward_queue_bytes}' if args.forward_queue_bytes else ''})", flush=True)
    folder = args.keep if args.keep is not None else Path(tempfile.mkdtemp(prefix="vim-chaos-"))
    report = trio.run(lambda: run_chaos(folder, seed, args.duration, min_faults=args.min_faults, every=args.every,
                                        masters=args.masters, log=lambda line: print(line, flush=True),
                                        forward_queue_bytes=args.forward_queue_bytes))
    print(report.table(), flush=True)
    if not report.ok:
        from .explain import explain

        print(explain(folder), flush=True)
    if report.ok and not report.findings and args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if report.ok else 1

if __name__ == "__main__":
    sys.exit(main())
