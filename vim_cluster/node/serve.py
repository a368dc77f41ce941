"""Serving one client connection: handshake auth, the reader loop, deadlines, the close.

This is the connection bulkhead. A `ClientError` becomes an `error` frame and the connection
stays; `StoreUnavailable` becomes `error unavailable`; `Disconnect` closes with its code; any
other exception is logged with its traceback, answered `error internal`, and closes this one
connection (code 1011), never the node.

One task per connection reads (node/ws_server.py); the SendQueue's writer task exists only
while frames wait to be sent, and a `ready`'s offline replay only while it runs, beside the
reader (node/offline_replay.py): the client's frames are read and answered during it.
"""

from __future__ import annotations

import itertools
import math
from urllib.parse import parse_qs, urlsplit

import structlog
import trio

from ..core.lockout import source_key
from ..errors import (
    DRAINING_DETAIL,
    UNAVAILABLE_DETAIL,
    ClientError,
    CloseCode,
    Disconnect,
    ErrorKind,
    NodeDraining,
    StoreUnavailable,
)
from ..protocol import frames as f
from ..protocol.codec import FrameError, decode, request_ids
from ..protocol.session import ClientState
from .connection import Connection
from .context import NodeContext
from .handlers import dispatch
from .handlers.account import authenticate_token
from .send_queue import Close
from .ws_server import Request, ServerSocket

log = structlog.get_logger()
_conn_ids = itertools.count(1)


async def serve_connection(ctx: NodeContext, request: Request) -> None:
    """ws_server handler: authenticate the handshake, then run the connection. The connection
    bulkhead: whatever fails here is logged and ends this connection, not the node."""
    conn: Connection | None = None
    try:
        opened = await _accept(ctx, request)
        if opened is None:
            return
        ws, handshake_user, client, uuid = opened
        address, slot = source_key(request.remote), request.slot
        del request, opened  # nothing of the handshake stays with the connection
        conn_id = next(_conn_ids)
        structlog.contextvars.bind_contextvars(conn_id=conn_id)
        # The queue starts its writer in the connection's nursery when there is something to
        # send; `conn.cancel_scope` (kicks, slow consumers) stops the reading, not the writing.
        async with trio.open_nursery() as nursery:
            conn = Connection.new(ctx, ws, conn_id, address, slot)
            conn.send_queue.attach(nursery, nursery.cancel_scope)
            close: Close | None = None
            with conn.cancel_scope:  # cancelled by a kick, or by the reader's deadline
                close = await _authenticate_handshake(conn, handshake_user, client, uuid)
                if close is None:
                    close = await _reader(conn)
                    await conn.all_committed()  # their acks go out before the close
            kicked = conn.session is not None and conn.session.close_code is not None
            if close is None and not kicked and conn.cancel_scope.cancelled_caught:  # the deadline
                close = _timed_out(conn.state)
            with trio.move_on_after(2 * ctx.tunables.client_close_grace_s):
                if close is not None and not kicked:
                    while not conn.send_queue.close(close):
                        await conn.send_queue.room()
                await trio.sleep_forever()  # the writer ends the nursery once it closed
            nursery.cancel_scope.cancel()  # not closed in time: end the writer too
    except Exception:  # noqa: BLE001 - the connection bulkhead: one connection, never the node
        log.exception("connection_crashed")
    finally:
        if conn is not None:
            with trio.CancelScope(shield=True):
                await conn.close_session()
                await _close_frame_if_unsent(conn)


async def _accept(ctx: NodeContext, request: Request) -> tuple[ServerSocket, int | None, str, str | None] | None:
    """Checks the handshake (draining: 503; a bad token: 401; the directory down: 503) and
    accepts it: the socket, the token's user (None without a token), client type and uuid."""
    query = parse_qs(urlsplit(request.path).query)
    token = query["token"][0] if "token" in query else None
    client = query["client"][0][:32] if "client" in query else "web"
    uuid = query["uuid"][0][:64] if "uuid" in query else None
    user: int | None = None
    if ctx.draining:  # an operator drained this node (see node/operator.py)
        await request.reject(503, b"node draining: connect to another node")
        return None
    refused = await ctx.cluster_hosts.origin_refusal(ctx.config, ctx.redis, ctx.registry, request.origin,
                                                     request.host)
    if refused is not None:  # a page of another site, or one reached by DNS rebinding (core/origins.py)
        log.warning("handshake_rejected", reason=refused, origin=request.origin, host=request.host,
                    remote=request.remote)
        await request.reject(403, f"{refused}: list the page's origin in vim.websocket.allowed-origins".encode())
        return None
    if token:
        try:
            user = await authenticate_token(ctx, token)
        except ClientError as exc:
            log.info("handshake_rejected", reason=exc.detail)
            await request.reject(401, exc.detail.encode())
            return None
        except StoreUnavailable as exc:
            log.warning("handshake_unavailable", error=str(exc))
            await request.reject(503, UNAVAILABLE_DETAIL.encode())
            return None
    return await request.accept(), user, client, uuid


