"""Snowflake-style 64-bit ids: time-ordered, unique per worker.

Layout (most significant first): 41 bits of milliseconds since EPOCH_MS, 10 bits of worker id,
12 bits of sequence. The worker id is leased in Redis by the node (see the registry adapter),
so two live nodes never mint the same id. The generator is pure: the clock is injected.
"""

from __future__ import annotations

from collections.abc import Callable

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
WORKER_BITS = 10
SEQUENCE_BITS = 12
MAX_WORKER = (1 << WORKER_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1


class IdGenerator:
    """Mints strictly increasing ids for one worker.

    Guarantees: every id is larger than the previous one from this generator, even when the
    wall clock steps back (the generator then keeps using its last millisecond, borrowing
    from the future once the sequence is exhausted).
    """

    def __init__(self, worker: int, clock_ms: Callable[[], int]) -> None:
        if not 0 <= worker <= MAX_WORKER:
            raise ValueError(f"worker id must be in 0..{MAX_WORKER}, got {worker}")
        self._worker = worker
        self._clock_ms = clock_ms
        self._last_ms = 0
        self._sequence = 0

    def next_id(self) -> int:
        now = max(self._clock_ms() - EPOCH_MS, self._last_ms)
        if now == self._last_ms:
            self._sequence = (self._sequence + 1) & MAX_SEQUENCE
            if self._sequence == 0:
                now += 1  # sequence exhausted within this millisecond: take the next one
        else:
            self._sequence = 0
        self._last_ms = now
        return (now << (WORKER_BITS + SEQUENCE_BITS)) | (self._worker << SEQUENCE_BITS) | self._sequence


def timestamp_of(snowflake: int) -> int:
    """The wall-clock millisecond an id was minted in."""
    return (snowflake >> (WORKER_BITS + SEQUENCE_BITS)) + EPOCH_MS


def worker_of(snowflake: int) -> int:
    """The worker id an id was minted with."""
    return (snowflake >> SEQUENCE_BITS) & MAX_WORKER


def first_id_at(ms: int) -> int:
    """The smallest id any worker can mint at wall-clock millisecond `ms` (or later): every id
    minted before `ms` is smaller. Retention and export bound their id ranges with it."""
    return max(0, ms - EPOCH_MS) << (WORKER_BITS + SEQUENCE_BITS)
