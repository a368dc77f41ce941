"""Offline replay at `ready`: every message a session missed, then the live frames held
meanwhile (the session's open and close are Connection's, node/connection.py).

The replay is a task of the connection's nursery, beside its reader (`start`): the client's
frames are read and answered while it runs (a `received` for each replayed message, a
`message`, a `history`), their answers queued among the replayed frames. The replay takes at
most half the send queue (SendQueue.takes, `spare`), so an answer waits behind that much of it
at most, and the reader never waits for room the replay took. Live frames are held
(Session.holding) until `sync-done` is queued, as before.

The connection is not closed as idle while the replay runs (ClientState.replaying): a client
that reads a long replay need not send anything meanwhile. Its wait for room bounds a client
that reads nothing (`queue_frame`: 4004 after the idle timeout), and the idle timer restarts
when the replay ends. A close of the connection (a kick, the client's own) wakes that wait
(SendQueue.close): the replay ends at once.
"""

from __future__ import annotations

import functools

import structlog

from ..errors import UNAVAILABLE_DETAIL, CloseCode, ErrorKind, StoreUnavailable
from ..model import ChatType, Message, MessageId, UserId
from ..protocol import frames as f
from ..protocol.codec import OutFrame
from .connection import Connection
from .local_sessions import Session

log = structlog.get_logger()


def start(conn: Connection, user_id: int, rid: str | None) -> None:
    """Starts the replay of a `ready` just answered `ready-ok` beside the connection's reader
    (the session holds live frames meanwhile); if the connection has ended, releases them (its
    queue drops them)."""
    assert conn.session is not None
    conn.state.replaying = True  # not idle meanwhile; `run` ends it
    if not conn.send_queue.start_soon(functools.partial(run, conn, conn.session, user_id, rid)):
        release(conn.session, set())
        conn.replay_ended()


async def run(conn: Connection, session: Session, user_id: int, rid: str | None) -> None:
    """The replay task: the messages, `sync-done {count}` (with the `ready`'s `rid`), then the
    frames held meanwhile. It ends with its connection (whose queue then drops what comes:
    `replay` stops) or when the connection's nursery is cancelled. A failure ends this task
    only, answered as a failed `ready` was when the replay ran in the reader (node/serve.py):
    StoreUnavailable `error unavailable` (the connection stays; the rest comes at the next
    `ready`: a message is replayed until it is confirmed), anything else is logged, answered
    `error internal` and closes the connection 1011 after what was queued before."""
    replayed: set[int] = set()
    try:
        try:
            await replay(conn, user_id, replayed)
            await queue_frame(conn, OutFrame(f.SyncDone(len(replayed), rid=rid)))
        finally:
            # Live frames flow again whatever happened: after an error mid-replay the rest comes
            # next time, since replay lasts until `received`.
            release(session, replayed)
            conn.replay_ended()  # the idle timer runs again, from now
    except StoreUnavailable as exc:
        log.warning("store_unavailable", error=str(exc), rid=rid)
        await conn.reply(f.ErrorReply(ErrorKind.UNAVAILABLE, UNAVAILABLE_DETAIL, rid=rid))
    except Exception:  # noqa: BLE001 - the connection bulkhead: this connection, never the node
        log.exception("replay_crashed", rid=rid)
        session.kick(CloseCode.INTERNAL, "internal error",
                     OutFrame(f.ErrorReply(ErrorKind.INTERNAL, "internal error", rid=rid)))


async def replay(conn: Connection, user_id: int, sent: set[int]) -> None:
    """Once the cluster routes to the session: sends every unconfirmed friend message and every
    group message newer than the read cursor, oldest first, as `message` frames with offline=true; adds each id to `sent`.
    Stops once the connection closes (its queue drops what comes)."""
    ctx = conn.ctx
    if conn.session is not None:  # what is relayed to it from now on comes live
        await ctx.delivery.cluster.routed(conn.session)
    uid = UserId(user_id)
    groups = await ctx.db(ctx.directory.groups_of, uid)
    cursors = {c.chat_id: c.timestamp for c in await ctx.store(ctx.messages.read_cursors, uid)
               if c.chat_type is ChatType.GROUP}
    group_cursors = {g.id: cursors.get(g.id, 0) for g in groups}
    after = MessageId(0)
    size = ctx.tunables.replay_page
    queue = conn.send_queue
    while not queue.closing:
        friends = await ctx.store(ctx.messages.pending, uid, after, size)
        grouped = await ctx.store(ctx.messages.group_messages_after, group_cursors, after, size)
        page = merge_page(friends, grouped, size)
        if not page:
            return
        for message in page:
            if queue.closing:
                return
            if message.id not in sent:
                sent.add(message.id)
                await queue_frame(conn, OutFrame(f.MessageOut(message, offline=True)))
        after = MessageId(page[-1].id)


async def queue_frame(conn: Connection, frame: OutFrame) -> None:
    """Queues a frame of the replay once the send queue takes it with half of the queue (frames
    and bytes) still free: that half is the reader's, for the answers to what the client sends
    meanwhile. Waits for the idle timeout at most, as Connection.reply does: a client that took
    nothing for so long is a slow consumer (closed 4004). That is what closes a client that
    reads nothing during its replay (it is not closed as idle meanwhile: ClientState.replaying);
    a close of the connection ends the wait at once (the queue then drops the frame)."""
    queue = conn.send_queue
    size = len(frame.payload(queue.binary))
    if not queue.takes(1, size, spare=True) and not await conn.wait_for_room(1, size, spare=True):
        return
    queue.append(frame)


def merge_page(a: list[Message], b: list[Message], size: int) -> list[Message]:
    """The messages of both pages (of at most `size`), oldest first, up to where both pages are complete."""
    bound = min([p[-1].id for p in (a, b) if len(p) == size], default=None)
    merged = sorted(a + b, key=lambda m: m.id)
    return [m for m in merged if bound is None or m.id <= bound]


def release(session: Session, replayed: set[int]) -> None:
    """Sends the frames held during replay, but the messages replay already sent."""
    held, session.holding, session.held_bytes = session.holding or [], None, 0
    for frame in held:
        if frame.reply.message_id() in replayed:
            continue
        session.push(frame)
