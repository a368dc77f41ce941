"""The node's own short history for the dashboard: a ring buffer of samples taken every
`sample_s` (connections, msg/s, forward-queue depth, relay latency p50/p99), no external service.

Relay latency is what `Delivery.apply_deliver` measures on this node: from a frame entering
the cluster on another node to its delivery here. Each sample's p50/p99 are over the
deliveries of the last `latency_window_s` (at most `latency_keep` of them; null when none).
The sizes and timings are the node's Tunables (stats_*).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from ..tunables import DEFAULTS


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


@attrs.frozen
class Sample:
    t: int  # ms
    connections: int
    msgs_per_s: float
    forward_queue: int
    p50_ms: float | None
    p99_ms: float | None

    def wire(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class Stats:
    clock_ms: Callable[[], int]
    connections: Callable[[], int]
    accepted: Callable[[], int]
    forward_queue: Callable[[], int]
    take_latencies: Callable[[], list[float]]  # relay latencies (s) since the last call
    sample_s: float = attrs.field(default=DEFAULTS.stats_sample_s, kw_only=True)
    keep: int = attrs.field(default=DEFAULTS.stats_samples, kw_only=True)  # samples kept
    latency_window_s: float = attrs.field(default=DEFAULTS.stats_latency_window_s, kw_only=True)
    latency_keep: int = attrs.field(default=DEFAULTS.stats_latency_keep, kw_only=True)
    samples: collections.deque[Sample] = attrs.field(
        default=attrs.Factory(lambda self: collections.deque(maxlen=self.keep), takes_self=True))
    _last: tuple[int, int] | None = None  # (ms, accepted) at the last sample
    _window: collections.deque[tuple[int, float]] = attrs.field(default=attrs.Factory(
        lambda self: collections.deque(maxlen=self.latency_keep), takes_self=True))  # (ms taken, latency ms)

    def sample(self) -> Sample:
        now, accepted = self.clock_ms(), self.accepted()
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = (accepted - self._last[1]) * 1000 / (now - self._last[0])
        self._last = (now, accepted)
        self._window.extend((now, s * 1000) for s in self.take_latencies())
        while self._window and now - self._window[0][0] > self.latency_window_s * 1000:
            self._window.popleft()
        latencies = [latency for _, latency in self._window]
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        sample = Sample(now, self.connections(), round(rate, 2), self.forward_queue(),
                        round(p50, 2) if p50 is not None else None, round(p99, 2) if p99 is not None else None)
        self.samples.append(sample)
        return sample

    async def run(self) -> None:
        while True:
            self.sample()
            await trio.sleep(self.sample_s)

    def wire(self) -> list[dict[str, Any]]:
        return [s.wire() for s in self.samples]
