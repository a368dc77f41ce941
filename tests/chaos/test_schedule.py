"""The chaos suite's pure parts: a seed replays its schedule, and the gap measure."""

from __future__ import annotations

import itertools

from .chaos import CUT_LINK, KILL_DEPT, KILL_MASTER, RESTART_REDIS, longest_gap, schedule

KINDS = {KILL_MASTER: ["master"], KILL_DEPT: ["dept-1", "dept-2"], RESTART_REDIS: ["redis"],
         CUT_LINK: ["dept-1", "dept-2"]}


def test_a_seed_replays_its_schedule_and_another_seed_differs() -> None:
    first = list(itertools.islice(schedule(7, KINDS), 12))
    assert first == list(itertools.islice(schedule(7, KINDS), 12))
    assert first != list(itertools.islice(schedule(8, KINDS), 12))


def test_the_first_faults_are_every_kind_once_then_kinds_at_random_within_bounds() -> None:
    faults = list(itertools.islice(schedule(3, KINDS, down=(1.0, 2.0), quiet=(0.5, 0.7)), 40))
    assert sorted(f.kind for f in faults[:len(KINDS)]) == sorted(KINDS)
    assert all(f.target in KINDS[f.kind] for f in faults)
    assert all(1.0 <= f.down_s <= 2.0 and 0.5 <= f.quiet_s <= 0.7 for f in faults)
    assert len({f.kind for f in faults[len(KINDS):]}) > 1


def test_longest_gap_counts_from_the_fault_to_the_window_end() -> None:
    assert longest_gap([], 10.0, 15.0) == 5.0
    assert longest_gap([9.0, 11.0, 14.0, 20.0], 10.0, 15.0) == 3.0  # 11 -> 14; times outside ignored
    assert longest_gap([10.5, 11.0], 10.0, 15.0) == 4.0  # silence until the window ends
