"""Lease decisions: what a heartbeat's answer means, and when a worker id may mint. Pure.

The timings are the node's Tunables (tunables.py: lease_ttl_s, lease_hold_s, lease_settle_s,
written LEASE_TTL_S, HOLD_S and SETTLE_S below; `Tunables.check` enforces the relations this
text relies on).

A node holds three kinds of keys in Redis, each with the node's owner token and a TTL
(LEASE_TTL_S) that every heartbeat renews: its node-id lock, the master lock (a master), and
its worker id (the 10 bits of every snowflake it mints). A heartbeat reports, per key:
RENEWED (it was ours), RETAKEN (it was simply missing, so the beat took it back) or OTHER
(another owner holds it). Only OTHER is a loss (`decide_beat`): a missing key is what Redis
looks like after it lost its data (a crash without persistence, a flush, a failover to an
empty replica), and the node carries on, re-registered, with its routes republished.

Worker-id safety (`MintGate`). Two processes must never mint with one worker id at once, and a
worker id taken again after a Redis loss must never mint an id minted before. The rules:

  H. Hold: a process mints with worker w only while w was confirmed (taken or renewed, in
     the key's current owner's name) by a request it SENT less than HOLD_S ago, by its own
     monotonic clock. HOLD_S < LEASE_TTL_S: the key outlives its holder's right to mint by
     LEASE_TTL_S - HOLD_S (2 s), which covers clock-rate drift and scheduling.
  G. Generation: Redis carries a generation marker (a random token, the server's run_id and
     the server time it was made). Every take and renewal runs in one script that first
     checks the marker; if it is missing (the data was lost) or names another run_id (a
     restart or a failover: writes may be lost), the script makes a new generation at once.
  C. Continuing: a holder whose right (H) still runs when the answer comes back, and whose key
     was missing (a new generation), takes it back and keeps minting: no one else can have
     held w in between (in the old generation w was its key; in the new one the take is SET NX).
  F. Fresh take: any other take of w may mint only once the generation is SETTLE_S (> HOLD_S)
     old, by the server's clock: every holder of w from before the generation confirmed it
     before the generation was made, so by (H) it stopped minting before HOLD_S had passed.
     Holders of w within the generation stopped before their key left (a release comes after
     the node stopped; an expiry comes LEASE_TTL_S after the last confirmation, later than
     HOLD_S), and the key had left, or the SET NX would have failed.
  So the minting intervals of one worker id never overlap, and each starts after the previous
  one ended; ids embed the wall-clock millisecond, so a later holder's ids are larger than an
  earlier holder's as long as the hosts' clocks agree within the gap (at least the 2 s of H's
  margin after an expiry; NTP keeps them within milliseconds). Within one process the
  generator never goes back (ids.py).

The price of F is paid only by a node that starts (or has to change worker id) within
SETTLE_S of a generation's birth: on a brand-new Redis too, since an empty Redis cannot tell a
first start from a loss. A starting node waits out the rest of SETTLE_S before it serves; a
running one holds its mints meanwhile. Nodes that already ran re-take their own ids (C) and
never wait; after an outage longer than HOLD_S their right has lapsed, so they wait too.
"""

from __future__ import annotations

import enum
import math

import attrs

from ..tunables import DEFAULTS


class KeyState(enum.Enum):
    RENEWED = "renewed"  # it was ours; its TTL is renewed
    RETAKEN = "retaken"  # it was missing; it is ours again
    OTHER = "other"  # another owner holds it
    ABSENT = "absent"  # not asked about (no master lock, no worker)


@attrs.frozen
class Generation:
    token: str  # the marker's random token
    age_s: float  # its age by the server's clock when the script ran


@attrs.frozen
class BeatReport:
    """What one heartbeat found, key by key (the adapter's answer)."""

    generation: Generation
    node: KeyState
    master: KeyState = KeyState.ABSENT
    worker: KeyState = KeyState.ABSENT


@attrs.frozen
class BeatDecision:
    lost: str | None  # why the node must stop (another process holds its node id or the master role)
    republish: bool  # Redis forgot this node: publish its registration and live routes again
    worker_lost: bool  # another owner holds the worker id: take another one
    reset: bool  # a new generation: Redis lost (or may have lost) its data


