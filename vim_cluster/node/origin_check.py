"""The names a node knows itself and the cluster by, for the client port's `Origin` check and
the HTTP port's `Host` check (rules: core/origins.py): this node's public and bind host, the
machine's hostname and FQDN (looked up once, in a thread), and the live nodes' public hosts,
read from Redis at most every REFRESH_S and only when a browser's request is not answered by
the node's own names (the web client moving to another node): a connection storm costs no
Redis call."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import attrs
import structlog
import trio

from ..config import NodeConfig
from ..core import origins
from ..errors import StoreUnavailable
from ..ports import Registry
from .blocking import BlockingRunner

log = structlog.get_logger()
REFRESH_S = 10.0


@attrs.define
class ClusterHosts:
    """The public hosts of the cluster's live nodes, as last read from Redis, and this node's
    own names; the client port's and the HTTP port's checks (core/origins.py) on them."""

    hosts: frozenset[str] = frozenset()
    read_at: float = -REFRESH_S
    machine: frozenset[str] | None = None  # socket.gethostname() and getfqdn(), once

    async def own(self, config: NodeConfig) -> frozenset[str]:
        """This node's own names: public host, bind host, the machine's hostname and FQDN."""
        if self.machine is None:
            self.machine = frozenset(n.lower() for n in await trio.to_thread.run_sync(_machine_names) if n)
        return self.machine | {h.strip("[]").lower() for h in (config.public_host, config.websocket.host)}

    async def current(self, redis: BlockingRunner, registry: Registry) -> frozenset[str]:
        if time.monotonic() - self.read_at >= REFRESH_S:
            self.read_at = time.monotonic()
            try:
                nodes = await redis(registry.nodes)
            except StoreUnavailable as exc:  # the last list read stays
                log.warning("origin_hosts_unread", error=str(exc))
            else:
                self.hosts = frozenset(h for n in nodes if n.alive and (h := urlsplit(n.client_url).hostname))
        return self.hosts

    async def origin_refusal(self, config: NodeConfig, redis: BlockingRunner, registry: Registry,
                             origin: str | None, host: str) -> str | None:
        """Why the client port refuses a handshake with this Origin and Host, or None."""
        if origin is None:  # a native client
            return None
        listed = config.websocket.allowed_origins
        own = await self.own(config)
        if origins.refusal(origin, host, own, listed) is None:  # no Redis for the common cases
            return None
        return origins.refusal(origin, host, own | await self.current(redis, registry), listed)

    async def host_known(self, config: NodeConfig, redis: BlockingRunner, registry: Registry, host: str) -> bool:
        """Whether a request to the HTTP port names the node by a name it knows (no DNS rebinding)."""
        listed = config.websocket.allowed_origins
        own = await self.own(config)
        if origins.ANY in listed or origins.known_host(host, own, listed):
            return True
        return origins.known_host(host, own | await self.current(redis, registry), listed)


def _machine_names() -> tuple[str, str]:
    return socket.gethostname(), socket.getfqdn()

