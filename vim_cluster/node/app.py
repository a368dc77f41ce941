"""serve_node(): the nursery tree of one node.

    serve_node
    ├── lease heartbeat          (a lease held by another owner stops the node; a missing
    │                             one is re-taken and the node's routes republished)
    ├── routes left              (after a heartbeat: closed sessions' routes Redis refused to remove)
    ├── store writer             (group commit of new messages)
    ├── retention purge          (when configured; one node of the cluster at a time)
    ├── master lease         (master-capable nodes: claim, renew, relay deadline)
    ├── cluster role         (node/roles.py: forward hub + reaper while the active master;
    │                         otherwise a link to the active master, found through Redis)
    ├── client listener          (trio-websocket; one task per connection)
    └── HTTP listener            (health, metrics, web client, dashboard)

On stop: the node drains (no new connection or session), sessions are told (1001) and given
the shutdown grace (Tunables.shutdown_grace_s); a slave whose sessions are gone then tells the
master that it leaves with everything relayed (`_leave_cluster`, link_leave_s at most), then
everything is cancelled. What the node opened is closed in reverse order by one exit stack, on a
stop as on any failure (at start too): the master lease is given up, the lease released (routes
removed), the stores and the listeners closed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from .. import __version__, wiring
from ..config import SECRET_OPEN_BITS, NodeConfig, too_open
from ..core.auth import TokenIssuer
from ..core.mastership import Fence
from ..errors import CloseCode, StoreUnavailable
from ..lifecycle_ports import ClusterRegistry, LifecycleStore
from ..model import UserId
from ..ports import Directory, NodeInfo, Route
from ..tls import check_certificate
from .admission import Admission
from .blocking import BlockingRunner
from .context import NodeContext
from .delivery import Delivery, LocalDelivery
from .forward_link import SlaveLink
from .frame_log import FrameLog
from .handlers.messages import deliver_finished
from .heartbeat import Lease, LeasedIds
from .http import serve_http
from .listeners import Listeners, NodeListeners, bind_listeners, close_listeners, port_of
from .local_sessions import LocalSessions
from .master_finder import MasterFinder
from .mastership import MasterMetrics, Mastership
from .metrics import NodeMetrics
from .operator import Operator
from .retention import PurgeMetrics, Purger, purge_enabled
from .roles import ClusterRoles, published_url
from .serve import serve_connection
from .stats import Stats
from .store_writer import StoreWriter
from .ws_server import serve_websockets

log = structlog.get_logger()


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


@attrs.define(eq=False)
class _Parts:
    """What serve_node makes before the NodeContext: the parts the lease's description reads."""

    config: NodeConfig
    clock_ms: Callable[[], int]
    forward_port: int | None
    started_at: int
    metrics: NodeMetrics
    master_metrics: MasterMetrics
    fence: Fence
    local_sessions: LocalSessions = attrs.Factory(LocalSessions)
    redis: BlockingRunner = attrs.Factory(lambda: BlockingRunner("redis", 16))
    mastership: Mastership | None = None
    draining: Callable[[], bool] = lambda: False  # the context's flag, once there is one

    @classmethod
    def new(cls, config: NodeConfig, clock_ms: Callable[[], int], listeners: NodeListeners) -> _Parts:
        metrics, fence = NodeMetrics(config.node_id), Fence()
        _watch_certificate(config, metrics)
        forward_port = port_of(listeners.forward) if listeners.forward else None
        return cls(config, clock_ms, forward_port, clock_ms(), metrics, MasterMetrics(metrics.registry, fence), fence)

    def describe(self) -> NodeInfo:
        config = self.config
        holding = self.mastership is not None and self.mastership.holding
        return NodeInfo(
            node_id=config.node_id,
            role="master" if holding else "standby" if config.is_master else "slave",
            client_url=config.client_url,
            forward_url=published_url(config, self.forward_port) if holding and self.forward_port else None,
            http_url=config.http_url,
            pid=os.getpid(),
            version=__version__,
            started_at=self.started_at,
            connections=len(self.local_sessions),
            heartbeat_at=self.clock_ms(),
            messages=self.metrics.accepted,
            draining=self.draining(),
        )


def _watch_certificate(config: NodeConfig, metrics: NodeMetrics) -> None:
    """Logs what clients would refuse in the node's TLS certificate (as `check` prints it), and
    exports its end date for an alert before it comes (docs/operations.md, Alerts)."""
    checked = check_certificate(config)
    for problem in checked.problems:
        log.warning("tls_certificate_problem", problem=problem)
    if checked.not_after is not None:
        metrics.certificate_ends(checked.not_after)


