"""The node's lease in Redis: node-id lock, worker id, registration, heartbeats.

Rules:
- A node starts only if it gets the lock on its node id (`NodeIdTaken` otherwise). A lock left
  by a crashed process of this host (its pid no longer runs) is taken over at once, so a node
  restarted after kill -9 need not wait for the TTL.
- Every lease_heartbeat_s the lock, the worker lease and the registration are renewed; the TTL
  is lease_ttl_s (the node's Tunables), so a node that stops heartbeating is dead within that time.
- The master lease is not here: master-capable nodes hold or wait for it in `mastership`
  (core/mastership.py), with its own shorter TTL; a second master-capable node starts as a
  standby instead of failing.
- Routes left under this node id by a crashed earlier process are purged at start.
- A key that is simply missing (Redis lost its data: a crash, a flush, a failover to an empty
  replica) is re-taken by the next heartbeat, and the node's live routes are published again
  (`run`'s `republish`). So are they after any stretch of lease_hold_s without a confirmed
  heartbeat (a cut from Redis, a hung process), whatever the next answer says: the lock may
  have lapsed meanwhile and the master purged the routes, and the beat that re-took the lock
  may be one whose answer never came (a request sent into the cut is delivered by TCP once the
  network is back, after its socket timed out), leaving the next beat to find it RENEWED. They
  are published at the next beat too: a master that read the node as dead just before may
  purge them after the first publishing. Only a key held by another owner is a loss (core/lease.py): the node
  id (`LeaseLost`: the node stops, two processes must never serve one node id), or the worker id (the node takes another one and mints with it once it is safe).
- Redis being down for a while is logged and retried; the node keeps running. It mints ids
  only while its worker id is confirmed (`MintGate`): `LeasedIds.next_id` waits for that.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Awaitable, Callable

import structlog
import trio

from ..core.lease import Generation, KeyState, MintGate, decide_beat
from ..errors import StoreUnavailable, VimError
from ..ids import IdGenerator, worker_of
from ..ports import NodeInfo, Registry
from ..sysinfo import pid_alive
from ..tunables import DEFAULTS, Tunables
from .blocking import BlockingRunner

log = structlog.get_logger()
__all__ = ["LeaseLost", "Lease", "LeasedIds", "NodeIdTaken"]


class NodeIdTaken(VimError):
    """Another live process holds this node id."""


class LeaseLost(VimError):
    """Another process took this node's lock."""


# This process among the processes that had its pid on this host: a container's node is always
# pid 1 under the same host name, so a restarted one must tell its crashed predecessor from itself.
PROCESS_TOKEN = secrets.token_hex(4)


def owner_token() -> str:
    """A lock owner naming this process: host/pid/PROCESS_TOKEN.random."""
    return f"{socket.gethostname()}/{os.getpid()}/{PROCESS_TOKEN}.{secrets.token_hex(8)}"


def owner_is_dead_here(owner: str) -> bool:
    """Whether an owner token names a process of this host that no longer runs (so its lock,
    left by a crash, may be taken over at once instead of after the TTL): its pid is not
    running, or it is ours but the token is another process's (a container restarted)."""
    host, _, rest = owner.partition("/")
    pid_text, _, token = rest.partition("/")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    if int(pid_text) == os.getpid():
        return not token.startswith(f"{PROCESS_TOKEN}.")
    return not pid_alive(int(pid_text))


