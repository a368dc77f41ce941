"""Connection caps of one listening port: how many connections one source address, and the
whole port, may hold open at once (sans-I/O: the ports count, this decides).

Rules:
- A connection is counted from its accept (before its first byte is read: a handshake begun
  and never finished counts too) until its socket closes: `admit` at the accept, `Slot.release`
  at the close. Each is one dict operation.
- `admit(key)` refuses (returns a `Refusal`, counts nothing) when the port holds `total`
  connections, when the address holds `per_address`, or when it holds `pending_per_address`
  not yet authenticated (`Slot.authenticated`: the connection proved who it is; until then
  it costs a handshake, a login's hashing and buffers, and it ends by its deadline).
- An address is a source key (core.lockout.source_key: an IPv6 address counts as its /64).
  A key `exempt` returns True for (loopback, unless configured otherwise: tools and a reverse
  proxy on the node's host) is counted in `total` only.
- A limit of None is no limit (the forward port: its authenticated nodes are never capped).
"""

from __future__ import annotations

import enum
from collections.abc import Callable


class Refusal(enum.Enum):
    """Which cap refused a connection; the value is the reason's wording."""

    ADDRESS = "too many connections from this address"
    PENDING = "too many unauthenticated connections from this address"
    NODE = "the node holds as many connections as it takes"


def loopback_key(key: str) -> bool:
    """Whether a source key (core.lockout.source_key) is this host's loopback: 127.0.0.0/8,
    or ::1 (whose /64 key is ::/64). A string test: it runs at every accept."""
    return key.startswith("127.") or key == "::/64"


class _Tally:
    __slots__ = ("open", "pending")

    def __init__(self) -> None:
        self.open = 0  # connections of the address
        self.pending = 0  # of which not yet authenticated


class Slot:
    """One admitted connection's place in the counts."""

    __slots__ = ("_caps", "_key", "_tally", "_pending", "_held")

    def __init__(self, caps: ConnectionCaps, key: str, tally: _Tally | None) -> None:
        self._caps = caps
        self._key = key
        self._tally = tally  # None: an exempt address (counted in the total only)
        self._pending = True
        self._held = True

    def authenticated(self) -> None:
        """The connection proved who it is: it no longer counts as unauthenticated."""
        if self._pending and self._held:
            self._pending = False
            self._caps.pending -= 1
            if self._tally is not None:
                self._tally.pending -= 1

    def release(self) -> None:
        """The connection closed (again: nothing)."""
        if not self._held:
            return
        self._held = False
        caps = self._caps
        caps.open -= 1
        if self._pending:
            caps.pending -= 1
        tally = self._tally
        if tally is not None:
            tally.open -= 1
            if self._pending:
                tally.pending -= 1
            if not tally.open:
                del caps.by_address[self._key]


class ConnectionCaps:
    """The counts of one port, and its caps (None: no cap)."""

    def __init__(self, *, per_address: int | None, pending_per_address: int | None, total: int | None,
                 exempt: Callable[[str], bool] = loopback_key) -> None:
        self.per_address = per_address
        self.pending_per_address = pending_per_address
        self.total = total
        self.exempt = exempt
        self.by_address: dict[str, _Tally] = {}  # only addresses holding a connection
        self.open = 0  # connections of the port, exempt addresses' too
        self.pending = 0  # of which not yet authenticated

    def admit(self, key: str) -> Slot | Refusal:
        """Counts a connection just accepted from `key`, or says which cap refuses it."""
        if self.total is not None and self.open >= self.total:
            return Refusal.NODE
        tally = None
        if not self.exempt(key):
            tally = self.by_address.get(key)
            if tally is None:
                tally = self.by_address[key] = _Tally()
            elif self.per_address is not None and tally.open >= self.per_address:
                return Refusal.ADDRESS
            elif self.pending_per_address is not None and tally.pending >= self.pending_per_address:
                return Refusal.PENDING
            tally.open += 1
            tally.pending += 1
        self.open += 1
        self.pending += 1
        return Slot(self, key, tally)

    def held_by(self, key: str) -> tuple[int, int]:
        """(connections, unauthenticated ones) `key` holds (exempt keys: (0, 0))."""
        tally = self.by_address.get(key)
        return (tally.open, tally.pending) if tally is not None else (0, 0)
