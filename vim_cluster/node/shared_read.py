"""One read shared by the requests that wait for it, node-wide (`contacts`' directory and
online flags: node/handlers/conversations.py).

Rules:
- A request joins the next round of the read, which begins once the round running (if any)
  has ended; every request of a round asked before the round began, so each one's answer is
  as fresh as a read of its own (what was written before it asked is seen). No answer is
  kept for later requests.
- So one read runs at a time, however many requests come: 1,000 clients asking at once (a
  reconnect storm) cost two reads, not 1,000.
- The request that opens a round runs it for the others, shielded from its own cancel (a
  kick of its connection): the others wait for it. The stores' own timeouts bound it.
- What the read raises, every request of the round raises.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import attrs
import trio

T = TypeVar("T")


@attrs.define(eq=False)
class _Round(Generic[T]):
    done: trio.Event = attrs.Factory(trio.Event)
    value: T | None = None
    error: Exception | None = None


class SharedRead(Generic[T]):
    def __init__(self) -> None:
        self._next: _Round[T] | None = None  # the round new requests join (not begun)
        self._running: trio.Event | None = None  # set when the round running ends
        self.rounds = 0  # rounds run (tests count them)

    async def get(self, read: Callable[[], Awaitable[T]]) -> T:
        """The result of a round of `read` that begins after this call."""
        joined = self._next
        if joined is None:
            joined = self._next = _Round()
            with trio.CancelScope(shield=True):
                await self._run(joined, read)
        else:
            await joined.done.wait()
        if joined.error is not None:
            raise joined.error
        assert joined.value is not None
        return joined.value

    async def _run(self, joined: _Round[T], read: Callable[[], Awaitable[T]]) -> None:
        while self._running is not None:
            await self._running.wait()
        self._running, self._next = trio.Event(), None  # from now on, requests join the next round
        self.rounds += 1
        try:
            joined.value = await read()
        except Exception as exc:  # noqa: BLE001 - raised in every request of the round
            joined.error = exc
        finally:
            running, self._running = self._running, None
            running.set()
            joined.done.set()
