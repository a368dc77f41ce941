"""Steady cross-node traffic for tests that break something under it, and a probe of full
service: numbered senders on every node, acks counted, deliveries collected (deduplicated by
id), and new logins plus a cross-node round trip retried until they work.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio
from trio_websocket import ConnectionClosed

from ..support import PASSWORD, Client, connect, online
from .harness import DEPT1, DEPT2, MASTER, Cluster, Collector


async def send(client: Client, to: str, cid: str) -> dict[str, Any] | None:
    """Sends one message; its ack, or None if the node refused it (an `error`: not acked)."""
    await client.send("message", cid=cid, chatId=to, type="friend", messageType="text", content=cid)
    while True:
        frame = await client.next_frame()
        if frame["code"] == "ack" and frame["message"]["cid"] == cid:
            return frame["message"]
        if frame["code"] == "error" and frame["message"].get("cid") in (cid, None):
            return None


class Traffic:
    """Numbered senders, each to a user on another node, one message every `every` seconds;
    records what was acked and refused."""

    def __init__(self, pairs: list[tuple[str, Client, Client]], every: float = 0.05) -> None:
        self.pairs = pairs  # (name, sender, recipient)
        self.every = every
        self.acked: dict[str, list[str]] = {name: [] for name, _, _ in pairs}
        self.refused = 0
        self.collectors = {name: Collector(to) for name, _, to in pairs}
        self.stopping = False
        self._senders = len(pairs)
        self._stopped = trio.Event()
        self._acked_one = trio.Event()

    async def run(self, nursery: trio.Nursery) -> None:
        for collector in self.collectors.values():
            nursery.start_soon(collector.run)
        for name, sender, to in self.pairs:
            nursery.start_soon(self._sender, name, sender, to)

    async def _sender(self, name: str, sender: Client, to: Client) -> None:
        assert to.user_id is not None
        try:
            for i in range(1_000_000):
                if self.stopping:
                    return
                ack = await send(sender, to.user_id, f"{name}-{i}")
                if ack is None:
                    self.refused += 1
                else:
                    self.acked[name].append(ack["id"])
                    self._acked_one.set()
                    self._acked_one = trio.Event()
                await trio.sleep(self.every)  # the pace of the traffic, not a wait for anything
        except ConnectionClosed:
            return  # the test failed: its connections close before its nursery
        finally:
            self._senders -= 1
            if not self._senders:
                self._stopped.set()

    async def stop_and_check(self, timeout: float) -> None:
        """Stops the senders (each finishes its message in flight), then waits until every
        acked message arrived, the recipients' readers still running."""
        self.stopping = True
        await self._stopped.wait()
        minted = [i for ids in self.acked.values() for i in ids]
        assert len(set(minted)) == len(minted), "two acked messages got one id"
        await self.all_delivered(timeout)

    def total(self) -> int:
        return sum(len(ids) for ids in self.acked.values())

    async def flowing(self, more: int = 10, timeout: float = 30.0) -> None:
        """Waits until every sender got `more` acks beyond what it has now (the traffic flows
        on every pair); fails after `timeout`."""
        wanted = {name: len(ids) + more for name, ids in self.acked.items()}
        with trio.fail_after(timeout):
            while any(len(self.acked[name]) < n for name, n in wanted.items()):
                await self._acked_one.wait()

    async def all_delivered(self, timeout: float) -> None:
        for name, ids in self.acked.items():
            collector = self.collectors[name]
            await collector.wait_for(list(ids), timeout)
            missing = [i for i in ids if i not in collector.arrived]
            assert not missing, f"{name}: {len(missing)} of {len(ids)} acked messages never arrived: {missing[:5]}"


async def traffic_pairs(stack: contextlib.AsyncExitStack, cluster: Cluster, tag: str,
                        pairs: list[tuple[str, str, str]]) -> Traffic:
    """Traffic between new users: one (name, sender's node, recipient's node) per pair."""
    clients = []
    for name, src, dst in pairs:
        sender = await online(stack, cluster.nodes[src].url, f"s{name}-{tag}"[:32])
        to = await online(stack, cluster.nodes[dst].url, f"r{name}-{tag}"[:32])
        clients.append((name, sender, to))
    return Traffic(clients)


