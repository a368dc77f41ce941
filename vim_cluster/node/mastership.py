"""The master lease of a master-capable node: claim it as a standby, renew it as the active
master, and stop relaying at the deadline (core/mastership.py has the rules; the timings are
the node's Tunables, master_*).

`Mastership.run` holds the loop; the node's role switching (app.py) waits on `changed()` and
reads `relaying`: True only while this node holds the lease and its RelayGate allows. A
watchdog revokes the right at the deadline even while a renewal hangs in a cut-off Redis.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..core.mastership import (
    Fence,
    MasterView,
    RelayGate,
    Renewal,
    Role,
)
from ..errors import StoreUnavailable
from ..ports import Registry
from ..tunables import DEFAULTS, Tunables
from .blocking import BlockingRunner
from .heartbeat import owner_is_dead_here

log = structlog.get_logger()


class MasterMetrics:
    """On every node: a slave counts fenced frames and shows the epoch it knows."""

    def __init__(self, registry: CollectorRegistry, fence: Fence) -> None:
        self.takeovers = Counter("vim_master_takeovers", "times this node took the master lease (became the "
                                 "active master)", registry=registry)
        self.fenced = Counter("vim_forward_fenced_frames", "forward frames refused for a stale fencing epoch",
                              registry=registry)
        self.epoch = Gauge("vim_master_epoch", "the newest master epoch this node knows (its own while active)",
                           registry=registry)
        self.active = Gauge("vim_master_active", "1 while this node is the active master and relays",
                            registry=registry)
        self.epoch.set_function(lambda: fence.known)


@attrs.define(eq=False)
class Mastership:
    registry: Registry
    runner: BlockingRunner
    node_id: str
    owner: str  # this process, as the lease names it (host/pid/node)
    forward_url: Callable[[], str]  # what the lease publishes
    fence: Fence
    metrics: MasterMetrics
    tunables: Tunables = DEFAULTS
    holding: bool = False  # we hold the lease (maybe past the relay deadline)
    epoch: int = 0  # our epoch while holding
    gate: RelayGate = attrs.Factory(lambda self: RelayGate(relay_s=self.tunables.master_relay_s), takes_self=True)
    fenced_at: float | None = None  # when we last stopped relaying (monotonic)
    redis_lost_at: float | None = None  # a standby's last claim attempt that Redis did not answer
    data_lost_seen: bool = False  # a standby found Redis without any master after knowing one (its grace began)
    _changed: trio.Event = attrs.Factory(trio.Event)

    @property
    def ttl_ms(self) -> int:
        return int(self.tunables.master_ttl_s * 1000)

    @property
    def relaying(self) -> bool:
        return self.holding and self.gate.may_relay(trio.current_time())

    @property
    def role(self) -> Role:
        return Role.ACTIVE if self.holding else Role.STANDBY

    async def changed(self) -> None:
        """Returns at the next change of `relaying` or of the epoch."""
        await self._changed.wait()

    def _wake(self) -> None:
        self.metrics.active.set(1 if self.relaying else 0)
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watchdog)
            while True:
                if self.holding:  # after a failed renewal, try again soon (Redis may be back empty)
                    sent = trio.current_time()
                    if await self._renew():
                        # The next one renew_s after this one was SENT: the late answer to a
                        # renewal sent into a network cut sets a deadline near at hand, and a
                        # renewal renew_s after it came would miss it (the relay stopped twice).
                        await trio.sleep_until(sent + self.tunables.master_renew_s)
                    else:
                        await trio.sleep(self.tunables.master_claim_poll_s)
                else:
                    await self.try_claim()
                    await trio.sleep(0 if self.holding else self.tunables.master_claim_poll_s)

    async def try_claim(self) -> None:
        """One attempt to take the lease (a standby's poll)."""
        sent = trio.current_time()
        try:
            view = await self.runner(self.registry.active_master)
            # This node id's own process that died on this host (kill -9, then a restart) holds
            # nothing any more: its lease is taken over at once, like its node lock (heartbeat.py).
            dead = view.owner if view and view.node_id == self.node_id and view.owner \
                and owner_is_dead_here(view.owner) else None
            if view is not None:
                self.fence.learn(view.epoch)
                self.data_lost_seen = False
            else:
                if self.fence.known and not self.data_lost_seen:
                    # No master at all in a Redis where one was: it lost its data (a flush, a restart
                    # or failover we did not see fail between two polls). As after an outage we saw.
                    self.data_lost_seen = True
                    self.redis_lost_at = sent
                if self._in_retake_grace(sent):
                    return
            epoch = await self.runner(self.registry.claim_master, self.node_id, self.owner, self.forward_url(),
                                      self.ttl_ms, self.fence.known, dead)
        except StoreUnavailable as exc:
            log.debug("master_claim_failed", error=str(exc))
            self.redis_lost_at = trio.current_time()
            return
        if epoch is None:
            return
        self.holding, self.epoch = True, epoch
        self.fence.learn(epoch)
        self.gate.confirmed(sent)
        self.metrics.takeovers.inc()
        # The first master of a cluster (epoch 1) takes over from nobody: not worth a warning.
        (log.info if epoch == 1 else log.warning)("master_takeover", epoch=epoch, forward_url=self.forward_url())
        self._wake()

    def _in_retake_grace(self, now: float) -> bool:
        """Whether a missing lease is left to the master that held it. A standby that could not
        reach Redis, or finds it without the master it knew (its data lost), lets
        master_retake_grace_s pass after Redis answers again before it claims a
        lease it finds missing: the lease may be missing only because Redis restarted empty, and
        the active master (which retries its renewal every master_claim_poll_s meanwhile) takes it
        again in place; a failover for every Redis restart would cost a relay switch each time."""
        if self.redis_lost_at is None:
            return False
        if now - self.redis_lost_at < self.tunables.master_retake_grace_s:
            log.debug("master_claim_deferred", why="Redis was away: the active master retakes its lease first")
            return True
        self.redis_lost_at = None
        return False

    async def _renew(self) -> bool:
        """One renewal; False if Redis did not answer."""
        sent = trio.current_time()
        try:
            renewal = await self.runner(self.registry.renew_master, self.node_id, self.owner, self.epoch, self.ttl_ms)
        except StoreUnavailable as exc:
            log.warning("master_renew_failed", error=str(exc), epoch=self.epoch,
                        relay_left_s=round(self.gate.deadline() - trio.current_time(), 3))
            return False
        if renewal is Renewal.RENEWED:
            was = self.relaying
            self.gate.confirmed(sent)
            if not was and self.relaying:
                log.warning("master_relaying_again", epoch=self.epoch)
                self._wake()
            return True
        if renewal is Renewal.MISSING and await self._retake():
            return True
        self.step_down(f"the master lease is {renewal.value} in Redis")
        return True

    async def _retake(self) -> bool:
        """Our lease is missing (it lapsed while Redis was away, or Redis lost its data): no one
        holds it, so we take it again at once, with a new epoch, and keep our relay."""
        sent = trio.current_time()
        try:
            epoch = await self.runner(self.registry.claim_master, self.node_id, self.owner, self.forward_url(),
                                      self.ttl_ms, max(self.fence.known, self.epoch))
        except StoreUnavailable as exc:
            log.warning("master_retake_failed", error=str(exc))
            return True  # still ours as far as we know; the deadline stops the relaying meanwhile
        if epoch is None:
            return False
        log.warning("master_lease_retaken", old_epoch=self.epoch, epoch=epoch)
        self.epoch = epoch
        self.fence.learn(epoch)
        self.gate.confirmed(sent)
        self.metrics.takeovers.inc()
        self._wake()
        return True

    def step_down(self, why: str) -> None:
        """Stop being the master at once (a missing lease is claimed again, with a new epoch)."""
        if not self.holding:
            return
        log.warning("master_stepped_down", epoch=self.epoch, why=why)
        self.holding = False
        self.gate.revoke()
        self.fenced_at = trio.current_time()
        self._wake()

    async def _watchdog(self) -> None:
        """Revokes the right to relay at the deadline, whatever the renewal is doing."""
        while True:
            if self.holding and self.gate.may_relay(trio.current_time()):
                await trio.sleep_until(self.gate.deadline())
                if self.holding and not self.gate.may_relay(trio.current_time()):
                    self.fenced_at = trio.current_time()
                    log.warning("master_relay_deadline", epoch=self.epoch,
                                why="no confirmed renewal of the master lease in time: stop relaying "
                                    "before the lease can lapse")
                    self._wake()
            else:
                await self.changed()

    async def release(self) -> None:
        """On stop: give the lease up so that a standby takes over at once."""
        if not self.holding:
            return
        self.holding = False
        self.gate.revoke()
        try:
            await self.runner(self.registry.release_master, self.node_id, self.owner)
        except StoreUnavailable as exc:
            log.warning("master_release_failed", error=str(exc))


async def read_master(registry: Registry, runner: BlockingRunner) -> MasterView | None:
    try:
        return await runner(registry.active_master)
    except StoreUnavailable as exc:
        log.debug("master_lookup_failed", error=str(exc))
        return None
