"""The retention purge: one node of the cluster at a time, in bounded batches, off the hot path.

Rules:
- Every node runs `Purger.run`; at the purge hour each tries the cluster's `purge` duty lock
  in Redis, and only the holder purges (core/retention.py says when and what).
- The purge runs in worker threads through the node's message runner (trio.to_thread with
  the store's CapacityLimiter, which is FIFO): on SQLite a live write queues behind at most
  one purge batch (a separate connection would make it wait on SQLite's busy backoff,
  which sleeps up to 100 ms a try); on MongoDB the purge takes one of the runner's slots.
- Each batch is one short transaction of at most `purge-batch` rows; after each, the purge
  rests as long as the batch took (it holds a store's write lock at most half the time), and
  renews the lock. A lost lock stops the run (another node took over).
- A run that fails (a store or Redis outage, a crash) is not stamped done, so the next check,
  on this or any node, runs again and carries on where the last batch ended.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..config import MessageConfig
from ..core.retention import PurgePlan, due_day, plan
from ..errors import StoreUnavailable
from ..lifecycle_ports import DutyLock, MessageRetention
from ..model import MessageId
from ..tunables import DEFAULTS
from .blocking import BlockingRunner
from .heartbeat import owner_token

log = structlog.get_logger()
DUTY = "purge"


class PurgeLost(Exception):
    """The purge lock lapsed or was taken by another node during a run."""


class PurgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.removed = Counter("vim_purge_removed", "rows removed by the retention purge", ["kind"],
                               registry=registry)
        self.last_run = Gauge("vim_purge_last_run_timestamp_seconds",
                              "when this node last finished a retention purge (unix time)", registry=registry)
        self.duration = Gauge("vim_purge_last_duration_seconds",
                              "how long this node's last finished retention purge took", registry=registry)


@attrs.frozen
class PurgeReport:
    messages: int
    pending: int
    logs: tuple[str, ...]
    seconds: float


def purge_enabled(settings: MessageConfig) -> bool:
    return settings.retention_days is not None or settings.offline_retention_days is not None


@attrs.define
class Purger:
    store: MessageRetention
    duties: DutyLock
    store_runner: BlockingRunner  # the node's message runner (an operator's purge: its own)
    redis: BlockingRunner
    settings: MessageConfig
    clock_ms: Callable[[], int]
    metrics: PurgeMetrics | None = None
    owner: str = attrs.Factory(owner_token)
    lock_ttl_s: int = DEFAULTS.retention_lock_ttl_s  # the purge duty's lock TTL in Redis
    check_s: float = DEFAULTS.retention_check_s  # how often the purge checks whether it is due

    async def run(self) -> None:
        """Checks every `check_s`; a run that failed is logged and retried at the next."""
        while True:
            try:
                await self.check()
            except (StoreUnavailable, PurgeLost) as exc:
                log.warning("purge_interrupted", error=str(exc), owner=self.owner)
            except Exception:  # noqa: BLE001 - the purge task's bulkhead: log, retry at the next check
                log.exception("purge_failed", owner=self.owner)
            await trio.sleep(self.check_s)

    async def check(self, force: bool = False) -> PurgeReport | None:
        """Runs today's purge if it is due (or `force`) and this node gets the lock."""
        now = self.clock_ms()
        last = await self.redis(self.duties.duty_done, DUTY)
        day = due_day(now, 0 if force else self.settings.purge_hour, None if force else last)
        if day is None:
            return None
        if not await self.redis(self.duties.acquire_duty, DUTY, self.owner, self.lock_ttl_s):
            log.info("purge_skipped", reason="another node holds the purge lock")
            return None
        try:
            report = await self.purge(plan(now, self.settings.retention_days, self.settings.offline_retention_days))
            await self.redis(self.duties.mark_duty_done, DUTY, day)
        finally:
            with trio.CancelScope(shield=True):
                await self.redis(self.duties.release_duty, DUTY, self.owner)
        return report

    async def purge(self, what: PurgePlan) -> PurgeReport:
        """Carries out one plan, batch by batch; the caller holds the lock."""
        started = trio.current_time()
        log.info("purge_started", messages_before=what.messages_before, pending_before=what.pending_before)
        messages = pending = 0
        if what.messages_before is not None:
            messages = await self._batches("messages", self.store.purge_messages, what.messages_before)
        if what.pending_before is not None:
            pending = await self._batches("pending", self.store.purge_pending, what.pending_before)
        logs: list[str] = []
        if what.logs_before_day is not None:
            logs = await self.store_runner(self.store.drop_frame_logs, what.logs_before_day)
        seconds = trio.current_time() - started
        if self.metrics is not None:
            self.metrics.removed.labels(kind="logs").inc(len(logs))
            self.metrics.last_run.set(self.clock_ms() / 1000)
            self.metrics.duration.set(seconds)
        log.info("purge_finished", messages=messages, pending=pending, logs=len(logs), seconds=round(seconds, 3))
        return PurgeReport(messages, pending, tuple(logs), seconds)

    async def _batches(self, kind: str, step: Callable[[MessageId, int], int], before: MessageId) -> int:
        total = 0
        while True:
            began = trio.current_time()
            removed = await self.store_runner(step, before, self.settings.purge_batch)
            total += removed
            if self.metrics is not None:
                self.metrics.removed.labels(kind=kind).inc(removed)
            if removed == 0:
                return total
            if not await self.redis(self.duties.renew_duty, DUTY, self.owner, self.lock_ttl_s):
                raise PurgeLost(f"the purge lock was lost after {total} {kind} rows")
            await trio.sleep(trio.current_time() - began)  # rest as long as the batch took

