"""serve_node(): the nursery tree of one node.

    serve_node
    ├── lease heartbeat          (losing the lease stops the node)
    ├── store writer             (group commit of new messages)
    ├── client listener          (trio-websocket; one task per connection)
    └── HTTP listener            (health, metrics)

On stop: sessions are told (1001) and given a grace period, then everything is cancelled, the
lease is released (routes removed) and the stores closed.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable

import attrs
import structlog
import trio
from trio_websocket import WebSocketRequest, WebSocketServer, serve_websocket

from .. import __version__
from ..config import NodeConfig
from ..core.auth import TokenIssuer
from ..errors import CloseCode
from ..ids import IdGenerator
from ..ports import NodeInfo
from . import wiring
from .blocking import BlockingRunner
from .connection import serve_connection
from .context import Delivery, NodeContext
from .heartbeat import Lease
from .hub import Hub
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
    stop: Callable[[], None]


def _ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    ws = config.websocket
    if ws.tls_cert is None or ws.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ws.tls_cert, ws.tls_key)
    return context


async def serve_node(
    config: NodeConfig,
    *,
    clock_ms: Callable[[], int] = wall_clock_ms,
    task_status: trio.TaskStatus[RunningNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    structlog.contextvars.bind_contextvars(node_id=config.node_id)
    registry = await trio.to_thread.run_sync(wiring.open_registry, config)
    directory = await trio.to_thread.run_sync(wiring.open_directory, config)
    messages = await trio.to_thread.run_sync(wiring.open_messages, config)
    redis_runner = BlockingRunner("redis", 16)
    hub = Hub()
    started_at = clock_ms()

    def describe() -> NodeInfo:
        return NodeInfo(
            node_id=config.node_id,
            role=config.cluster.node_type.value,
            client_url=config.client_url,
            forward_url=None,
            http_url=f"http://127.0.0.1:{config.http.port}/" if config.http.port else None,
            pid=os.getpid(),
            version=__version__,
            started_at=started_at,
            connections=len(hub),
            heartbeat_at=clock_ms(),
        )

    lease = Lease(registry, redis_runner, describe)
    worker = await lease.acquire()
    store_runner = BlockingRunner("messages", 1)
    ctx = NodeContext(
        config=config,
        clock_ms=clock_ms,
        ids=IdGenerator(worker, clock_ms),
        tokens=TokenIssuer(config.cluster.secret),
        directory=directory,
        messages=messages,
        registry=registry,
        db=BlockingRunner("directory", 1),
        store=store_runner,
        redis=redis_runner,
        cpu=BlockingRunner("cpu", 2),
        hub=hub,
        delivery=Delivery(hub),
        writer=StoreWriter(messages, store_runner),
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lease.run)
            nursery.start_soon(ctx.writer.run)
            server = await nursery.start(_serve_clients, ctx)
            stopping = trio.Event()
            nursery.start_soon(_stop_when, stopping, ctx, nursery.cancel_scope)
            log.info("node_started", url=config.client_url, worker=worker, role=config.cluster.node_type.value)
            task_status.started(RunningNode(ctx, server.port, stopping.set))
    finally:
        with trio.CancelScope(shield=True):
            await lease.release()
            await trio.to_thread.run_sync(directory.close)
            await trio.to_thread.run_sync(messages.close)
            log.info("node_stopped")


async def _serve_clients(ctx: NodeContext, *, task_status: trio.TaskStatus[WebSocketServer]) -> None:
    ws = ctx.config.websocket

    async def handler(request: WebSocketRequest) -> None:
        try:
            await serve_connection(ctx, request)
        except Exception:  # noqa: BLE001 - the connection bulkhead: one connection, never the node
            log.exception("connection_crashed")

    await serve_websocket(
        handler,
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


__all__ = ["serve_node", "RunningNode"]
