"""The pure rules behind the lockout's source addresses and username keys."""

from __future__ import annotations

import pytest

from vim_cluster.core import usernames
from vim_cluster.core.lockout import source_key


@pytest.mark.parametrize(("host", "key"), [
    ("203.0.113.7", "203.0.113.7"),
    ("::ffff:203.0.113.7", "203.0.113.7"),  # IPv4-mapped: the IPv4 address
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),  # one host holds a whole /64
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("/run/vim.sock", "/run/vim.sock"),  # not an IP: as it is
    ("01.2.3.4", "01.2.3.4"), ("999.1.1.1", "999.1.1.1"), ("1.2.3", "1.2.3"),  # dotted digits, no address
])
def test_source_key(host: str, key: str) -> None:
    assert source_key(host) == key


@pytest.mark.parametrize(("given", "stored"), [
    ("Alice", "Alice"),
    ("ａｌｉｃｅ", "alice"),  # full-width letters: NFKC makes them ASCII
    ("\u212aate", "Kate"),  # the Kelvin sign
    ("a.b-c_9", "a.b-c_9"),
])
def test_valid_new_usernames_are_stored_in_nfkc_form(given: str, stored: str) -> None:
    assert usernames.valid_new(given) == stored


@pytest.mark.parametrize("given", ["alice\n", "al", "a" * 33, "al ice", "álice", "alice\u200b", "ali\u0441e"])
def test_usernames_outside_the_pattern_are_refused_whole(given: str) -> None:
    assert usernames.valid_new(given) is None


def test_look_alikes_share_one_key() -> None:
    assert {usernames.key(s) for s in ["Kate", "KATE", "ｋａｔｅ", "\u212aate"]} == {"kate"}
    assert usernames.key("kate\n") != usernames.key("kate")
