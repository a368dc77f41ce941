"""The node's lease in Redis: node-id lock, worker id, registration, heartbeats.

Rules:
- A node starts only if it gets the lock on its node id (`NodeIdTaken` otherwise). A lock left
  by a crashed process of this host (its pid no longer runs) is taken over at once, so a node
  restarted after kill -9 need not wait for the TTL.
- Every HEARTBEAT_S the lock, the worker lease and the registration are renewed; the TTL is
  LEASE_TTL_S, so a node that stops heartbeating is dead within that time.
- A master also holds the master lock: one master per cluster.
- Routes left under this node id by a crashed earlier process are purged at start.
- If the lock turns out to be someone else's (`LeaseLost`), the node stops: two processes
  must never serve one node id or mint ids with one worker id.
- Redis being down for a while is logged and retried; the lease may lapse meanwhile.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable

import structlog
import trio

from ..errors import StoreUnavailable, VimError
from ..ports import NodeInfo, Registry
from .blocking import BlockingRunner

log = structlog.get_logger()
HEARTBEAT_S = 2.0
LEASE_TTL_S = 10


class NodeIdTaken(VimError):
    """Another live process holds this node id."""


class LeaseLost(VimError):
    """Another process took this node's lock."""


def owner_is_dead_here(owner: str) -> bool:
    """Whether an owner token names a process of this host that no longer runs (so its lock,
    left by a crash, may be taken over at once instead of after the TTL)."""
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it runs, as another user
    return False


class Lease:
    def __init__(self, registry: Registry, runner: BlockingRunner, describe: Callable[[], NodeInfo],
                 master: bool = False) -> None:
        self.registry = registry
        self.master = master
        self.runner = runner
        self.describe = describe  # () -> NodeInfo, the node's current description
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(8)}"
        self.worker: int | None = None
        self.last_beat_ms = 0

    async def acquire(self) -> int:
        """Takes the node-id lock and a worker id; returns the worker id."""
        info: NodeInfo = self.describe()
        dead = await self.runner(self.registry.node_owner, info.node_id)
        dead = dead if dead and owner_is_dead_here(dead) else None
        if not await self.runner(self.registry.acquire_node, info, self.owner, LEASE_TTL_S, dead):
            raise NodeIdTaken(f"node id {info.node_id!r} is held by another live process")
        if dead:
            log.warning("lease_taken_over", dead_owner=dead)  # a crashed process on this host
        if self.master:
            await self._acquire_master(info.node_id)
        stale = await self.runner(self.registry.purge_routes, info.node_id)
        if stale:
            log.warning("stale_routes_purged", routes=stale)  # left by a crashed earlier process
        self.worker = await self.runner(self.registry.lease_worker, info.node_id, self.owner, LEASE_TTL_S)
        log.info("lease_acquired", worker=self.worker)
        return self.worker

    async def _acquire_master(self, node_id: str) -> None:
        holder = await self.runner(self.registry.master_holder)
        dead = holder[1] if holder and holder[0] == node_id and owner_is_dead_here(holder[1]) else None
        if not await self.runner(self.registry.acquire_master, node_id, self.owner, LEASE_TTL_S, dead):
            await self.runner(self.registry.release_node, node_id, self.owner)
            holder = await self.runner(self.registry.master_holder)
            raise NodeIdTaken(f"the master role is held by live node {holder[0] if holder else '?'!r}")

    async def beat(self) -> bool:
        """One heartbeat; False if Redis did not answer. Raises LeaseLost."""
        info = self.describe()
        try:
            renewed = await self.runner(self.registry.heartbeat, info, self.owner, LEASE_TTL_S)
        except StoreUnavailable as exc:
            log.warning("heartbeat_failed", error=str(exc))
            return False
        if not renewed:
            raise LeaseLost(f"node {info.node_id} lost its lock in Redis to another process")
        self.last_beat_ms = info.heartbeat_at
        return True

    async def run(self) -> None:
        while True:
            await trio.sleep(HEARTBEAT_S)
            await self.beat()

    async def release(self) -> None:
        info = self.describe()
        try:
            await self.runner(self.registry.release_node, info.node_id, self.owner)
        except StoreUnavailable as exc:
            log.warning("lease_release_failed", error=str(exc))