async def _close_frame_if_unsent(conn: Connection) -> None:
    """A session closed with a code whose writer could not send the close frame in time."""
    session = conn.session
    if conn.ws.broken or session is None or session.close_code is None:
        return
    data = conn.ws.close_frame(int(session.close_code), session.close_code.name.lower().replace("_", "-"))
    if data:
        with trio.move_on_after(conn.ctx.tunables.client_close_grace_s):
            try:
                await conn.ws.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("close_frame_not_sent", code=int(session.close_code), error=str(exc))


async def _authenticate_handshake(
    conn: Connection, user: int | None, client: str, uuid: str | None
) -> Close | None:
    if user is None:
        return None
    try:
        await conn.open_session(user, client, uuid, holding=False)
    except NodeDraining:
        return Close(CloseCode.DRAINING, DRAINING_DETAIL)
    except StoreUnavailable as exc:
        log.warning("session_open_failed", user_id=user, error=str(exc))
        return Close(CloseCode.INTERNAL, "the cluster is unavailable")
    conn.state.transition("handshake", user)
    structlog.contextvars.bind_contextvars(user_id=user)
    return None


def _timed_out(state: ClientState) -> Close:
    if state.auth_expired(trio.current_time()):
        return Close(CloseCode.AUTH_TIMEOUT, f"not authenticated within {state.auth_timeout:g} s")
    return Close(CloseCode.GOING_AWAY, "idle timeout")


async def _reader(conn: Connection) -> Close:
    """Reads and handles frames until the connection must close; returns how to close it.
    When no frame comes in time, the connection's cancel scope ends it at its deadline (one
    scope for kicks and deadlines: an idle connection holds one, not two)."""
    state = conn.state
    queue = conn.send_queue
    scope = conn.cancel_scope
    max_frame = conn.ctx.config.websocket.max_frame
    while True:
        # Only the wait for a frame is under the deadline: a frame that arrived in time is
        # always handled and answered, however long its handler takes. The deadline is set
        # just before the socket is waited on (a frame read with others is handled at once).
        try:
            data = await conn.ws.receive(conn.pinged, conn.arm_deadline)
        except Disconnect as exc:  # the peer closed, went away or broke the protocol
            scope.deadline = math.inf
            return Close(exc.code, exc.reason)
        if scope.deadline != math.inf:
            scope.deadline = math.inf
        # The socket caps text frames in characters; the limit is in bytes.
        if isinstance(data, str) and len(data) * 4 > max_frame and len(data.encode("utf-8", "surrogatepass")) > max_frame:
            return Close(CloseCode.TOO_BIG, f"frame larger than {max_frame} bytes")
        if isinstance(data, bytes):  # answered in MessagePack from its first binary frame on
            queue.binary = True
        if not state.frame_received(trio.current_time()):
            rid, cid = request_ids(data)
            await conn.reply(f.ErrorReply(ErrorKind.RATE_LIMITED, "more frames per second than allowed", rid=rid, cid=cid))
            continue
        try:
            await _handle(conn, data)
        except Disconnect as exc:
            return Close(exc.code, exc.reason)


async def _handle(conn: Connection, data: str | bytes) -> None:
    rid = cid = None
    try:
        command = decode(data, max_content=conn.ctx.config.websocket.max_content)
        rid = command.rid
        cid = getattr(command, "cid", None)
        conn.state.check(command)
        await dispatch(conn, command)
    except FrameError as exc:
        await conn.reply(exc.reply())
    except ClientError as exc:
        await conn.reply(f.ErrorReply(exc.kind, exc.detail, rid=rid, cid=cid))
    except NodeDraining as exc:  # a `ready` once the node drains or stops: reconnect elsewhere
        raise Disconnect(CloseCode.DRAINING, DRAINING_DETAIL) from exc
    except StoreUnavailable as exc:
        log.warning("store_unavailable", error=str(exc), rid=rid, cid=cid)
        await conn.reply(f.ErrorReply(ErrorKind.UNAVAILABLE, UNAVAILABLE_DETAIL, rid=rid, cid=cid))
    except (Disconnect, trio.Cancelled):
        raise
    except Exception as exc:  # noqa: BLE001 - the connection bulkhead
        log.exception("handler_crashed", rid=rid, cid=cid, command=type(exc).__name__)
        await conn.reply(f.ErrorReply(ErrorKind.INTERNAL, "internal error", rid=rid, cid=cid))
        raise Disconnect(CloseCode.INTERNAL, "internal error") from exc
