"""Run blocking adapter calls in worker threads, a bounded number at a time per backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class BlockingRunner:
    """`await runner(fn, *args)` runs fn in a thread; at most `limit` at once.

    Not abandoned on cancel: a write that started is always waited for, so the caller never
    acts on a write whose outcome it does not know.
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limiter = trio.CapacityLimiter(limit)

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