THREE_NODES = [("d1-to-d2", DEPT1, DEPT2), ("d2-to-d1", DEPT2, DEPT1), ("m-to-d1", MASTER, DEPT1)]


@contextlib.asynccontextmanager
async def flowing_traffic(make: Callable[[contextlib.AsyncExitStack], Awaitable[Traffic]],
                          check_timeout: float = 30.0) -> AsyncIterator[Traffic]:
    """Runs the Traffic `make` builds (its clients closed with the block) and enters once it
    flows on every pair; a block that ends normally then waits until it flows (again) on every
    pair, stops it and checks that every acked message arrived (`stop_and_check`)."""
    async with contextlib.AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        traffic = await make(stack)
        await traffic.run(nursery)
        await traffic.flowing()
        yield traffic
        await traffic.flowing()
        await traffic.stop_and_check(check_timeout)
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def bad_day(cluster: Cluster, tag: str, check_timeout: float = 20.0) -> AsyncIterator[tuple[Traffic, Prober]]:
    """`flowing_traffic` on THREE_NODES and a Prober whose users are registered: what a test
    that breaks Redis under traffic starts with."""
    async with flowing_traffic(lambda stack: traffic_pairs(stack, cluster, tag, THREE_NODES),
                               check_timeout) as traffic:
        prober = Prober(cluster, tag)
        await prober.register()
        yield traffic, prober


class Prober:
    """Users registered beforehand on dept-2, dept-1 and the master; a probe logs each in anew
    (new sessions) and sends a message from dept-1 to dept-2 and back."""

    def __init__(self, cluster: Cluster, tag: str) -> None:
        self.cluster = cluster
        self.names = {node: f"probe-{tag}-{node}"[:32] for node in (DEPT2, DEPT1, MASTER)}

    async def register(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for node, name in self.names.items():
                await online(stack, self.cluster.nodes[node].url, name)

    async def serving_again(self, since: float, bound: float) -> float:
        """Retries probes until one succeeds (returns the seconds from `since` to its end) or
        `bound` seconds after `since` have passed (fails)."""
        last: BaseException | None = None
        while time.monotonic() < since + bound:
            try:
                with trio.fail_after(max(0.5, since + bound - time.monotonic())):
                    await self.probe(secrets.token_hex(4))  # a new cid: a repeated one is deduplicated
                return time.monotonic() - since
            except (AssertionError, trio.TooSlowError) as exc:
                last = exc
            await trio.sleep(0.1)
        raise AssertionError(f"not fully serving {bound} s after Redis came back (last probe: {last!r})")

    async def probe(self, attempt: str) -> None:
        async with contextlib.AsyncExitStack() as stack:
            clients = {}
            for node, name in self.names.items():  # a new login (a new session) on every node
                client = clients[node] = await stack.enter_async_context(connect(self.cluster.nodes[node].url))
                await client.send("login", username=name, password=PASSWORD)
                login = await first_of(client, "login-ok")
                client.user_id = login["userId"]
                await client.send("ready", token=login["token"], client="web")
                await first_of(client, "ready-ok")
                await first_of(client, "sync-done")
            there, here = clients[DEPT2], clients[DEPT1]
            assert there.user_id is not None and here.user_id is not None
            ack = await send(here, there.user_id, f"probe-{attempt}")
            assert ack is not None, "the probe message was refused"
            assert (await first_of(there, "message"))["id"] == ack["id"]
            back = await send(there, here.user_id, f"back-{attempt}")
            assert back is not None, "the answer was refused"
            assert (await first_of(here, "message"))["id"] == back["id"]


async def first_of(client: Client, code: str) -> dict[str, Any]:
    """The next frame with `code` (its message); an `error` first fails the probe."""
    while True:
        frame = await client.next_frame()
        if frame["code"] == code:
            return dict(frame["message"])
        assert frame["code"] != "error", f"{code}: {frame}"


def assert_nobody_stopped(cluster: Cluster) -> None:
    """Every node still runs and none wanted to stop for a lost lease."""
    cluster.check_running()
    for node in cluster.nodes.values():
        log = node.log_text()
        assert "LeaseLost" not in log and "lost its lock" not in log, f"{node.name} wanted to stop:\n{node.log_tail()}"
