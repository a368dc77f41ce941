"""Run blocking adapter calls in worker threads, a bounded number at a time per backend.

Each BlockingRunner keeps its own worker threads (at most `limit`, started as calls need them,
ended after `idle_s` without work) that take jobs from one queue and hand each result back to the trio task that waits for it.
This costs about half the CPU of `trio.to_thread.run_sync` per call (a queue put and one
wake-up each way, no capacity limiter, thread cache or context copy: 130 → 70 µs measured
here), which is what a group commit or a directory read pays per batch (issue 12).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

import attrs
import outcome
import structlog
import trio

T = TypeVar("T")
log = structlog.get_logger()

_Job = tuple[Callable[..., Any], tuple[Any, ...], trio.lowlevel.Task, trio.lowlevel.TrioToken]
IDLE_S = 10.0  # a worker thread idle this long ends (as trio's own thread cache does)


class BlockingRunner:
    """`await runner(fn, *args)` runs fn in a worker thread; at most `limit` at once, the
    rest wait in order. A thread idle for `idle_s` ends; calls start threads as they need them.

    Not abandoned on cancel: a write that started (or was queued) is always waited for, so the
    caller never acts on a write whose outcome it does not know.
    """

    def __init__(self, name: str, limit: int, idle_s: float = IDLE_S) -> None:
        self.name = name
        self.limit = limit
        self.idle_s = idle_s
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the thread list, against threads that end while idle
        self._threads: list[threading.Thread] = []
        self._busy = 0  # calls given and not yet reported back
        self._probe: _Probe | None = None  # the health probe in flight

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        job = (fn, args, trio.lowlevel.current_task(), trio.lowlevel.current_trio_token())
        with self._lock:
            if self._busy >= len(self._threads) and len(self._threads) < self.limit:
                thread = threading.Thread(target=self._work, name=f"vim-{self.name}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._busy += 1
            self._jobs.put(job)
        del job
        try:
            result: T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        finally:
            with self._lock:
                self._busy -= 1
        return result

    def threads(self) -> int:
        """Worker threads alive (idle or not)."""
        return len(self._threads)

    def _work(self) -> None:
        while True:
            try:
                fn, args, task, token = self._jobs.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():  # a call queues under the lock: none is left behind
                        self._threads.remove(threading.current_thread())
                        return
                continue
            result = outcome.capture(fn, *args)
            del fn, args  # no reference to the call's arguments while idle
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:  # cannot happen: the task waits, uncancellable
                log.error("blocking_result_undelivered", runner=self.name)
            del task, result

    async def probe(self, fn: Callable[..., T], *args: Any) -> T:
        """A read for a health check: in a thread outside the limit (a backend that hangs fills
        the limit first) and left behind on cancel, so the check's timeout holds however long
        the backend's socket waits. One probe at a time: a probe asked while one is still out
        waits for that one's outcome (within its own timeout) instead of starting a thread, so
        no thread piles up during an outage and checks that overlap (a load balancer's
        /healthz and the dashboard's /stats.json) all get the backend's answer."""
        shared = self._probe
        if shared is None:
            shared = self._probe = _Probe()
            token = trio.lowlevel.current_trio_token()

            def deliver(result: outcome.Outcome[Any]) -> None:  # in the probe's thread
                def finish() -> None:
                    if isinstance(result, outcome.Error):
                        shared.error = result.error
                    elif isinstance(result, outcome.Value):
                        shared.value = result.value
                    self._probe = None
                    shared.done.set()

                try:
                    token.run_sync_soon(finish)
                except trio.RunFinishedError:  # the node stopped while the backend hung
                    pass

            trio.lowlevel.start_thread_soon(lambda: fn(*args), deliver, name=f"vim-{self.name}-probe")
        await shared.done.wait()
        if shared.error is not None:
            raise shared.error
        return cast(T, shared.value)


@attrs.define
class _Probe:
    """A health probe in its thread, and its outcome once it returned."""

    done: trio.Event = attrs.Factory(trio.Event)
    value: Any = None
    error: BaseException | None = None
