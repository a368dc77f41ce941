"""Per-connection frame rate limit: a fixed one-second window.

`admit(now)` is called once per received frame; it returns False for every frame beyond
`limit` in the current window (the frame is then answered `rate-limited` and not processed).
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
