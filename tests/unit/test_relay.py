"""The master's route table (who is where, where a frame goes next) and the reconnect backoff."""

from __future__ import annotations

import random

import pytest

from vim_cluster.core.backoff import Backoff
from vim_cluster.core.relay import RouteTable


def table() -> RouteTable:
    routes = RouteTable()
    routes.add(1, "s1", "dept-1")
    routes.add(1, "s2", "dept-2")  # user 1 has two devices on two nodes
    routes.add(1, "s3", "dept-2")  # and a third, also on dept-2
    routes.add(2, "s4", "dept-2")
    routes.add(3, "s5", "master")
    return routes


def test_plan_has_one_entry_per_node_listing_each_user_once() -> None:
    plan = table().plan([1, 2, 3], skip=None)
    assert {node: sorted(users) for node, users in plan.items()} == {
        "dept-1": [1], "dept-2": [1, 2], "master": [3],
    }


def test_plan_skips_the_source_node() -> None:
    plan = table().plan([1, 2, 3], skip="dept-2")
    assert {node: sorted(users) for node, users in plan.items()} == {"dept-1": [1], "master": [3]}
    assert table().plan([2], skip="dept-2") == {}  # only on the source: nothing to forward


def test_plan_ignores_users_without_sessions() -> None:
    assert table().plan([42, 43], skip=None) == {}
    assert table().plan([], skip=None) == {}


def test_routes_follow_opens_closes_and_moves() -> None:
    routes = table()
    routes.remove(1, "s1")
    assert routes.nodes_of(1) == {"dept-2"}
    routes.add(1, "s2", "master")  # the same session id reported by another node: it moved
    assert routes.nodes_of(1) == {"dept-2", "master"}
    assert routes.sessions_of_node("dept-2") == 2  # s3 of user 1, s4 of user 2
    routes.remove(1, "no-such-session")
    routes.remove(99, "s1")
    assert routes.nodes_of(1) == {"dept-2", "master"}


def test_a_dropped_node_takes_all_its_sessions_and_only_those() -> None:
    routes = table()
    assert routes.drop_node("dept-2") == 3
    assert routes.plan([1, 2, 3], skip=None) == {"dept-1": [1], "master": [3]}
    assert routes.nodes_of(2) == set() and routes.sessions_of_node("dept-2") == 0
    assert routes.drop_node("dept-2") == 0


def test_a_reconnecting_node_replaces_its_whole_session_list() -> None:
    routes = table()
    routes.replace_node("dept-2", [(2, "s9"), (4, "s10")])
    assert routes.nodes_of(1) == {"dept-1"}  # s2, s3 closed while the link was down
    assert routes.plan([2, 4], skip=None) == {"dept-2": [2, 4]}
    assert routes.sessions_of_node("dept-2") == 2


@pytest.mark.parametrize("seed", range(20))
def test_backoff_grows_to_its_cap_and_stays_within_half_cap_and_cap(seed: int) -> None:
    backoff = Backoff(base=0.1, cap=5.0, rng=random.Random(seed))
    delays = [backoff.next_delay() for _ in range(100)]
    for attempt, delay in enumerate(delays):
        ceiling = min(5.0, 0.1 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert all(2.5 <= d <= 5.0 for d in delays[6:])  # 0.1 * 2**6 > 5: capped from there on
    assert max(delays) <= 5.0


def test_backoff_starts_over_after_reset() -> None:
    backoff = Backoff(base=0.1, cap=5.0, rng=random.Random(1))
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert 0.05 <= backoff.next_delay() <= 0.1


def test_backoff_after_very_many_attempts_still_stays_within_half_cap_and_cap() -> None:
    backoff = Backoff(base=0.5, cap=2.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(10_000)]
    assert all(1.0 <= d <= 2.0 for d in delays[2:])
