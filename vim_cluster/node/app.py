"""serve_node(): the nursery tree of one node.

    serve_node
    ├── lease heartbeat          (a lease held by another owner stops the node; a missing
    │                             one is re-taken and the node's routes republished)
    ├── store writer             (group commit of new messages)
    ├── retention purge          (when configured; one node of the cluster at a time)
    ├── master lease         (master-capable nodes: claim, renew, relay deadline)
    ├── cluster role         (node/roles.py: forward hub + reaper while the active master;
    │                         otherwise a link to the active master, found through Redis)
    ├── client listener          (trio-websocket; one task per connection)
    └── HTTP listener            (health, metrics, web client, dashboard)

On stop: sessions are told (1001) and given a grace period, then everything is cancelled, the
lease is released (routes removed) and the stores closed.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import structlog
import trio
from trio_websocket import WebSocketServer

from .. import __version__
from ..config import NodeConfig
from ..core.auth import TokenIssuer
from ..core.mastership import Fence
from ..errors import CloseCode
from ..lifecycle_ports import ClusterRegistry, LifecycleStore
from ..model import UserId
from ..ports import Directory, NodeInfo, Route
from . import wiring
from .blocking import BlockingRunner
from .connection import serve_connection
from .context import NodeContext
from .delivery import Delivery, LocalDelivery
from .frame_log import FrameLog
from .heartbeat import Lease, LeasedIds
from .http import serve_http
from .hub import Hub
from .listeners import Listeners, NodeListeners, bind_listeners, port_of
from .master_finder import MasterFinder
from .mastership import MasterMetrics, Mastership
from .metrics import NodeMetrics
from .operator import Operator
from .retention import PurgeMetrics, Purger, purge_enabled
from .roles import ClusterRoles, published_url
from .stats import Stats
from .store_writer import StoreWriter
from .ws_listener import ListenerServer

log = structlog.get_logger()
SHUTDOWN_GRACE = 3.0


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@attrs.frozen
class RunningNode:
    """What serve_node reports once it listens."""

    ctx: NodeContext
    client_port: int
    http_port: int | None
    forward_port: int | None
    stop: Callable[[], None]


async def _open_backends(config: NodeConfig) -> tuple[ClusterRegistry, Directory, LifecycleStore]:
    registry = await trio.to_thread.run_sync(wiring.open_registry, config)
    directory = await trio.to_thread.run_sync(wiring.open_directory, config)
    messages = await trio.to_thread.run_sync(wiring.open_messages, config)
    return registry, directory, messages


def _check_secret_file(path: Path) -> None:
    """Warns when the cluster secret can be read or written by others than its owner (whoever
    reads it can act as any user: docs/security.md)."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        log.warning("secret_file_unchecked", file=str(path), error=str(exc))
        return
    if mode & 0o077:
        log.warning("secret_file_too_open", file=str(path), mode=oct(mode), fix=f"chmod 600 {path}")