class Lease:
    def __init__(self, registry: Registry, runner: BlockingRunner, describe: Callable[[], NodeInfo],
                 tunables: Tunables = DEFAULTS) -> None:
        self.registry = registry
        self.tunables = tunables
        self.ttl_s = tunables.lease_ttl_s
        self.beat_s = tunables.lease_heartbeat_s
        self.runner = runner
        self.describe = describe  # () -> NodeInfo, the node's current description
        self.owner = owner_token()
        self.gate = MintGate(hold_s=tunables.lease_hold_s, settle_s=tunables.lease_settle_s)
        self.generation: str | None = None  # the Redis generation this node last saw
        self.last_beat_ms = 0
        self._confirmed_sent: float | None = None  # when the last answered beat (or take) was sent
        self._republish_beats = 0  # beats left that publish the routes again after a lapse
        self._changed = trio.Event()
        self._soon = trio.Event()  # set: beat now, not at the end of the interval

    @property
    def worker(self) -> int | None:
        return self.gate.worker

    async def acquire(self) -> int:
        """Takes the node-id lock and a worker id; returns the worker id."""
        info: NodeInfo = self.describe()
        self._confirmed_sent = trio.current_time()
        dead = await self.runner(self.registry.node_owner, info.node_id)
        dead = dead if dead and owner_is_dead_here(dead) else None
        if not await self.runner(self.registry.acquire_node, info, self.owner, self.ttl_s, dead):
            raise NodeIdTaken(f"node id {info.node_id!r} is held by another live process")
        if dead:
            log.warning("lease_taken_over", dead_owner=dead)  # a crashed process on this host
        stale = await self.runner(self.registry.purge_routes, info.node_id)
        if stale:
            log.warning("stale_routes_purged", routes=stale)  # left by a crashed earlier process
        return await self._take_worker()

    async def settle(self) -> None:
        """At start, before serving: waits, heartbeating, until the worker id is safe to mint
        with (a fresh take in a young Redis generation, e.g. the first start on a new Redis).
        A node that serves at once would hold its clients' first requests that long instead."""
        announced = False
        while (wait := self.gate.wait_s(trio.current_time())) != 0:
            if wait is not None and not announced:
                log.info("worker_id_settling", worker=self.gate.worker, wait_s=round(wait, 3),
                         reason="the Redis generation is young: holders from before it may still mint")
                announced = True
            await trio.sleep(min(wait if wait is not None else self.beat_s, self.beat_s))
            await self.beat()

    async def _take_worker(self) -> int:
        sent = trio.current_time()
        worker, generation = await self.runner(self.registry.lease_worker, self.describe().node_id,
                                               self.owner, self.ttl_s)
        self._took(worker, generation, sent)
        wait = self.gate.wait_s(trio.current_time())
        log.info("lease_acquired", worker=worker, generation=generation.token,
                 generation_age_s=round(generation.age_s, 3), mint_wait_s=round(wait or 0.0, 3))
        return worker

    def _took(self, worker: int, generation: Generation, sent: float) -> None:
        self.gate.took(worker, generation, sent, trio.current_time())
        self.generation = generation.token
        self._wake()

    async def beat(self, republish: Callable[[], Awaitable[int]] | None = None) -> bool:
        """One heartbeat; False if Redis did not answer. Raises LeaseLost."""
        info = self.describe()
        sent = trio.current_time()
        try:
            report = await self.runner(self.registry.heartbeat, info, self.owner, self.ttl_s, self.gate.worker)
        except StoreUnavailable as exc:
            log.warning("heartbeat_failed", error=str(exc), worker=self.gate.worker)
            return False
        decision = decide_beat(report, self.generation)
        self._note_lapse(sent)
        if decision.lost:
            raise LeaseLost(f"node {info.node_id}: {decision.lost} in Redis")
        if decision.reset:
            log.warning("redis_generation_changed", old=self.generation, new=report.generation.token,
                        node=report.node.value, worker=report.worker.value)
        if report.worker is KeyState.RETAKEN and self.gate.worker is not None:
            self._took(self.gate.worker, report.generation, sent)
        elif report.worker is KeyState.RENEWED:
            self.gate.renewed(sent)
        self.generation = report.generation.token
        if report.node is KeyState.RETAKEN:
            log.warning("lease_retaken", reason="the node lock was missing in Redis")
        if decision.worker_lost:
            log.warning("worker_id_lost", worker=self.gate.worker, reason="another owner holds it")
            self.gate.lost()
        if self.gate.worker is None:
            await self._retake_worker()
        if (decision.republish or self._republish_beats) and republish is not None:
            self._republish_beats = max(0, self._republish_beats - 1)
            await self._republish(republish)
        self.last_beat_ms = info.heartbeat_at
        self._wake()
        return True

    def _note_lapse(self, sent: float) -> None:
        """An answered beat sent at `sent`: after lease_hold_s or more without one, the
        routes are published again at this beat and the next (the module's docstring)."""
        unconfirmed = trio.current_time() - (self._confirmed_sent if self._confirmed_sent is not None else sent)
        self._confirmed_sent = sent
        if unconfirmed >= self.tunables.lease_hold_s:
            self._republish_beats = 2
            log.warning("lease_lapsed", unconfirmed_s=round(unconfirmed, 1),
                        reason="no heartbeat confirmed for that long: Redis may have dropped this node's "
                               "keys and the master its routes, which are published again")

    async def _retake_worker(self) -> None:
        try:
            await self._take_worker()
        except StoreUnavailable as exc:
            log.warning("worker_take_failed", error=str(exc))

    async def _republish(self, republish: Callable[[], Awaitable[int]]) -> None:
        try:
            count = await republish()
        except StoreUnavailable as exc:
            log.warning("routes_republish_failed", error=str(exc))
            return
        log.info("routes_republished", routes=count)

    async def run(self, republish: Callable[[], Awaitable[int]] | None = None) -> None:
        """Heartbeats until cancelled; `republish` publishes the node's live routes again
        (returns how many) when Redis has forgotten them."""
        while True:
            with trio.move_on_after(self.beat_s):
                await self._soon.wait()
            self._soon = trio.Event()
            await self.beat(republish)

    def beat_soon(self) -> None:
        """The next heartbeat now, not at the end of the interval: the master refused this node
        as not registered (Redis restarted empty and lost its lock), and until a heartbeat
        takes the lock again the node cannot link, so its senders' acked packets wait in its
        outbox, where a crash would lose their relay (docs/operations.md, Redis)."""
        self._soon.set()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        """Returns at the next change of the lease (a heartbeat or a worker take)."""
        await self._changed.wait()

    async def release(self) -> None:
        info = self.describe()
        try:
            await self.runner(self.registry.release_node, info.node_id, self.owner, self.gate.worker)
        except StoreUnavailable as exc:
            log.warning("lease_release_failed", error=str(exc))


