"""Everything a handler needs, built once per node by `wiring`."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..config import NodeConfig
from ..core.auth import TokenIssuer
from ..ids import IdGenerator
from ..ports import Directory, MessageStore, Registry
from ..protocol.codec import OutFrame
from ..protocol.frames import Reply
from .blocking import BlockingRunner
from .hub import Hub
from .store_writer import StoreWriter


@attrs.define
class Delivery:
    """Where a reply for some users goes: their local sessions (and, in a cluster, the others)."""

    hub: Hub

    def to_users(self, user_ids: set[int] | list[int], reply: Reply, exclude: str | None = None) -> OutFrame:
        frame = OutFrame(reply)
        self.hub.deliver(user_ids, frame, exclude=exclude)
        return frame


@attrs.define
class NodeContext:
    config: NodeConfig
    clock_ms: Callable[[], int]
    ids: IdGenerator
    tokens: TokenIssuer
    directory: Directory
    messages: MessageStore
    registry: Registry
    db: BlockingRunner  # directory calls
    store: BlockingRunner  # message store calls
    redis: BlockingRunner
    cpu: BlockingRunner  # password hashing
    hub: Hub
    delivery: Delivery
    writer: StoreWriter
    known_users: set[int] = attrs.Factory(set)  # users are never deleted: a positive cache

    @property
    def node_id(self) -> str:
        return self.config.node_id
