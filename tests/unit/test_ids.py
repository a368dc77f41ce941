"""Snowflake ids: strictly increasing per generator whatever the clock does, worker bits,
`timestamp_of`."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vim_cluster.ids import (
    EPOCH_MS,
    MAX_SEQUENCE,
    MAX_WORKER,
    SEQUENCE_BITS,
    IdGenerator,
    timestamp_of,
)

NOW = 1_750_000_000_000


def worker_of(snowflake: int) -> int:
    return (snowflake >> SEQUENCE_BITS) & MAX_WORKER


def test_ids_carry_the_clock_ms_and_the_worker() -> None:
    generator = IdGenerator(37, lambda: NOW)
    snowflake = generator.next_id()
    assert timestamp_of(snowflake) == NOW
    assert worker_of(snowflake) == 37
    assert 0 < snowflake < 1 << 63


def test_ids_in_one_millisecond_increase_by_sequence() -> None:
    generator = IdGenerator(1, lambda: NOW)
    ids = [generator.next_id() for _ in range(100)]
    assert ids == sorted(set(ids))
    assert all(timestamp_of(i) == NOW for i in ids)


def test_ids_stay_increasing_when_the_clock_steps_back() -> None:
    times = iter([NOW, NOW + 5, NOW - 1000, NOW - 1000, NOW + 3, NOW + 6])
    generator = IdGenerator(2, lambda: next(times))
    ids = [generator.next_id() for _ in range(6)]
    assert ids == sorted(ids) and len(set(ids)) == 6
    # while the clock is behind, ids keep the last millisecond seen
    assert [timestamp_of(i) for i in ids] == [NOW, NOW + 5, NOW + 5, NOW + 5, NOW + 5, NOW + 6]
    assert all(worker_of(i) == 2 for i in ids)


def test_an_exhausted_sequence_borrows_the_next_millisecond() -> None:
    generator = IdGenerator(3, lambda: NOW)
    ids = [generator.next_id() for _ in range(3 * (MAX_SEQUENCE + 1))]
    assert ids == sorted(set(ids))
    assert timestamp_of(ids[0]) == NOW
    assert timestamp_of(ids[-1]) > NOW  # borrowed from the future, never repeated


def test_two_workers_never_mint_the_same_id_on_the_same_clock() -> None:
    a = IdGenerator(0, lambda: NOW)
    b = IdGenerator(MAX_WORKER, lambda: NOW)
    ids_a = {a.next_id() for _ in range(5000)}
    ids_b = {b.next_id() for _ in range(5000)}
    assert not ids_a & ids_b
    assert {worker_of(i) for i in ids_a} == {0}
    assert {worker_of(i) for i in ids_b} == {MAX_WORKER}


@pytest.mark.parametrize("worker", [-1, MAX_WORKER + 1, 5000])
def test_worker_ids_outside_ten_bits_are_refused(worker: int) -> None:
    with pytest.raises(ValueError):
        IdGenerator(worker, lambda: NOW)


def test_timestamp_of_inverts_the_layout() -> None:
    for ms in (EPOCH_MS, EPOCH_MS + 1, NOW, EPOCH_MS + (1 << 41) - 1):
        def clock(ms: int = ms) -> int:
            return ms

        assert timestamp_of(IdGenerator(5, clock).next_id()) == ms


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, MAX_WORKER),
    st.lists(st.integers(EPOCH_MS - 10_000, EPOCH_MS + 10**12), min_size=1, max_size=300),
    st.lists(st.integers(1, 5000), min_size=1, max_size=300),
)
def test_ids_strictly_increase_for_any_clock(worker: int, clock: list[int], repeats: list[int]) -> None:
    """The clock jumps around; each reading may be seen many times (a busy millisecond)."""
    readings = itertools.chain.from_iterable(itertools.repeat(t, n) for t, n in zip(clock, itertools.cycle(repeats)))
    readings_list = list(itertools.islice(readings, 3000))
    it = iter(readings_list)
    generator = IdGenerator(worker, lambda: next(it))
    previous = 0
    for reading in readings_list:
        snowflake = generator.next_id()
        assert snowflake > previous
        assert worker_of(snowflake) == worker
        assert timestamp_of(snowflake) >= max(reading, EPOCH_MS)  # never older than the clock
        previous = snowflake
