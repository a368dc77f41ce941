"""The cluster's public hosts for the client port's `Origin` check (rules: core/origins.py),
read from Redis at most every REFRESH_S and only when a browser's origin is neither this node's
own host nor listed (the web client moving to another node): a connection storm costs no
Redis call."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import attrs
import structlog

from ..errors import StoreUnavailable
from ..ports import Registry
from .blocking import BlockingRunner

log = structlog.get_logger()
REFRESH_S = 10.0


@attrs.define
class ClusterHosts:
    """The public hosts of the cluster's live nodes, as last read from Redis."""

    hosts: frozenset[str] = frozenset()
    read_at: float = -REFRESH_S

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
