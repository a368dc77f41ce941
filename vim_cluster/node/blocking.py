"""Run blocking adapter calls in worker threads, a bounded number at a time per backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

from ..errors import StoreUnavailable

T = TypeVar("T")


class BlockingRunner:
    """`await runner(fn, *args)` runs fn in a thread; at most `limit` at once.

    Not abandoned on cancel: a write that started is always waited for, so the caller never
    acts on a write whose outcome it does not know.
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limiter = trio.CapacityLimiter(limit)
        self._probing = False

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def probe(self, fn: Callable[..., T], *args: Any) -> T:
        """A read for a health check: in a thread outside the limit (a backend that hangs fills
        the limit first) and abandoned on cancel, so the check's timeout holds however long
        the backend's socket waits. One probe at a time: while one is still out, the next
        fails at once with StoreUnavailable (no thread piles up during an outage)."""
        if self._probing:
            raise StoreUnavailable(f"{self.name}: the previous check has not returned yet")
        self._probing = True

        def run() -> T:
            try:
                return fn(*args)
            finally:
                self._probing = False

        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)
