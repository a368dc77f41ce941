"""Which node relays: the master lease, its fencing epoch and the relay deadline. Pure.

The timings are the node's Tunables (tunables.py: master_ttl_s, master_renew_s, master_relay_s,
master_claim_poll_s, written MASTER_TTL_S, RENEW_S, RELAY_S and CLAIM_POLL_S below);
`Tunables.check` enforces RELAY_S + 0.5 <= MASTER_TTL_S and 2 * RENEW_S < RELAY_S.

Rules (docs/operations.md, "Running a standby master"):
- Every node with `node-type: master` is master-capable. The ACTIVE one holds the master lease
  in Redis (a key with a TTL of MASTER_TTL_S, renewed every RENEW_S) and an EPOCH: a counter
  raised on every takeover. The others are STANDBYs: they serve their own clients and link to
  the active master like department nodes, and try to claim the lease every CLAIM_POLL_S. A
  claim succeeds only when no one holds the lease, so a standby takes over only once the old
  lease has lapsed (or was given up by a master that stopped).
- Relay deadline (`RelayGate`): the active master relays only until RELAY_S after it SENT the
  last renewal that Redis confirmed (by its own monotonic clock). The renewal's TTL runs from
  when Redis handled it, later than the send, so the lease outlives the right to relay by at
  least MASTER_TTL_S - RELAY_S (the margin: clock-rate drift, and the time it takes to close
  the links). So two masters never relay at once, even when the old one is cut off from Redis
  and not from the slaves.
- Fencing: every forward frame carries the epoch of the master it belongs to, and a node
  refuses frames of an epoch older than the newest it knows (`Fence`: from Redis or from a
  link; the check is ForwardConnection's); a master that hears of a newer epoch than its own
  stops relaying at once.
- A claim passes the highest epoch the claimer saw as a floor: after Redis lost its data the
  counter restarts, and the new epoch must still be newer than every one in use.
"""

from __future__ import annotations

import enum
import math

import attrs

from ..tunables import DEFAULTS


class Renewal(enum.Enum):
    RENEWED = "renewed"  # still ours, TTL renewed
    MISSING = "missing"  # lapsed (or Redis lost it): claim it again, with a new epoch
    OTHER = "other"  # another node holds it: we are not the master any more


class Role(enum.Enum):
    ACTIVE = "master"  # holds the lease (it relays while its RelayGate allows)
    STANDBY = "standby"  # master-capable, linked to the active master as a slave
    SLAVE = "slave"  # a department node


@attrs.frozen
class MasterView:
    """The active master as Redis tells it (`vim-cluster nodes`, the dashboard, discovery)."""

    node_id: str
    forward_url: str
    epoch: int
    since_ms: int  # when it took the lease (Redis server time, ms)
    takeovers: int  # claims of the lease since Redis has this record (the first start included)
    alive: bool  # its lease holds
    owner: str | None = None  # the owner token of the process holding it (while alive)


@attrs.define
class RelayGate:
    """The active master's right to relay (times: the process's monotonic clock, seconds)."""

    confirmed_sent: float = -math.inf
    relay_s: float = attrs.field(default=DEFAULTS.master_relay_s, kw_only=True)  # RELAY_S

    def confirmed(self, sent_at: float) -> None:
        """Redis confirmed (took or renewed) the lease for a request sent at `sent_at`."""
        self.confirmed_sent = max(self.confirmed_sent, sent_at)

    def deadline(self) -> float:
        return self.confirmed_sent + self.relay_s

    def may_relay(self, now: float) -> bool:
        return now < self.deadline()

    def revoke(self) -> None:
        self.confirmed_sent = -math.inf


@attrs.define
class Fence:
    """The newest epoch this node knows (from Redis and from its links): the floor of its
    claims, and the epoch its slave links start from (ForwardConnection refuses frames of an
    older one: protocol/forward_connection.py)."""

    known: int = 0
    refused: int = 0  # frames this node's links refused for an old epoch

    def learn(self, epoch: int) -> None:
        self.known = max(self.known, epoch)


def shown_role(node_id: str, registered: str, view: MasterView | None) -> str:
    """A node's role as of now (`vim-cluster nodes`, the dashboard): the master lease decides
    which master-capable node is the master; a registration says what the node was at its
    last heartbeat. The node the lease names stays `master` after the lease lapsed (hung, cut
    off from Redis, or dead): it is no standby, and no standby of its own to take over."""
    if registered not in (Role.ACTIVE.value, Role.STANDBY.value):
        return registered
    active = view is not None and view.node_id == node_id
    return Role.ACTIVE.value if active else Role.STANDBY.value
