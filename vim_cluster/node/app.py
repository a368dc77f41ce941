"""serve_node(): the nursery tree of one node.

    serve_node
    ├── lease heartbeat          (losing the lease stops the node)
    ├── store writer             (group commit of new messages)
    ├── retention purge          (when configured; one node of the cluster at a time)
    ├── forward link (slave) | forward hub + dead-node reaper (master)
    ├── client listener          (trio-websocket; one task per connection)
    └── HTTP listener            (health, metrics, web client, dashboard)

On stop: sessions are told (1001) and given a grace period, then everything is cancelled, the
lease is released (routes removed) and the stores closed.
"""

from __future__ import annotations

import functools
import os
import ssl
import time
from collections.abc import Callable

import attrs
import structlog
import trio
from trio_websocket import WebSocketServer, serve_websocket

from .. import __version__
from ..config import NodeConfig
from ..core.auth import TokenIssuer
from ..errors import CloseCode
from ..ids import IdGenerator
from ..lifecycle_ports import ClusterRegistry, LifecycleStore
from ..ports import Directory, NodeInfo
from . import wiring
from .blocking import BlockingRunner
from .connection import serve_connection
from .context import NodeContext
from .delivery import Delivery
from .forward_hub import MasterHub
from .forward_link import SlaveLink
from .frame_log import FrameLog
from .heartbeat import HEARTBEAT_S, Lease
from .http import serve_http
from .hub import Hub
from .metrics import NodeMetrics
from .retention import PurgeMetrics, Purger, purge_enabled
from .store_writer import StoreWriter

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


def _ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    ws = config.websocket
    if ws.tls_cert is None or ws.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ws.tls_cert, ws.tls_key)
    return context


def forward_url(config: NodeConfig) -> str | None:
    if not config.is_master:
        return None
    host = config.client_url.split("//", 1)[1].rsplit(":", 1)[0]
    return f"ws://{host}:{config.websocket.forward_port}/forward"


async def _open_backends(config: NodeConfig) -> tuple[ClusterRegistry, Directory, LifecycleStore]:
    registry = await trio.to_thread.run_sync(wiring.open_registry, config)
    directory = await trio.to_thread.run_sync(wiring.open_directory, config)
    messages = await trio.to_thread.run_sync(wiring.open_messages, config)
    return registry, directory, messages


async def serve_node(
    config: NodeConfig,
    *,
    clock_ms: Callable[[], int] = wall_clock_ms,
    task_status: trio.TaskStatus[RunningNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    structlog.contextvars.bind_contextvars(node_id=config.node_id)
    registry, directory, messages = await _open_backends(config)
    redis_runner = BlockingRunner("redis", 16)
    hub = Hub()
    metrics = NodeMetrics(config.node_id)
    started_at = clock_ms()

    def describe() -> NodeInfo:
        return NodeInfo(
            node_id=config.node_id,
            role=config.cluster.node_type.value,
            client_url=config.client_url,
            forward_url=forward_url(config),
            http_url=f"http://127.0.0.1:{config.http.port}/" if config.http.port else None,
            pid=os.getpid(),
            version=__version__,
            started_at=started_at,
            connections=len(hub),
            heartbeat_at=clock_ms(),
            messages=metrics.accepted,
        )

    lease = Lease(registry, redis_runner, describe, master=config.is_master)
    worker = await lease.acquire()
    store_runner = BlockingRunner("messages", wiring.store_concurrency(config))
    known_users: set[int] = set()
    delivery = Delivery(config.node_id, hub, metrics, forget_user=known_users.discard)
    ctx = NodeContext(
        config=config,
        clock_ms=clock_ms,
        ids=IdGenerator(worker, clock_ms),
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
            nursery.start_soon(lease.run)
            nursery.start_soon(ctx.writer.run)
            if ctx.frame_log.enabled:
                nursery.start_soon(ctx.frame_log.run)
            if purge_enabled(config.message):
                nursery.start_soon(_purge, ctx, registry, messages)
            forward_port = await _start_cluster_link(ctx, nursery)
            metrics.bind(lambda: len(hub), delivery.cluster.queue_depth)
            server = await nursery.start(_serve_clients, ctx)
            http_port = None
            if config.http.port:
                listeners = await nursery.start(serve_http, ctx, config.websocket.host, config.http.port)
                http_port = listeners[0].socket.getsockname()[1]
            stopping = trio.Event()
            nursery.start_soon(_stop_when, stopping, ctx, nursery.cancel_scope)
            log.info("node_started", url=config.client_url, worker=worker, role=config.cluster.node_type.value)
            task_status.started(RunningNode(ctx, server.port, http_port, forward_port, stopping.set))
    finally:
        with trio.CancelScope(shield=True):
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


async def _start_cluster_link(ctx: NodeContext, nursery: trio.Nursery) -> int | None:
    """Master: the forward hub and reaper; slave: the link to the master. Returns the
    forward port the master listens on."""
    config = ctx.config
    if config.is_master:
        hub = MasterHub(config.node_id, config.cluster.secret, ctx.delivery, ctx.registry, ctx.redis, ctx.clock_ms)
        ctx.delivery.cluster = hub
        assert config.websocket.forward_port is not None
        listeners = await nursery.start(hub.serve, config.websocket.host, config.websocket.forward_port)
        nursery.start_soon(hub.run_reaper, HEARTBEAT_S)
        return int(listeners.port)
    assert config.cluster.master_url is not None
    link = SlaveLink(config.node_id, config.cluster.master_url, config.cluster.secret, ctx.delivery, ctx.clock_ms)
    ctx.delivery.cluster = link
    nursery.start_soon(link.run)
    return None


async def _serve_clients(ctx: NodeContext, *, task_status: trio.TaskStatus[WebSocketServer]) -> None:
    ws = ctx.config.websocket

    await serve_websocket(
        functools.partial(serve_connection, ctx),
        ws.host,
        ws.port,
        _ssl_context(ctx.config),
        max_message_size=ws.max_frame,
        connect_timeout=10,
        disconnect_timeout=5,
        task_status=task_status,
    )


async def _stop_when(stopping: trio.Event, ctx: NodeContext, scope: trio.CancelScope) -> None:
    """Graceful stop: tell every session (1001), wait for them briefly, then cancel all."""
    await stopping.wait()
    log.info("node_stopping", sessions=len(ctx.hub))
    for user_id in ctx.hub.users():
        for session in ctx.hub.sessions(user_id):
            session.kick(CloseCode.GOING_AWAY, "the node is shutting down")
    with trio.move_on_after(SHUTDOWN_GRACE):
        while len(ctx.hub):
            await trio.sleep(0.05)
    scope.cancel()
