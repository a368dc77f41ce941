"""The node's health: whether it can serve (Redis, both stores, a slave's master link), as
/healthz and the dashboard's /stats.json report it."""

from __future__ import annotations

from typing import Any

import trio

from ..errors import StoreUnavailable
from ..model import MessageId
from .blocking import BlockingRunner
from .context import NodeContext

CHECK_TIMEOUT = 3.0


async def health(ctx: NodeContext) -> tuple[bool, dict[str, Any]]:
    """Whether the node can serve: Redis, both stores and (slaves) the master link.

    The checks run at once, each bounded by CHECK_TIMEOUT (a cut network answers 503 within
    it, not after the backends' socket timeouts)."""
    checks: dict[str, str] = {}

    async def check(name: str, runner: BlockingRunner, fn: Any, *args: Any) -> None:
        try:
            with trio.fail_after(CHECK_TIMEOUT):
                await runner.probe(fn, *args)
            checks[name] = "ok"
        except (StoreUnavailable, trio.TooSlowError) as exc:
            checks[name] = f"down: {exc}" if str(exc) else "down: timeout"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(check, "redis", ctx.redis, ctx.registry.ping)
        nursery.start_soon(check, "directory", ctx.db, ctx.directory.user_by_username, "-healthz-")
        nursery.start_soon(check, "messages", ctx.store, ctx.messages.get, MessageId(0))
    if ctx.cluster_role != "master":  # a slave, or a standby: linked to the active master
        link = ctx.delivery.cluster
        problem = getattr(link, "problem", "") or "not connected"  # a SlaveLink says why
        checks["master_link"] = "ok" if link.healthy() else f"down: {problem}"
    checks = {name: checks[name] for name in ("redis", "directory", "messages", "master_link") if name in checks}
    ok = all(v == "ok" for v in checks.values())
    return ok, {
        "node": ctx.node_id,
        "role": ctx.cluster_role,
        "status": "ok" if ok else "unavailable",
        "checks": checks,
        "connections": len(ctx.local_sessions),
        "forward_queue": ctx.delivery.cluster.queue_depth(),
        "url": ctx.config.client_url,
    }