def _check_secret_file(path: Path) -> None:
    """Warns when the cluster secret can be read or written by others than its owner (whoever
    reads it can act as any user: docs/security.md)."""
    try:
        mode = too_open(path, SECRET_OPEN_BITS)
    except OSError as exc:
        log.warning("secret_file_unchecked", file=str(path), error=str(exc))
        return
    if mode is not None:
        log.warning("secret_file_too_open", file=str(path), mode=oct(mode), fix=f"chmod 600 {path}")


async def serve_node(
    config: NodeConfig,
    *,
    clock_ms: Callable[[], int] = wall_clock_ms,
    task_status: trio.TaskStatus[RunningNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Runs one node until it is stopped (`RunningNode.stop`) or fails. Each resource goes on one
    exit stack right after it opens (listeners, registry, directory, message store, the lease,
    the master lease), so that on any failure, at start or later, what was opened closes in
    reverse order: the master lease and the lease released (shielded), the stores and the
    listeners closed."""
    structlog.contextvars.bind_contextvars(node_id=config.node_id)
    _check_secret_file(config.cluster.secret_file)
    for ignored in config.ignored:
        log.warning("config_key_ignored", file=str(config.file), key=ignored)
    serving = False
    try:
        async with contextlib.AsyncExitStack() as stack:
            listeners = await bind_listeners(config)  # a taken port stops the node before it registers
            stack.push_async_callback(_close_listeners, listeners)
            registry, directory, messages = await _open_backends(stack, config)
            parts = _Parts.new(config, clock_ms, listeners)
            lease = await _take_lease(stack, parts, registry)
            parts.mastership = _master_lease(stack, parts, registry, lease)
            ctx = _context(parts, lease, registry, directory, messages)
            parts.draining = lambda: ctx.draining  # registered with the next heartbeat (`nodes`)
            serving = True
            purge = functools.partial(_purge, ctx, registry, messages)
            await _serve(ctx, parts, listeners, lease, purge, task_status)
    finally:
        if serving:
            log.info("node_stopped")


async def _shielded(release: Callable[[], Awaitable[object]]) -> None:
    """A release on the way out runs to its end even while the node is being cancelled."""
    with trio.CancelScope(shield=True):
        await release()


async def _close_in_thread(close: Callable[[], None]) -> None:
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(close)


async def _open_backends(stack: contextlib.AsyncExitStack,
                         config: NodeConfig) -> tuple[ClusterRegistry, Directory, LifecycleStore]:
    """The registry, the directory and the message store, each closed on the way out."""
    registry = await trio.to_thread.run_sync(wiring.open_registry, config)
    stack.push_async_callback(_close_in_thread, registry.close)
    directory = await trio.to_thread.run_sync(wiring.open_directory, config)
    stack.push_async_callback(_close_in_thread, directory.close)
    messages = await trio.to_thread.run_sync(wiring.open_messages, config)
    stack.push_async_callback(_close_in_thread, messages.close)
    return registry, directory, messages


async def _take_lease(stack: contextlib.AsyncExitStack, parts: _Parts, registry: ClusterRegistry) -> Lease:
    """The node-id lock and a worker id (NodeIdTaken: another live process holds the node id),
    released on the way out; then the wait until the worker id is safe to mint with."""
    lease = Lease(registry, parts.redis, parts.describe, parts.config.tunables)
    await lease.acquire()
    stack.push_async_callback(_shielded, lease.release)
    await lease.settle()
    return lease


def _master_lease(stack: contextlib.AsyncExitStack, parts: _Parts, registry: ClusterRegistry,
                  lease: Lease) -> Mastership | None:
    """A master-capable node's master lease, given up on the way out (before the lease: a
    standby takes over at once)."""
    config = parts.config
    if not config.is_master:
        return None
    forward_port = parts.forward_port
    assert forward_port is not None
    mastership = Mastership(registry, parts.redis, config.node_id, lease.owner,
                            lambda: published_url(config, forward_port), parts.fence, parts.master_metrics,
                            config.tunables)
    stack.push_async_callback(_shielded, mastership.release)
    return mastership


def _context(parts: _Parts, lease: Lease, registry: ClusterRegistry, directory: Directory,
             messages: LifecycleStore) -> NodeContext:
    config, tunables = parts.config, parts.config.tunables
    store_runner = BlockingRunner("messages", wiring.store_concurrency(config))
    known_users: set[int] = set()
    local = LocalDelivery(config.node_id, parts.local_sessions, parts.metrics, forget_user=known_users.discard,
                          presence_chunk=tunables.presence_chunk)
    return NodeContext(
        config=config,
        clock_ms=parts.clock_ms,
        ids=LeasedIds(lease, parts.clock_ms),
        tokens=TokenIssuer(config.cluster.secret),
        directory=directory,
        messages=messages,
        registry=registry,
        db=BlockingRunner("directory", wiring.directory_concurrency(config)),
        store=store_runner,
        redis=parts.redis,
        cpu=BlockingRunner("cpu", 2),
        local_sessions=parts.local_sessions,
        delivery=Delivery(local),  # its cluster link is the role's (node/roles.py)
        writer=StoreWriter(messages, store_runner, tunables.store_batch, tunables.store_inline_max_s,
                           tunables.store_inline_pause_s, tunables.store_finish_retry_s,
                           tunables.store_unfinished_max, tunables.store_checkpoint_s),
        metrics=parts.metrics,
        frame_log=FrameLog(wiring.frame_log_writer(messages), BlockingRunner("frame-log", 1)),
        known_users=known_users,
    )


async def _serve(ctx: NodeContext, parts: _Parts, listeners: NodeListeners, lease: Lease,
                 purge: Callable[[], Awaitable[None]], task_status: trio.TaskStatus[RunningNode]) -> None:
    """The node's nursery (the tree in the module's docstring), until stopped or failed."""
    config, tunables, sessions, delivery = ctx.config, ctx.tunables, ctx.local_sessions, ctx.delivery
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lease.run, functools.partial(republish_routes, ctx))
        nursery.start_soon(remove_routes_left, ctx, lease)
        ctx.writer.on_finished = functools.partial(deliver_finished, ctx)
        nursery.start_soon(ctx.writer.run)
        if ctx.frame_log.enabled:
            nursery.start_soon(ctx.frame_log.run)
        if purge_enabled(config.message):
            nursery.start_soon(purge)
        await _start_cluster_role(ctx, nursery, listeners.forward, parts.mastership, parts.fence,
                                  parts.master_metrics)
        ctx.metrics.bind(lambda: len(sessions), lambda: delivery.cluster.queue_depth())
        ctx.stats = Stats(ctx.clock_ms, lambda: len(sessions), lambda: ctx.metrics.accepted,
                          lambda: delivery.cluster.queue_depth(), ctx.metrics.take_latencies,
                          sample_s=tunables.stats_sample_s, keep=tunables.stats_samples,
                          latency_window_s=tunables.stats_latency_window_s,
                          latency_keep=tunables.stats_latency_keep)
        ctx.operator = Operator(config.cluster.secret, ctx.clock_ms)
        nursery.start_soon(ctx.stats.run)
        await nursery.start(_serve_clients, ctx, listeners.client)
        http_port = None
        if listeners.http is not None:
            nursery.start_soon(serve_http, ctx, listeners.http)
            http_port = port_of(listeners.http)
        stopping = trio.Event()
        nursery.start_soon(_stop_when, stopping, ctx, nursery.cancel_scope)
        log.info("node_started", url=config.client_url, worker=lease.worker, role=config.cluster.node_type.value)
        task_status.started(RunningNode(ctx, port_of(listeners.client), http_port, parts.forward_port, stopping.set))


async def _purge(ctx: NodeContext, registry: ClusterRegistry, messages: LifecycleStore) -> None:
    """The retention purge, through the node's own message runner: each batch queues with the
    live writes (FIFO), so a write waits for at most one batch, never for a lock's backoff."""
    purger = Purger(messages, registry, ctx.store, ctx.redis, ctx.config.message, ctx.clock_ms,
                    PurgeMetrics(ctx.metrics.registry), lock_ttl_s=ctx.tunables.retention_lock_ttl_s,
                    check_s=ctx.tunables.retention_check_s)
    await purger.run()


