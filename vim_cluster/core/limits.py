"""Per-connection limits: the frame rate (a fixed one-second window) and the cost budget of
expensive commands.

`RateWindow.admit(now)` is called once per received frame; it returns False for every frame
beyond `limit` in the current window (the frame is then answered `rate-limited` and not
processed). `CostBudget` bounds what one connection's `contacts` may cost the node (users
listed per minute): its answer is built for every user of the directory, so a connection that
repeats it within the frame rate would take a node's CPU (docs/security.md).
"""

from __future__ import annotations

import attrs


@attrs.define
class RateWindow:
    limit: int
    window: float = 1.0
    _start: float = -1e18
    _count: int = 0

    def admit(self, now: float) -> bool:
        if now - self._start >= self.window:
            self._start = now
            self._count = 0
        self._count += 1
        return self._count <= self.limit


@attrs.define
class CostBudget:
    """A per-connection budget of `size` units that refills continuously, `size` per `period`
    seconds: a request is admitted while some budget is left, then charged what it cost. The
    charge may leave the budget in debt (a request is never refused for its own size alone);
    requests are refused until the refill has paid it off."""

    size: float
    period: float = 60.0
    _balance: float | None = None
    _at: float = 0.0

    def admit(self, now: float) -> bool:
        return self._refilled(now) > 0

    def charge(self, units: float, now: float) -> None:
        self._balance = self._refilled(now) - units

    def _refilled(self, now: float) -> float:
        if self._balance is None:
            self._balance = self.size
        else:
            self._balance = min(self.size, self._balance + (now - self._at) * self.size / self.period)
        self._at = now
        return self._balance
