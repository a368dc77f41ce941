"""`vim-cluster bench`: a load generator that speaks the client protocol to a running cluster.

Scenarios:
- cross-node: each sender on one node talks to its own recipient on another node, keeping up
  to `window` messages unacked (pipelined).
- local: the same, senders and recipients on one node.
- group: one group whose members are spread over every node; some members send.
- connections: K idle authenticated connections to one node; reports RSS per connection of
  the node processes.
- churn: connect / ready / close cycles per second.

Latency is sender -> recipient, measured in this process with one monotonic clock; the ack's
latency (sender -> ack: the node's durable store) is given beside it. `--timeline FILE` writes
each message's times to a CSV file (write_timeline). `lost`
counts messages acked to a sender but never delivered to the recipient (after a drain wait).
Recipients confirm what they got with `received`, as a real client does.

The message scenarios' connections (for every system a benchmark drives) use the lean client the
nodes use for their forward links (node/ws_open.open_link: websockets' sans-I/O protocol, one
task per connection, no reader task or message channel), not trio-websocket's: on a 2-core
machine the load generator's own CPU caps the rate (session 15: trio-websocket's client took
about 420 µs of CPU per cross-node message and read about 8,000 group copies a second; the lean
one about 220 µs and 20,000). User creation, logins and the connections and churn scenarios
keep trio-websocket's.

CPU of the message scenarios is measured over one window, from when every connection is ready
until the drain ends (user creation and logins are outside it): the servers' (from /proc, for
the pids given), per delivered message and as cores (CPU seconds / wall seconds), and this
load generator's own process CPU per delivered message.
"""

from __future__ import annotations

import csv
import gc
import itertools
import json
import math
import secrets
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from .node.ws_open import open_link
from .sysinfo import cpu_seconds, raise_fd_limit, rss_kb

PASSWORD = "bench-password-1"
SCENARIOS = ("cross-node", "local", "group", "connections", "churn")
DRAIN_S = 10.0
CONFIRM_S = 0.05  # a recipient confirms what it got within 50 ms...
CONFIRM_MAX = 100  # ...in `received` frames of at most 100 ids
REGISTER_CONNECTION_S = 4.0  # create_users: a new connection after this long (nodes close at 10 s)
CONNECT_TIMEOUT_S = 30.0  # a message scenario's connection: TCP, TLS and the WebSocket upgrade, each
MAX_MESSAGE_BYTES = 1 << 20  # the largest frame a connection takes (trio-websocket's default)


@attrs.define
class Stats:
    sent: int = 0
    acked: int = 0
    delivered: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = attrs.Factory(dict)
    latencies: list[float] = attrs.Factory(list)
    sent_at: dict[str, float] = attrs.Factory(dict)  # cid -> trio time, for each of these three
    acked_at: dict[str, float] = attrs.Factory(dict)
    delivered_at: dict[str, float] = attrs.Factory(dict)  # the last recipient's, in a group
    cpu: dict[str, float] = attrs.Factory(dict)  # cpu_figures() of the message window

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


class Channel(Protocol):
    """A client WebSocket's message API: trio-websocket's WebSocketConnection, or the lean
    MessageSocket of node/ws_open.open_link (what the message scenarios connect with)."""

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes) -> None: ...


async def send(ws: Channel, code: str, **message: Any) -> None:
    await ws.send_message(json.dumps({"code": code, "message": message}))


async def receive(ws: Channel) -> dict[str, Any]:
    return json.loads(await ws.get_message())  # type: ignore[no-any-return,unused-ignore]


async def expect(ws: Channel, code: str) -> dict[str, Any]:
    while True:
        frame = await receive(ws)
        if frame["code"] == code:
            return frame["message"]  # type: ignore[no-any-return,unused-ignore]
        if frame["code"] == "error":
            raise RuntimeError(f"{code}: error {frame['message']}")


@attrs.frozen
class Account:
    user_id: str
    token: str


async def create_users(url: str, count: int, prefix: str, parallel: int = 8) -> list[Account]:
    """Registers and logs in `count` users (a few connections at a time)."""
    accounts: list[Account | None] = [None] * count
    numbers = iter(range(count))

    async def worker() -> None:
        # A node closes a connection that has not sent `ready` within 10 s (PROTOCOL.md): each
        # worker opens a fresh one after REGISTER_CONNECTION_S.
        i = next(numbers, None)
        while i is not None:
            async with open_websocket_url(url) as ws:
                opened = trio.current_time()
                while i is not None and trio.current_time() - opened < REGISTER_CONNECTION_S:
                    name = f"{prefix}{i}"
                    await send(ws, "register", username=name, password=PASSWORD)
                    await expect(ws, "register-ok")
                    await send(ws, "login", username=name, password=PASSWORD)
                    login = await expect(ws, "login-ok")
                    accounts[i] = Account(login["userId"], login["token"])
                    i = next(numbers, None)

    async with trio.open_nursery() as nursery:
        for _ in range(min(parallel, count)):
            nursery.start_soon(worker)
    return [a for a in accounts if a is not None]


