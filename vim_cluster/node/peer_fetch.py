"""The dashboard's fetches of other nodes' HTTP ports (node/dashboard.py), bounded.

Rules:
- A fetch runs in a worker thread of its own (urllib blocks), never in trio's default thread
  pool: a dashboard flood, or many tabs refreshing, while a node does not answer filled that
  pool's 40 threads for 2 s a request, and starved what the node runs there (the address
  lookups of its connections to the master, the Origin check's host names).
- At most PEER_FETCHES fetches at once per node (`limiter`); one more is refused at once
  (`trio.WouldBlock`: shown as unreachable, "busy"), never queued.
- One fetch of a URL at a time: requests that want the same URL meanwhile share its answer.
- A request waits WAIT_S at most; a fetch that takes longer (a peer that accepts and then
  drips) keeps its thread and its place in the limit until urllib's timeout ends it, and is
  shared by the requests that come meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import outcome
import trio

PEER_FETCHES = 4  # fetches (threads) at once per node
WAIT_S = 3.0  # a request waits this long for a fetch at most


@attrs.define(eq=False)
class _Fetch:
    done: trio.Event = attrs.Factory(trio.Event)
    value: tuple[int, Any] | None = None
    error: BaseException | None = None


@attrs.define(eq=False)
class PeerFetches:
    limiter: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(PEER_FETCHES))
    _inflight: dict[str, _Fetch] = attrs.Factory(dict)

    async def get(self, url: str, fetch: Callable[[], tuple[int, Any]]) -> tuple[int, Any]:
        """`fetch()` (a blocking GET of `url`) in a thread of its own, or the answer of the one
        already running for `url`. Raises trio.WouldBlock when PEER_FETCHES are running,
        TimeoutError when no answer came within WAIT_S, else what `fetch` raised."""
        shared = self._inflight.get(url)
        if shared is None:
            shared = self._start(url, fetch)
        with trio.move_on_after(WAIT_S):
            await shared.done.wait()
        if shared.error is not None:
            raise shared.error
        if shared.value is None:
            raise TimeoutError(f"no answer within {WAIT_S:g} s")
        return shared.value

    def in_flight(self) -> int:
        return len(self._inflight)

    def _start(self, url: str, fetch: Callable[[], tuple[int, Any]]) -> _Fetch:
        shared = _Fetch()
        self.limiter.acquire_on_behalf_of_nowait(shared)  # raises WouldBlock: refused, not queued
        self._inflight[url] = shared
        token = trio.lowlevel.current_trio_token()

        def finish(result: outcome.Outcome[tuple[int, Any]]) -> None:
            del self._inflight[url]
            self.limiter.release_on_behalf_of(shared)
            if isinstance(result, outcome.Error):
                shared.error = result.error
            elif isinstance(result, outcome.Value):
                shared.value = result.value
            shared.done.set()

        def deliver(result: outcome.Outcome[tuple[int, Any]]) -> None:  # in the fetch's thread
            try:
                token.run_sync_soon(finish, result)
            except trio.RunFinishedError:  # the node stopped meanwhile: nobody waits
                pass

        trio.lowlevel.start_thread_soon(fetch, deliver, name="vim-dashboard-fetch")
        return shared
