"""Everything a handler needs, built once per node by `node.app.serve_node` from the backends
that `wiring` opens (the registry, the directory, the message store)."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..config import NodeConfig
from ..core.auth import TokenIssuer
from ..model import Department, User, UserId
from ..ports import Directory, MessageStore, Registry
from ..tunables import Tunables
from .blocking import BlockingRunner
from .delivery import Delivery
from .frame_log import FrameLog
from .heartbeat import LeasedIds
from .local_sessions import LocalSessions
from .metrics import NodeMetrics
from .operator import Operator
from .origin_check import ClusterHosts
from .peer_fetch import PeerFetches
from .shared_read import SharedRead
from .stats import Stats
from .store_writer import StoreWriter


@attrs.frozen
class ContactsBase:
    """What every `contacts` answer shares: the directory and who is online (node/shared_read.py)."""

    everyone: list[User]
    departments: list[Department]
    members: dict[int, tuple[int, ...]]  # department id -> its users' ids
    online: frozenset[UserId]  # users with a session on a live node


@attrs.define
class NodeContext:
    config: NodeConfig
    clock_ms: Callable[[], int]
    ids: LeasedIds
    tokens: TokenIssuer
    directory: Directory
    messages: MessageStore
    registry: Registry
    db: BlockingRunner  # directory calls
    store: BlockingRunner  # message store calls
    redis: BlockingRunner
    cpu: BlockingRunner  # password hashing
    local_sessions: LocalSessions
    delivery: Delivery
    writer: StoreWriter
    metrics: NodeMetrics
    frame_log: FrameLog
    known_users: set[int] = attrs.Factory(set)  # positive cache; kick 4006 (user delete) evicts
    stats: Stats | None = None  # the dashboard's samples (set by serve_node)
    operator: Operator | None = None  # dashboard login, audit and actions (set by serve_node)
    draining: bool = False  # an operator drained the node: no new client connections
    cluster_role: str = "slave"  # "master" (relaying), "standby" or "slave" (node/roles.py)
    cluster_hosts: ClusterHosts = attrs.Factory(ClusterHosts)  # for the client port's Origin check
    peer_fetches: PeerFetches = attrs.Factory(PeerFetches)  # the dashboard's fetches of other nodes
    contacts_base: SharedRead[ContactsBase] = attrs.Factory(SharedRead)  # one read for concurrent `contacts`
    problems: dict[str, str] = attrs.Factory(dict)  # what is down, in full, as last logged (node/health.py)
    # routes of closed sessions that Redis did not take the removal of (app.remove_routes_left)
    routes_left: set[tuple[UserId, str]] = attrs.Factory(set)

    @property
    def node_id(self) -> str:
        return self.config.node_id

    @property
    def tunables(self) -> Tunables:
        """The node's timings and sizes (built once from the config: tunables.py)."""
        return self.config.tunables