async def ready(ws: Channel, account: Account, client: str = "bench") -> None:
    await send(ws, "ready", token=account.token, client=client)
    await expect(ws, "sync-done")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


# --- message scenarios ---------------------------------------------------------------------


@attrs.frozen
class Event:
    """What one received frame means to the load generator.

    kind: "ack" (key: the cid), "error" (key: the error kind), "message" (key: the cid, uid:
    the id duplicates are dropped by, confirm: the client must confirm it), or "reply" (key: a
    frame to send back at once, such as a pong)."""

    kind: str
    key: str
    uid: str = ""
    confirm: bool = False


class Speaker(Protocol):
    """One ready connection's wire format: vim-cluster's (VimDialect), or a peer's in
    scripts/bench_peers.py, so every system is driven by the same load generator."""

    def message(self, cid: str, chat_id: str, chat_type: str, content: str) -> str: ...

    def events(self, text: str | bytes) -> list[Event]: ...

    def received(self, ids: list[str]) -> str | None: ...


class Dialect(Protocol):
    async def ready(self, ws: Channel, account: Account, client: str) -> Speaker: ...


class VimSpeaker:
    """vim-cluster's client protocol (PROTOCOL.md §1)."""

    def message(self, cid: str, chat_id: str, chat_type: str, content: str) -> str:
        return json.dumps({"code": "message", "message": {
            "cid": cid, "chatId": chat_id, "type": chat_type, "messageType": "text", "content": content}})

    def events(self, text: str | bytes) -> list[Event]:
        frame = json.loads(text)
        code, body = frame["code"], frame["message"]
        if code == "ack":
            return [Event("ack", body["cid"])]
        if code == "error":
            return [Event("error", body["error"])]
        if code == "message":
            return [Event("message", body["cid"], body["id"], body["type"] == "friend")]
        return []

    def received(self, ids: list[str]) -> str | None:
        return json.dumps({"code": "received", "message": {"ids": ids}})


class VimDialect:
    async def ready(self, ws: Channel, account: Account, client: str) -> Speaker:
        await ready(ws, account, client=client)
        return VimSpeaker()


VIM = VimDialect()


async def _sender(ws: Channel, speaker: Speaker, chat_id: str, chat_type: str, stats: Stats,
                  window: int, content: str, tag: str, keep_going: Callable[[int], bool], interval: float) -> None:
    """Sends until keep_going says stop: at most `window` unacked, and with `interval` > 0 one
    message every `interval` seconds (an open-loop rate)."""
    slots = trio.Semaphore(window)
    next_at = trio.current_time()

    async def acks() -> None:
        while True:
            for event in speaker.events(await ws.get_message()):
                if event.kind == "ack":
                    stats.acked += 1
                    stats.acked_at[event.key] = trio.current_time()
                    slots.release()
                elif event.kind == "error":
                    stats.error(event.key)
                    slots.release()
                elif event.kind == "reply":
                    await ws.send_message(event.key)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(acks)
        for n in itertools.count():
            if not keep_going(n):
                break
            if interval:
                next_at += interval
                await trio.sleep_until(next_at)
            await slots.acquire()
            cid = f"{tag}-{n}"
            stats.sent += 1
            stats.sent_at[cid] = trio.current_time()
            await ws.send_message(speaker.message(cid, chat_id, chat_type, content))
        with trio.move_on_after(DRAIN_S):
            for _ in range(window):
                await slots.acquire()
        nursery.cancel_scope.cancel()