async def republish_routes(ctx: NodeContext) -> int:
    """Publishes the routes of this node's live sessions again (Redis lost them); a session
    that closed meanwhile has its route removed again. Returns how many were published."""
    sessions = [s for user_id in ctx.local_sessions.users() for s in ctx.local_sessions.sessions(user_id)]
    routes = [(UserId(s.user_id), Route(s.id, ctx.node_id, s.client, s.uuid)) for s in sessions]
    await ctx.redis(ctx.registry.republish_routes, routes)
    for session in sessions:
        if session not in ctx.local_sessions.sessions(session.user_id):
            await ctx.redis(ctx.registry.remove_route, UserId(session.user_id), session.id)
    return len(routes)


async def remove_routes_left(ctx: NodeContext, lease: Lease) -> None:
    """After each answered heartbeat, removes the routes of sessions that closed while Redis
    refused their removal (`route_remove_failed`, `route_left_behind`). Left, such a route lists
    a session that is gone (`whereis`, every `contacts`) until this node stops: the master purges
    a node's routes only once its lock lapsed, and an outage shorter than that leaves them."""
    while True:
        await lease.changed()
        for user_id, session_id in list(ctx.routes_left):
            try:
                await ctx.redis(ctx.registry.remove_route, user_id, session_id)
            except StoreUnavailable as exc:
                log.warning("routes_left_remove_failed", left=len(ctx.routes_left), error=str(exc))
                break
            ctx.routes_left.discard((user_id, session_id))
            log.info("route_left_removed", session_id=session_id, user_id=user_id)


