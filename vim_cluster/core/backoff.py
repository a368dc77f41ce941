"""Capped exponential backoff with full jitter (pure: the random source is injected)."""

from __future__ import annotations

import random

import attrs


@attrs.define
class Backoff:
    base: float = 0.1
    cap: float = 5.0
    rng: random.Random = attrs.Factory(random.Random)
    _attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 30)
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0
