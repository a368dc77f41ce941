"""The node's health: whether it can serve (Redis, both stores, a slave's master link), as
/healthz and the dashboard's /stats.json report it.

Anyone who reaches the HTTP port reads /healthz, so a failing backend check says only what is
down and how (`down: unavailable`, `down: timeout`); the backend's own error (a database's
host, user or file path) goes to the node's log once per change (`health_check_failed`,
`health_check_ok`) and to the logged-in operator (`problems` in /stats.json). The master
link's problem is the node's own sentence (the master's URL, which /dashboard.json shows
anyway, and what to check): it stays in the check.
"""

from __future__ import annotations

from typing import Any

import structlog
import trio

from ..errors import StoreUnavailable
from ..model import MessageId
from .blocking import BlockingRunner
from .context import NodeContext

log = structlog.get_logger()
CHECK_TIMEOUT = 3.0
BACKENDS = ("redis", "directory", "messages")


async def health(ctx: NodeContext) -> tuple[bool, dict[str, Any]]:
    """Whether the node can serve: Redis, both stores and (slaves) the master link.

    The checks run at once, each bounded by CHECK_TIMEOUT (a cut network answers 503 within
    it, not after the backends' socket timeouts)."""
    checks: dict[str, str] = {}
    problems: dict[str, str] = {}

    async def check(name: str, runner: BlockingRunner, fn: Any, *args: Any) -> None:
        try:
            with trio.fail_after(CHECK_TIMEOUT):
                await runner.probe(fn, *args)
            checks[name] = "ok"
        except StoreUnavailable as exc:
            checks[name], problems[name] = "down: unavailable", str(exc) or type(exc).__name__
        except trio.TooSlowError:
            checks[name], problems[name] = "down: timeout", f"no answer within {CHECK_TIMEOUT:g} s"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(check, "redis", ctx.redis, ctx.registry.ping)
        nursery.start_soon(check, "directory", ctx.db, ctx.directory.user_by_username, "-healthz-")
        nursery.start_soon(check, "messages", ctx.store, ctx.messages.get, MessageId(0))
    if ctx.cluster_role != "master":  # a slave, or a standby: linked to the active master
        link = ctx.delivery.cluster
        problem = getattr(link, "problem", "") or "not connected"  # a SlaveLink says why
        checks["master_link"] = "ok" if link.healthy() else f"down: {problem}"
    checks = {name: checks[name] for name in (*BACKENDS, "master_link") if name in checks}
    for name in BACKENDS:
        note(ctx, name, problems.get(name))
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


def note(ctx: NodeContext, name: str, problem: str | None, event: str = "health_check_failed") -> None:
    """Logs `name`'s problem in full when it changed since the last one logged (once per
    outage and cause, not once per probe), and its end; keeps it in ctx.problems."""
    if problem == ctx.problems.get(name):
        return
    if problem is None:
        del ctx.problems[name]
        log.info("health_check_ok", check=name)
    else:
        ctx.problems[name] = problem
        log.warning(event, check=name, error=problem)