async def serve_node(
    config: NodeConfig,
    *,
    clock_ms: Callable[[], int] = wall_clock_ms,
    task_status: trio.TaskStatus[RunningNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    structlog.contextvars.bind_contextvars(node_id=config.node_id)
    _check_secret_file(config.cluster.secret_file)
    listeners = await bind_listeners(config)  # a taken port stops the node before it registers
    try:
        registry, directory, messages = await _open_backends(config)
    except BaseException:
        await _close_listeners(listeners)
        raise
    redis_runner = BlockingRunner("redis", 16)
    hub = Hub()
    metrics = NodeMetrics(config.node_id)
    started_at = clock_ms()
    fence = Fence()
    master_metrics = MasterMetrics(metrics.registry, fence)
    forward_port = port_of(listeners.forward) if listeners.forward else None
    mastership: Mastership | None = None

    def describe() -> NodeInfo:
        holding = mastership is not None and mastership.holding
        return NodeInfo(
            node_id=config.node_id,
            role="master" if holding else "standby" if config.is_master else "slave",
            client_url=config.client_url,
            forward_url=published_url(config, forward_port) if holding and forward_port else None,
            http_url=config.http_url,
            pid=os.getpid(),
            version=__version__,
            started_at=started_at,
            connections=len(hub),
            heartbeat_at=clock_ms(),
            messages=metrics.accepted,
        )

    lease = Lease(registry, redis_runner, describe)
    try:
        worker = await lease.acquire()
    except BaseException:
        await _close_listeners(listeners)
        raise
    try:
        await lease.settle()
    except BaseException:
        with trio.CancelScope(shield=True):
            await lease.release()
            await _close_listeners(listeners)
        raise
    store_runner = BlockingRunner("messages", wiring.store_concurrency(config))
    if config.is_master:
        assert forward_port is not None
        mastership = Mastership(registry, redis_runner, config.node_id, lease.owner,
                                lambda: published_url(config, forward_port), fence, master_metrics)
    known_users: set[int] = set()
    local = LocalDelivery(config.node_id, hub, metrics, forget_user=known_users.discard)
    delivery = Delivery(local)  # its cluster link is the role's (node/roles.py)
    ctx = NodeContext(
        config=config,
        clock_ms=clock_ms,
        ids=LeasedIds(lease, clock_ms),
        tokens=TokenIssuer(config.cluster.secret),
        directory=directory,
        messages=messages,
        registry=registry,
        db=BlockingRunner("directory", wiring.directory_concurrency(config)),
        store=store_runner,
        redis=redis_runner,
        cpu=BlockingRunner("cpu", 2),
        hub=hub,
        delivery=delivery,
        writer=StoreWriter(messages, store_runner),
        metrics=metrics,
        frame_log=FrameLog(wiring.frame_log_writer(messages), BlockingRunner("frame-log", 1)),
        known_users=known_users,
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lease.run, functools.partial(republish_routes, ctx))
            nursery.start_soon(ctx.writer.run)
            if ctx.frame_log.enabled:
                nursery.start_soon(ctx.frame_log.run)
            if purge_enabled(config.message):
                nursery.start_soon(_purge, ctx, registry, messages)
            await _start_cluster_role(ctx, nursery, listeners.forward, mastership, fence, master_metrics)
            metrics.bind(lambda: len(hub), lambda: delivery.cluster.queue_depth())
            ctx.stats = Stats(clock_ms, lambda: len(hub), lambda: metrics.accepted,
                              lambda: delivery.cluster.queue_depth(), metrics.take_latencies)
            ctx.operator = Operator(config.cluster.secret, clock_ms)
            nursery.start_soon(ctx.stats.run)
            await nursery.start(_serve_clients, ctx, listeners.client)
            http_port = None
            if listeners.http is not None:
                nursery.start_soon(serve_http, ctx, listeners.http)
                http_port = port_of(listeners.http)
            stopping = trio.Event()
            nursery.start_soon(_stop_when, stopping, ctx, nursery.cancel_scope)
            log.info("node_started", url=config.client_url, worker=worker, role=config.cluster.node_type.value)
            task_status.started(RunningNode(ctx, port_of(listeners.client), http_port, forward_port, stopping.set))
    finally:
        with trio.CancelScope(shield=True):
            if mastership is not None:
                await mastership.release()  # before the routes go: a standby takes over at once
            await lease.release()
            await trio.to_thread.run_sync(directory.close)
            await trio.to_thread.run_sync(messages.close)
            log.info("node_stopped")


async def _purge(ctx: NodeContext, registry: ClusterRegistry, messages: LifecycleStore) -> None:
    """The retention purge, through the node's own message runner: each batch queues with the
    live writes (FIFO), so a write waits for at most one batch, never for a lock's backoff."""
    purger = Purger(messages, registry, ctx.store, ctx.redis, ctx.config.message, ctx.clock_ms,
                    PurgeMetrics(ctx.metrics.registry))
    await purger.run()


async def republish_routes(ctx: NodeContext) -> int:
    """Publishes the routes of this node's live sessions again (Redis lost them); a session
    that closed meanwhile has its route removed again. Returns how many were published."""
    sessions = [s for user_id in ctx.hub.users() for s in ctx.hub.sessions(user_id)]
    routes = [(UserId(s.user_id), Route(s.id, ctx.node_id, s.client, s.uuid)) for s in sessions]
    await ctx.redis(ctx.registry.republish_routes, routes)
    for session in sessions:
        if session not in ctx.hub.sessions(session.user_id):
            await ctx.redis(ctx.registry.remove_route, UserId(session.user_id), session.id)
    return len(routes)


async def _close_listeners(listeners: NodeListeners) -> None:
    for group in (listeners.client, listeners.forward or [], listeners.http or []):
        for listener in group:
            await trio.aclose_forcefully(listener)


async def _start_cluster_role(ctx: NodeContext, nursery: trio.Nursery, forward: Listeners | None,
                              mastership: Mastership | None, fence: Fence, metrics: MasterMetrics) -> None:
    """A master-capable node first tries to take the master lease (a lone master starts as
    the master), then the role switch runs (node/roles.py)."""
    config = ctx.config
    finder = MasterFinder(ctx.registry, ctx.redis, config.cluster.master_urls, fence)
    if mastership is not None:
        await mastership.try_claim()
        nursery.start_soon(mastership.run)
        ctx.cluster_role = "master" if mastership.holding else "standby"
    roles = ClusterRoles(ctx, finder, fence, metrics, mastership, forward)
    nursery.start_soon(roles.run)


async def _serve_clients(ctx: NodeContext, listeners: Listeners, *,
                         task_status: trio.TaskStatus[WebSocketServer]) -> None:
    ws = ctx.config.websocket
    server = ListenerServer(
        functools.partial(serve_connection, ctx),
        listeners,
        max_message_size=ws.max_frame,
        connect_timeout=10,
        disconnect_timeout=5,
    )
    await server.run(task_status=task_status)


async def _stop_when(stopping: trio.Event, ctx: NodeContext, scope: trio.CancelScope) -> None:
    """Graceful stop: tell every session (1001), wait for them briefly, then cancel all."""
    await stopping.wait()
    log.info("node_stopping", sessions=len(ctx.hub))
    for user_id in ctx.hub.users():
        for session in ctx.hub.sessions(user_id):
            session.kick(CloseCode.GOING_AWAY, "the node is shutting down")
    with trio.move_on_after(SHUTDOWN_GRACE):
        await ctx.hub.wait_empty()
    scope.cancel()