class LeasedIds:
    """Snowflake ids minted with the lease's worker id, only while it is safe (MintGate)."""

    def __init__(self, lease: Lease, clock_ms: Callable[[], int]) -> None:
        self.lease = lease
        self.clock_ms = clock_ms
        # longest a mint waits for a safe worker id: a fresh take's settling, then one heartbeat
        self.wait_s = lease.tunables.lease_settle_s + lease.tunables.lease_heartbeat_s
        self._generators: dict[int, IdGenerator] = {}

    async def next_id(self) -> int:
        """Waits (at most `wait_s`) until the worker id is safe to mint with; raises
        StoreUnavailable if it does not get there (Redis unreachable)."""
        if self.lease.gate.wait_s(trio.current_time()) != 0:
            await self._wait_until_safe()  # the usual case needs no wait (and no cancel scope)
        worker = self.lease.gate.worker
        assert worker is not None  # wait_s() == 0 means a worker id is held
        generator = self._generators.get(worker)
        if generator is None:
            generator = self._generators[worker] = IdGenerator(worker, self.clock_ms)
        return generator.next_id()

    def minted_here(self, snowflake: int) -> bool:
        """Whether this process minted `snowflake` (with one of the worker ids it minted with)."""
        return worker_of(snowflake) in self._generators

    async def _wait_until_safe(self) -> None:
        with trio.move_on_after(self.wait_s):
            while (wait := self.lease.gate.wait_s(trio.current_time())) != 0:
                if wait is None:
                    await self.lease.changed()
                else:
                    await trio.sleep(wait)
            return
        raise StoreUnavailable(f"no confirmed worker id for {self.wait_s:.0f} s: Redis is unreachable")