async def _close_listeners(listeners: NodeListeners) -> None:
    for group in (listeners.client, listeners.forward or [], listeners.http or []):
        await close_listeners(group)


async def _start_cluster_role(ctx: NodeContext, nursery: trio.Nursery, forward: Listeners | None,
                              mastership: Mastership | None, fence: Fence, metrics: MasterMetrics) -> None:
    """A master-capable node first tries to take the master lease (a lone master starts as
    the master), then the role switch runs (node/roles.py)."""
    config = ctx.config
    finder = MasterFinder(ctx.registry, ctx.redis, config.cluster.master_urls, fence,
                          follow_s=ctx.tunables.master_follow_s)
    if mastership is not None:
        await mastership.try_claim()
        nursery.start_soon(mastership.run)
        ctx.cluster_role = "master" if mastership.holding else "standby"
    roles = ClusterRoles(ctx, finder, fence, metrics, mastership, forward)
    nursery.start_soon(roles.run)


async def _serve_clients(ctx: NodeContext, listeners: Listeners, *,
                         task_status: trio.TaskStatus[list[Any]]) -> None:
    admission = Admission.for_port("client", ctx.config, ctx.metrics, total=True)
    caps = admission.caps
    ctx.metrics.client_connections.set_function(lambda: caps.open)
    ctx.metrics.client_unauthenticated.set_function(lambda: caps.pending)
    await serve_websockets(functools.partial(serve_connection, ctx), listeners,
                           max_message_size=ctx.config.websocket.max_frame,
                           handshake_timeout=ctx.tunables.client_handshake_timeout_s,
                           close_timeout=ctx.tunables.client_close_timeout_s, admission=admission,
                           task_status=task_status)


async def _stop_when(stopping: trio.Event, ctx: NodeContext, scope: trio.CancelScope) -> None:
    """Graceful stop: no new sessions; tell every session (1001), wait for them briefly, leave
    the cluster (a slave), then cancel all."""
    await stopping.wait()
    log.info("node_stopping", sessions=len(ctx.local_sessions))
    ctx.draining = True  # no new connection, and no new session on an open one (Connection.open_session)
    for user_id in ctx.local_sessions.users():
        for session in ctx.local_sessions.sessions(user_id):
            session.kick(CloseCode.GOING_AWAY, "the node is shutting down")
    with trio.move_on_after(ctx.tunables.shutdown_grace_s):
        await ctx.local_sessions.wait_empty()
    await _leave_cluster(ctx)
    scope.cancel()


async def _leave_cluster(ctx: NodeContext) -> None:
    """A slave whose sessions are gone tells the master, once its store writer has handed over
    all it will deliver, that it leaves with nothing unrelayed (SlaveLink.leave): the master
    then asks no node to catch up for it. At most link_leave_s; otherwise (sessions still
    open, the store down, the link down) the master's drop of it asks for the catch-up."""
    link = ctx.delivery.cluster
    if not isinstance(link, SlaveLink):
        return
    if len(ctx.local_sessions):
        log.warning("forward_link_leave_slow", waited_s=ctx.tunables.shutdown_grace_s,
                    sessions=len(ctx.local_sessions))
        return
    with trio.move_on_after(ctx.tunables.link_leave_s) as waited:
        await ctx.writer.drained()
        if len(ctx.local_sessions) or not ctx.writer.idle():  # no checkpoint since: nothing queues meanwhile
            return
        if not await link.leave():  # its packet is queued before its first checkpoint
            return
    if waited.cancelled_caught:
        log.warning("forward_link_leave_slow", waited_s=ctx.tunables.link_leave_s,
                    store_idle=ctx.writer.idle(), unacked=link.queue_depth())