def decide_beat(report: BeatReport, known_generation: str | None) -> BeatDecision:
    """Missing keys were re-taken and are fine; only a key held by another owner is a loss."""
    lost = None
    if report.node is KeyState.OTHER:
        lost = "another process holds this node id"
    elif report.master is KeyState.OTHER:
        lost = "another node holds the master lock"
    reset = known_generation is not None and report.generation.token != known_generation
    return BeatDecision(
        lost=lost,
        republish=report.node is KeyState.RETAKEN or reset,
        worker_lost=report.worker is KeyState.OTHER,
        reset=reset,
    )


@attrs.define
class MintGate:
    """When this process may mint with its worker id (rules H, C, F above).

    Times are the process's monotonic clock (seconds): `sent_at` is when the request that
    confirmed the worker left, `now` when its answer came back.
    """

    worker: int | None = None
    confirmed_at: float = -math.inf
    safe_from: float = math.inf
    hold_s: float = attrs.field(default=DEFAULTS.lease_hold_s, kw_only=True)  # (H)
    settle_s: float = attrs.field(default=DEFAULTS.lease_settle_s, kw_only=True)  # (F)

    def holding(self, now: float) -> bool:
        return self.worker is not None and now < self.confirmed_at + self.hold_s

    def took(self, worker: int, generation: Generation, sent_at: float, now: float) -> None:
        """The worker key was taken (SET NX, or re-taken by a heartbeat)."""
        continuing = self.worker == worker and self.holding(now)
        if not continuing:
            self.safe_from = now + max(0.0, self.settle_s - generation.age_s)
        self.worker = worker
        self.confirmed_at = sent_at

    def renewed(self, sent_at: float) -> None:
        """The worker key was ours and is renewed."""
        self.confirmed_at = max(self.confirmed_at, sent_at)

    def lost(self) -> None:
        """Another owner holds it: stop minting with it at once."""
        self.worker = None
        self.safe_from = math.inf

    def wait_s(self, now: float) -> float | None:
        """0 to mint now, seconds to wait (a fresh take settling), or None: no confirmed
        worker id (Redis unreachable for HOLD_S, or the id was lost)."""
        if not self.holding(now):
            return None
        return max(0.0, self.safe_from - now)


@attrs.define
class LeaseSightings:
    """What the master's reaper saw of the nodes' heartbeats, to tell a lease that lapsed from
    one its holder released (a clean stop: `release_node`). Redis shows both alike: the lock is
    gone, the registration stays. But every registration a node writes follows a renewal of
    its lock for LEASE_TTL_S (the beat's script runs first), so a registration that changed
    between two reads of the reaper shows a renewal after the earlier read: the lock cannot
    lapse before LEASE_TTL_S after that read. One gone sooner was released. Only the master's
    own clock is read (milliseconds): no comparison with the clocks of the node hosts."""

    ttl_ms: int  # the lease TTL (lease_ttl_s): a node's lock outlives its last renewal that long
    _renewed_after: dict[str, int] = attrs.Factory(dict)  # node -> a read before its last renewal seen
    _beats: dict[str, int] = attrs.Factory(dict)  # node -> its registration's heartbeat_at, last read
    _last_read: int | None = None

    def saw(self, beats: dict[str, int], now: int) -> None:
        """A read of the registrations (node -> heartbeat_at) asked for at `now`."""
        for node, beat in beats.items():
            before = self._beats.get(node)
            if before is not None and beat != before and self._last_read is not None:
                self._renewed_after[node] = self._last_read
        self._beats = dict(beats)
        self._renewed_after = {n: t for n, t in self._renewed_after.items() if n in beats}
        self._last_read = now

    def released(self, node: str, now: int) -> bool | None:
        """Whether `node`'s lock, gone at `now`, was released (its holder renewed it less than
        LEASE_TTL_S before) rather than lapsed. None: not known (no renewal of it seen yet: the
        reader started less than two heartbeats ago)."""
        after = self._renewed_after.get(node)
        return None if after is None else now - after < self.ttl_ms
