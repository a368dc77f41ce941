"""One client connection: handshake auth, reader loop, ordered outgoing queue, deadlines.

This is the connection bulkhead. A `ClientError` becomes an `error` frame and the connection
stays; `StoreUnavailable` becomes `error unavailable`; `Disconnect` closes with its code; any
other exception is logged with its traceback, answered `error internal`, and closes this one
connection (code 1011), never the node.
"""

from __future__ import annotations

import itertools
from urllib.parse import parse_qs, urlsplit

import attrs
import structlog
import trio
from trio_websocket import ConnectionClosed, Endpoint, WebSocketConnection, WebSocketRequest

from ..core.limits import RateWindow
from ..core.lockout import source_key
from ..errors import (
    UNAVAILABLE_DETAIL,
    ClientError,
    CloseCode,
    Disconnect,
    ErrorKind,
    StoreUnavailable,
)
from ..protocol import frames as f
from ..protocol.codec import FrameError, OutFrame, decode
from ..protocol.session import SessionState
from .context import NodeContext
from .hub import Session
from .outbox import CLOSE_GRACE, Close, Outbox

log = structlog.get_logger()
QUEUE_SIZE = 1024  # frames waiting in a connection's outbox (more: a slow consumer)
QUEUE_BYTES = 4 * 1024 * 1024  # bytes of frames waiting in it (more: a slow consumer)
ACK_WINDOW = 256  # messages of one connection waiting for their commit (then the reader waits)
_conn_ids = itertools.count(1)


@attrs.define(eq=False)
class Connection:
    ctx: NodeContext
    ws: WebSocketConnection
    conn_id: int
    state: SessionState
    outbox: Outbox
    cancel_scope: trio.CancelScope  # cancelled: stop reading (a kick of a full outbox, a slow consumer)
    address: str  # the client's source key (core.lockout.source_key): what lockouts count by
    session: Session | None = None
    unacked: int = 0  # sent messages waiting for their commit
    _commits: trio.Event | None = None  # set when one of them is committed (someone waits)

    @property
    def user_id(self) -> int:
        assert self.state.user_id is not None
        return self.state.user_id

    @property
    def session_id(self) -> str | None:
        return self.session.id if self.session else None

    async def reply(self, reply: f.Reply) -> None:
        """Queue a reply behind whatever this connection was sent before (waits for room)."""
        await self.outbox.room()
        self.outbox.append(OutFrame(reply))

    def answer(self, reply: f.Reply) -> None:
        """Queue a reply without waiting (acks: the ack window bounds them)."""
        self.outbox.append(OutFrame(reply))

    async def ack_window(self) -> None:
        """Waits while ACK_WINDOW sent messages wait for their commit."""
        await self._wait_commits(ACK_WINDOW - 1)

    async def all_committed(self) -> None:
        await self._wait_commits(0)

    async def _wait_commits(self, at_most: int) -> None:
        while self.unacked > at_most:
            if self._commits is None:
                self._commits = trio.Event()
            await self._commits.wait()

    def acked_one(self) -> None:
        self.unacked -= 1
        if self._commits is not None:
            self._commits.set()
            self._commits = None

    async def open_session(self, user_id: int, client: str, uuid: str | None, holding: bool) -> Session:
        """Make this connection a live session of `user_id` (routes, hub, other-login)."""
        from .sessions import open_session  # the session lifecycle lives with its peers

        self.session = await open_session(self, user_id, client, uuid, holding)
        return self.session


