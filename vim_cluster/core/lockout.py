"""The login lockout: how many guesses a username, a source address and the pair of both get.

Rules:
- An attempt is *reserved* before its password is checked: one atomic step (a Lua script in
  Redis) refuses it if a counter is at its limit and otherwise counts it in all three counters.
  N guesses sent at the same moment on N connections (of any nodes) count N, so no more than
  the limit are ever checked per window, however many connections the guesser opens.
- A reserved attempt that turns out right is refunded: the pair's counter is cleared (that
  address proved it knows the password), the username's and the address's go back down by one.
  Failures from other addresses stay counted until their window ends.
- Three counters, each a fixed window that starts at its first failure (`window_s`):
  `per_pair` guesses for one username from one address (the lock a typing user meets),
  `per_user` for one username from all addresses together (a botnet's budget per account), and
  `per_address` for one address over all usernames (password spraying). So one attacker at one
  address gets `per_pair` guesses per account per window and cannot lock an account for
  everybody else: that takes `per_user / per_pair` addresses.
- An address is the client's IP; an IPv6 address counts as its /64 (one host usually holds a
  whole /64). Behind a reverse proxy every client has the proxy's address.
"""

from __future__ import annotations

import enum
import ipaddress

import attrs


class Exhausted(enum.Enum):
    """Which counter refused an attempt."""

    PAIR = "this username from this address"
    USER = "this username"
    ADDRESS = "this address"


@attrs.frozen
class LockoutPolicy:
    window_s: int = 15 * 60
    per_pair: int = 5
    per_user: int = 20
    per_address: int = 100
    # `register`s from one address per window: each costs a password hash on the node's two
    # hashing threads, which logins wait for (a flood of them slowed every login). Loopback
    # is not counted (`registrations_counted`): tools and tests on the node's host register
    # thousands.
    registrations_per_address: int = 30

    @property
    def limits(self) -> tuple[int, int, int]:
        """(pair, user, address): the order of `Exhausted` and of the registry's counters."""
        return self.per_pair, self.per_user, self.per_address


EXHAUSTED_ORDER = (Exhausted.PAIR, Exhausted.USER, Exhausted.ADDRESS)


def source_key(host: str) -> str:
    """The address the counters use: IPv4 as is, IPv6 as its /64, IPv4-mapped IPv6 as IPv4.
    Anything that is no IP address (a Unix socket path) is used as it is."""
    if host.count(".") == 3 and host.replace(".", "").isdigit():
        return host  # dotted digits: the key either way (an address as the OS writes it, or none); 10x faster
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host[:128]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def registrations_counted(key: str) -> bool:
    """Whether `register`s from this source key count against the address's limit: not from
    this host's loopback (127.0.0.0/8, ::1, whose /64 key is ::/64) nor an unknown address."""
    if not key or key == "::/64":
        return False
    try:
        return not ipaddress.ip_network(key, strict=False).network_address.is_loopback
    except ValueError:
        return True  # no IP address (a Unix socket path): counted like one
