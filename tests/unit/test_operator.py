"""The dashboard operator's login cookie and its limits (node/operator.py)."""

from __future__ import annotations

from vim_cluster.node.operator import (
    FAILURES_PER_MINUTE,
    FAILURES_PER_MINUTE_ALL,
    SESSION_S,
    Operator,
    cookie_of,
)

SECRET = b"a-cluster-secret-of-32-bytes...."


def test_cookie_names_the_operator_until_it_expires() -> None:
    now = [1_000_000]
    operator = Operator(SECRET, lambda: now[0])
    cookie = operator.login(SECRET.decode() + "\n", "ops anna", "10.0.0.1")
    assert cookie is not None and operator.who(cookie) == "ops anna"
    assert Operator(SECRET, lambda: now[0]).who(cookie) == "ops anna"  # any node of the cluster
    assert Operator(b"another-secret-of-32-bytes......", lambda: now[0]).who(cookie) is None
    expires, name, mac = cookie.split(".")
    assert operator.who(f"{int(expires) + 1}.{name}.{mac}") is None  # a longer life is forged
    assert operator.who("garbage") is None and operator.who(None) is None
    now[0] += SESSION_S * 1000 + 1
    assert operator.who(cookie) is None
    assert cookie_of(f"a=b; vim_operator={cookie}; c=d") == cookie


def test_logins_are_refused_for_a_minute_after_five_failures_from_that_address() -> None:
    """Attack: an outsider sends 5 wrong secrets a minute to each node. That used to refuse
    every operator's login for the minute (even the right secret): the dashboard's actions were
    locked for as long as the attacker kept it up. Now it refuses that address only."""
    now = [0]
    operator = Operator(SECRET, lambda: now[0])
    for _ in range(FAILURES_PER_MINUTE):
        assert operator.login("wrong", "eve", "10.0.0.9") is None
    assert operator.login(SECRET.decode(), "eve", "10.0.0.9") is None  # even the right secret
    assert operator.locked_for_s("10.0.0.9") == 60
    assert operator.locked_for_s("10.0.0.1") == 0
    assert operator.login(SECRET.decode(), "anna", "10.0.0.1") is not None  # another operator's address
    now[0] += 59_500
    assert operator.locked_for_s("10.0.0.9") == 1
    now[0] += 501
    assert operator.locked_for_s("10.0.0.9") == 0
    assert operator.login(SECRET.decode(), "eve", "10.0.0.9") is not None
    assert [e["action"] for e in operator.trail] == ["login", "login"]


def test_an_ipv6_address_counts_as_its_64_and_all_addresses_together_have_a_cap() -> None:
    now = [0]
    operator = Operator(SECRET, lambda: now[0])
    for i in range(FAILURES_PER_MINUTE):
        operator.login("wrong", "eve", f"2001:db8:1:2::{i + 1}")
    assert operator.locked_for_s("2001:db8:1:2::ff") == 60 and operator.locked_for_s("2001:db8:1:3::1") == 0
    for i in range(FAILURES_PER_MINUTE_ALL - FAILURES_PER_MINUTE):
        now[0] += 10
        operator.login("wrong", "eve", f"10.0.{i}.1")  # a botnet: one guess per address
    assert operator.locked_for_s("10.9.9.9") == 60  # then nobody, for a minute from the oldest
    assert operator.login(SECRET.decode(), "anna", "10.9.9.9") is None
    now[0] += 60_000 - 10 * (FAILURES_PER_MINUTE_ALL - FAILURES_PER_MINUTE) + 1
    assert operator.locked_for_s("10.9.9.9") == 0