async def serve_connection(ctx: NodeContext, request: WebSocketRequest) -> None:
    """trio-websocket handler: authenticate the handshake, then run the connection. The
    connection bulkhead: whatever fails here is logged and ends this connection, not the node."""
    from .handlers.account import authenticate_token
    from .sessions import close_session

    conn: Connection | None = None
    try:
        query = parse_qs(urlsplit(request.path).query)
        token = query["token"][0] if "token" in query else None
        client = query["client"][0][:32] if "client" in query else "web"
        uuid = query["uuid"][0][:64] if "uuid" in query else None
        handshake_user: int | None = None
        if ctx.draining:  # an operator drained this node (see node/operator.py)
            await request.reject(503, body=b"node draining: connect to another node")
            return
        if token:
            try:
                handshake_user = await authenticate_token(ctx, token)
            except ClientError as exc:
                log.info("handshake_rejected", reason=exc.detail)
                await request.reject(401, body=exc.detail.encode())
                return
            except StoreUnavailable as exc:
                log.warning("handshake_unavailable", error=str(exc))
                await request.reject(503, body=UNAVAILABLE_DETAIL.encode())
                return
        ws = await request.accept()
        conn_id = next(_conn_ids)
        structlog.contextvars.bind_contextvars(conn_id=conn_id)
        # The outbox starts its writer in the connection's nursery when there is something to
        # send; `conn.cancel_scope` (kicks, slow consumers) stops the reading, not the writing.
        async with trio.open_nursery() as nursery:
            state = SessionState(trio.current_time(), RateWindow(ctx.config.websocket.rate_limit),
                                 ctx.config.websocket.idle_timeout)
            conn = Connection(ctx, ws, conn_id, state, Outbox(ws, QUEUE_SIZE, QUEUE_BYTES), trio.CancelScope(),
                              _source(request))
            conn.outbox.attach(nursery, nursery.cancel_scope)
            close: Close | None = None
            with conn.cancel_scope:
                close = await _authenticate_handshake(conn, handshake_user, client, uuid)
                if close is None:
                    close = await _reader(conn)
                    await conn.all_committed()  # their acks go out before the close
            with trio.move_on_after(2 * CLOSE_GRACE):
                if close is not None and not conn.cancel_scope.cancel_called:
                    while not conn.outbox.close(close):
                        await conn.outbox.room()
                await trio.sleep_forever()  # the writer ends the nursery once it closed
            nursery.cancel_scope.cancel()  # not closed in time: end the writer too
    except Exception:  # noqa: BLE001 - the connection bulkhead: one connection, never the node
        log.exception("connection_crashed")
    finally:
        if conn is not None:
            with trio.CancelScope(shield=True):
                await close_session(conn)
                if conn.outbox.broken:
                    await conn.outbox.drop()
                elif conn.session is not None and conn.session.close_code is not None:
                    with trio.move_on_after(CLOSE_GRACE):
                        await conn.ws.aclose(int(conn.session.close_code))


def _source(request: WebSocketRequest) -> str:
    remote = request.remote
    return source_key(str(remote.address) if isinstance(remote, Endpoint) else str(remote))


async def _authenticate_handshake(
    conn: Connection, user: int | None, client: str, uuid: str | None
) -> Close | None:
    if user is None:
        return None
    try:
        await conn.open_session(user, client, uuid, holding=False)
    except StoreUnavailable as exc:
        log.warning("session_open_failed", user_id=user, error=str(exc))
        return Close(CloseCode.INTERNAL, "the cluster is unavailable")
    conn.state.transition("handshake", user)
    structlog.contextvars.bind_contextvars(user_id=user)
    return None


async def _reader(conn: Connection) -> Close:
    """Reads and handles frames until the connection must close; returns how to close it."""
    state = conn.state
    max_frame = conn.ctx.config.websocket.max_frame
    while True:
        # Only the wait for a frame is under the deadline: a frame that arrived in time is
        # always handled and answered, however long its handler takes.
        data: str | bytes | None = None
        with trio.move_on_at(state.deadline()):
            try:
                data = await conn.ws.get_message()
            except ConnectionClosed:
                return Close(CloseCode.NORMAL, "closed by peer")
        if data is None:
            if state.auth_expired(trio.current_time()):
                return Close(CloseCode.AUTH_TIMEOUT, "not authenticated within 10 s")
            return Close(CloseCode.GOING_AWAY, "idle timeout")
        # trio-websocket caps text frames in characters; the limit is in bytes.
        if isinstance(data, str) and len(data) * 4 > max_frame and len(data.encode("utf-8", "surrogatepass")) > max_frame:
            return Close(CloseCode.TOO_BIG, f"frame larger than {max_frame} bytes")
        if not state.frame_received(trio.current_time()):
            await conn.reply(f.ErrorReply(ErrorKind.RATE_LIMITED, "more frames per second than allowed"))
            continue
        if isinstance(data, bytes):
            conn.outbox.binary = True
        try:
            await _handle(conn, data)
        except Disconnect as exc:
            return Close(exc.code, exc.reason)


async def _handle(conn: Connection, data: str | bytes) -> None:
    from .handlers import dispatch

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
    except StoreUnavailable as exc:
        log.warning("store_unavailable", error=str(exc), rid=rid, cid=cid)
        await conn.reply(f.ErrorReply(ErrorKind.UNAVAILABLE, UNAVAILABLE_DETAIL, rid=rid, cid=cid))
    except (Disconnect, trio.Cancelled, ConnectionClosed):
        raise
    except Exception as exc:  # noqa: BLE001 - the connection bulkhead
        log.exception("handler_crashed", rid=rid, cid=cid, command=type(exc).__name__)
        await conn.reply(f.ErrorReply(ErrorKind.INTERNAL, "internal error", rid=rid, cid=cid))
        raise Disconnect(CloseCode.INTERNAL, "internal error") from exc