async def _recipient(ws: Channel, speaker: Speaker, stats: Stats) -> None:
    """Counts deliveries and confirms them as a client does: within CONFIRM_S of the first
    unconfirmed one, at most CONFIRM_MAX ids a frame."""
    seen: set[str] = set()
    pending: list[str] = []
    confirm_at = math.inf
    while True:
        with trio.move_on_at(confirm_at):
            for event in speaker.events(await ws.get_message()):
                if event.kind == "reply":
                    await ws.send_message(event.key)
                if event.kind != "message" or event.uid in seen:
                    continue
                seen.add(event.uid)
                now = trio.current_time()
                sent = stats.sent_at.get(event.key)
                if sent is not None:
                    stats.latencies.append(now - sent)
                stats.delivered += 1
                stats.delivered_at[event.key] = now
                if event.confirm:
                    if not pending:
                        confirm_at = trio.current_time() + CONFIRM_S
                    pending.append(event.uid)
            if len(pending) < CONFIRM_MAX:
                continue
        if pending:
            confirm = speaker.received(pending)
            if confirm is not None:
                await ws.send_message(confirm)
            pending = []
        confirm_at = math.inf


class CpuWindow:
    """Wall time, this process's CPU time and the CPU time of the server processes `pids`,
    from its creation to `figures()`."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.wall = time.monotonic()
        self.own = time.process_time()
        self.servers = cpu_seconds(self.pids)

    def figures(self, delivered: int) -> dict[str, float]:
        return cpu_figures(time.monotonic() - self.wall, time.process_time() - self.own,
                           cpu_seconds(self.pids) - self.servers if self.pids else None, delivered)


def cpu_figures(wall_s: float, generator_cpu_s: float, server_cpu_s: float | None, delivered: int) -> dict[str, float]:
    """The load generator's CPU per delivered message, and the servers' (when measured) per
    delivered message and in cores: CPU seconds per wall second of the window."""
    figures = {"cpu_window_s": round(wall_s, 2), "generator_cpu_s": round(generator_cpu_s, 2)}
    if delivered:
        figures["generator_cpu_us_per_delivered"] = round(generator_cpu_s / delivered * 1e6, 1)
    if server_cpu_s is not None:
        figures["server_cpu_s"] = round(server_cpu_s, 2)
        if delivered:
            figures["server_cpu_us_per_delivered"] = round(server_cpu_s / delivered * 1e6, 1)
        if wall_s > 0:
            figures["server_cores"] = round(server_cpu_s / wall_s, 2)
    return figures


async def run_messages(plan: list[tuple[str, Account, str, list[tuple[str, Account]]]], chat_type: str,
                       chat_of: Callable[[int], str], args: Any, stats: Stats, dialect: Dialect = VIM,
                       pids: Sequence[int] = ()) -> float:
    """plan: (sender url, sender, tag, [(recipient url, recipient account), ...]) per sender.
    Fills stats.cpu for the window from every connection ready to the end of the drain
    (`pids`: the server processes to measure)."""
    content = "x" * args.size
    deadline = math.inf  # set once every connection is ready: opening hundreds takes a while
    per_sender = math.ceil(args.messages / len(plan)) if args.messages else None

    def keep_going(n: int) -> bool:
        if per_sender is not None:
            return n < per_sender
        return trio.current_time() < deadline

    async with trio.open_nursery() as outer:
        for _, _, _, recipients in plan:
            for url, account in recipients:
                ws, speaker = await outer.start(_connected, url, account, dialect)
                outer.start_soon(_recipient, ws, speaker, stats)
        senders = [await outer.start(_connected, url, account, dialect) for url, account, _, _ in plan]
        window = CpuWindow(pids)
        started = trio.current_time()
        if args.duration:
            deadline = started + args.duration
        outer.start_soon(_progress, stats, started)
        async with trio.open_nursery() as sending:
            for i, ((ws, speaker), (_, _, tag, _)) in enumerate(zip(senders, plan, strict=True)):
                interval = len(plan) / args.rate if args.rate else 0.0
                sending.start_soon(_sender, ws, speaker, chat_of(i), chat_type, stats, args.window, content, tag,
                                   keep_going, interval)
        elapsed = trio.current_time() - started
        expected = stats.acked * args.fanout
        with trio.move_on_after(DRAIN_S):
            while stats.delivered < expected:
                await trio.sleep(0.05)
        stats.cpu = window.figures(stats.delivered)
        outer.cancel_scope.cancel()
    return elapsed


async def run_pair(src: str, dst: str, senders: list[Account], recipients: list[Account], args: Any,
                   dialect: Dialect = VIM, pids: Sequence[int] = ()) -> dict[str, Any]:
    """The cross-node shape: sender i on `src` talks to recipient i on `dst`; `pids`: the
    server processes whose CPU is measured."""
    stats = Stats()
    plan = [(src, sender, f"s{i}", [(dst, recipients[i])]) for i, sender in enumerate(senders)]
    args.fanout = 1
    elapsed = await run_messages(plan, "friend", lambda i: recipients[i].user_id, args, stats, dialect, pids)
    return message_summary(stats, elapsed, 1, getattr(args, "timeline", None))


async def _connected(url: str, account: Account, dialect: Dialect = VIM, *,
                     task_status: trio.TaskStatus[tuple[Channel, Speaker]]) -> None:
    tls = ssl.create_default_context() if url.startswith("wss:") else None  # as trio-websocket's default
    async with open_link(url, tls, timeout=CONNECT_TIMEOUT_S, max_message_size=MAX_MESSAGE_BYTES) as ws:
        speaker = await dialect.ready(ws, account, f"bench-{secrets.token_hex(3)}")
        task_status.started((ws, speaker))
        await trio.sleep_forever()


async def _progress(stats: Stats, started: float) -> None:
    while True:
        await trio.sleep(1)
        elapsed = trio.current_time() - started
        print(f"  {elapsed:5.1f}s acked {stats.acked} delivered {stats.delivered} errors {stats.errors}",
              file=sys.stderr, flush=True)


def message_summary(stats: Stats, elapsed: float, fanout: int, timeline: str | None = None) -> dict[str, Any]:
    """The run's figures; `timeline`: a CSV file to write every message's times to as well."""
    if timeline:
        write_timeline(timeline, stats)
    ms = [x * 1000 for x in stats.latencies]
    lost = len(stats.acked_at.keys() - stats.delivered_at.keys()) if fanout == 1 else max(0, stats.acked * fanout - stats.delivered)
    acks = [(at - stats.sent_at[cid]) * 1000 for cid, at in stats.acked_at.items() if cid in stats.sent_at]
    return {
        "sent": stats.sent,
        "acked": stats.acked,
        "delivered": stats.delivered,
        "seconds": round(elapsed, 2),
        "acked_per_s": round(stats.acked / elapsed, 1) if elapsed else 0,
        "delivered_per_s": round(stats.delivered / elapsed, 1) if elapsed else 0,
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
        "ack_p50_ms": round(percentile(acks, 50), 2),
        "ack_p99_ms": round(percentile(acks, 99), 2),
        "errors": stats.errors,
        "error_kinds": stats.error_kinds,
        "lost": lost,
        **stats.cpu,
    }


def write_timeline(path: str, stats: Stats) -> None:
    """One CSV row per message sent, in the order sent: its cid, and when it was sent, acked
    and delivered (to the last recipient, in a group), in seconds from the first send; empty
    where it never was. Slow messages bunched at regular times point at a periodic pause in a
    node (session 22 found SQLite's checkpoints this way)."""
    start = min(stats.sent_at.values(), default=0.0)

    def at(times: dict[str, float], cid: str) -> str:
        return f"{times[cid] - start:.6f}" if cid in times else ""

    with open(path, "w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(["cid", "sent_s", "acked_s", "delivered_s"])
        for cid in sorted(stats.sent_at, key=stats.sent_at.__getitem__):
            rows.writerow([cid, at(stats.sent_at, cid), at(stats.acked_at, cid), at(stats.delivered_at, cid)])


# --- connection scenarios ------------------------------------------------------------------


async def run_connections(url: str, accounts: list[Account], count: int, pids: list[int]) -> dict[str, Any]:
    before = sum(rss_kb(p) for p in pids)
    opened = 0
    failed = 0
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(64)

        async def hold(i: int) -> None:
            nonlocal opened, failed
            async with limiter:
                try:
                    ws = await nursery.start(_connected, url, accounts[i % len(accounts)])
                except (OSError, HandshakeError, ConnectionClosed, RuntimeError):
                    failed += 1
                    return
            opened += 1
            del ws

        async with trio.open_nursery() as openers:
            for i in range(count):
                openers.start_soon(hold, i)
        elapsed = trio.current_time() - started
        await trio.sleep(2)  # let the node settle (queues, garbage)
        after = sum(rss_kb(p) for p in pids)
        nursery.cancel_scope.cancel()
    per = (after - before) / opened if opened else float("nan")
    return {"connections": opened, "failed": failed, "open_seconds": round(elapsed, 1),
            "rss_before_kb": before, "rss_after_kb": after, "rss_per_connection_kb": round(per, 2)}


async def run_churn(url: str, accounts: list[Account], duration: float, parallel: int) -> dict[str, Any]:
    cycles = 0
    failures = 0
    deadline = trio.current_time() + duration

    async def loop(account: Account) -> None:
        nonlocal cycles, failures
        while trio.current_time() < deadline:
            try:
                async with open_websocket_url(url) as ws:
                    await ready(ws, account, client=f"churn-{secrets.token_hex(3)}")
                cycles += 1
            except (OSError, HandshakeError, ConnectionClosed, RuntimeError):
                failures += 1

    async with trio.open_nursery() as nursery:
        for i in range(parallel):
            nursery.start_soon(loop, accounts[i % len(accounts)])
    return {"cycles": cycles, "failures": failures, "cycles_per_s": round(cycles / duration, 1)}


# --- orchestration -------------------------------------------------------------------------


def targets(args: Any) -> tuple[list[str], list[int]]:
    """Client URLs (master first) and node pids, from --url/--pid or a node-configs folder."""
    if args.url:
        return list(args.url), list(args.pid or [])
    from pathlib import Path

    from . import wiring
    from .config import load_config
    from .launcher import config_files

    configs = sorted((load_config(f) for f in config_files(Path(args.configs))), key=lambda c: not c.is_master)
    registry = wiring.open_registry(configs[0], start=False)
    try:
        alive = {n.node_id: n.pid for n in registry.nodes() if n.alive}
    finally:
        registry.close()
    return [c.client_url for c in configs], [alive[c.node_id] for c in configs if c.node_id in alive]


async def run_scenario(args: Any) -> dict[str, Any]:
    urls, pids = targets(args)
    prefix = f"b{secrets.token_hex(3)}u"
    stats = Stats()
    cpu_before = cpu_seconds(pids)
    result: dict[str, Any] = {"scenario": args.scenario, "nodes": len(urls), "rate": args.rate or "max"}
    if args.scenario in ("cross-node", "local"):
        if args.scenario == "cross-node" and len(urls) < 2:
            raise SystemExit("bench cross-node needs at least two nodes")
        src, dst = (urls[-2], urls[-1]) if args.scenario == "cross-node" else (urls[0], urls[0])
        accounts = await create_users(src, 2 * args.senders, prefix)
        result.update(await run_pair(src, dst, accounts[:args.senders], accounts[args.senders:], args, pids=pids))
    elif args.scenario == "group":
        members = max(args.members, args.senders + 1)
        accounts = await create_users(urls[0], members, prefix)
        group_id = await _create_group(urls[0], accounts)
        receivers = [(urls[i % len(urls)], a) for i, a in enumerate(accounts[args.senders:], start=args.senders)]
        plan = [(urls[i % len(urls)], accounts[i], f"s{i}", receivers if i == 0 else []) for i in range(args.senders)]
        args.fanout = len(receivers)
        elapsed = await run_messages(plan, "group", lambda i: group_id, args, stats, pids=pids)
        result.update(message_summary(stats, elapsed, args.fanout, args.timeline), members=members)
    elif args.scenario == "connections":
        # Users are made on the first node: password hashing (argon2id, 19 MiB a hash) would
        # leave the measured node's heap grown before the baseline.
        accounts = await create_users(urls[0], max(1, args.connections // 100), prefix)
        node_pids = pids[-1:] if pids else []
        result.update(await run_connections(urls[-1], accounts, args.connections, node_pids))
    else:
        accounts = await create_users(urls[-1], args.senders, prefix)
        result.update(await run_churn(urls[-1], accounts, args.duration or 10, args.senders))
    if "server_cpu_s" in result:  # the message scenarios measured their own window
        return result
    return add_server_cpu(result, cpu_seconds(pids) - cpu_before)


def add_server_cpu(result: dict[str, Any], cpu: float) -> dict[str, Any]:
    """Adds the servers' CPU seconds of a whole run, and per delivered message when there
    were any."""
    result["server_cpu_s"] = round(cpu, 2)
    delivered = result.get("delivered")
    if delivered:
        result["server_cpu_us_per_delivered"] = round(cpu / delivered * 1e6, 1)
    return result


async def _create_group(url: str, accounts: list[Account]) -> str:
    async with open_websocket_url(url) as ws:
        await ready(ws, accounts[0], client="bench-owner")
        await send(ws, "group-create", name="bench", members=[a.user_id for a in accounts[1:]])
        return str((await expect(ws, "group-ok"))["groupId"])


def format_summary(result: dict[str, Any]) -> str:
    return "\n".join(f"{key:>28}: {value}" for key, value in result.items())


def main(args: Any) -> int:
    raise_fd_limit()
    gc.freeze()  # the load generator's own full collections would show as latency
    result = trio.run(run_scenario, args)
    print(json.dumps(result) if args.json else format_summary(result), flush=True)
    return 0
