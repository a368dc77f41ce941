"""The Registry's login counters on a real Redis: reserving is atomic under parallel callers,
and the three counters (pair, username, address) refuse in that order."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from vim_cluster.adapters.redis_registry import RedisRegistry

pytestmark = pytest.mark.timeout(30)
LIMITS = (5, 20, 100)


def test_parallel_reservations_let_exactly_the_limit_through(redis_url: str) -> None:
    registry = RedisRegistry(redis_url)
    try:
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda _: registry.reserve_login("alice", "10.0.0.1", 900, LIMITS), range(64)))
        assert answers.count(0) == 5 and answers.count(1) == 59
    finally:
        registry.close()


def test_the_username_and_the_address_limits_span_addresses_and_usernames(redis_url: str) -> None:
    registry = RedisRegistry(redis_url)
    try:
        admitted = [registry.reserve_login("bob", f"10.0.1.{n // 5}", 900, LIMITS) for n in range(25)]
        assert admitted == [0] * 20 + [2] * 5  # 4 addresses x 5 each, then the username is full
        sprayed = [registry.reserve_login(f"user{n}", "10.0.2.1", 900, LIMITS) for n in range(105)]
        assert sprayed == [0] * 100 + [3] * 5  # one address over many usernames
    finally:
        registry.close()


def test_a_right_password_clears_the_pair_and_refunds_its_attempt(redis_url: str) -> None:
    registry = RedisRegistry(redis_url)
    try:
        for _ in range(4):
            assert registry.reserve_login("carol", "10.0.3.1", 900, LIMITS) == 0
        assert registry.reserve_login("carol", "10.0.3.1", 900, LIMITS) == 0  # the right one
        registry.refund_login("carol", "10.0.3.1")
        assert [registry.reserve_login("carol", "10.0.3.1", 900, LIMITS) for _ in range(6)] == [0] * 5 + [1]
    finally:
        registry.close()
