"""A session's life: open (route, hub, other-login), offline replay, close."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from ..core.login import replaced_sessions
from ..errors import CloseCode, StoreUnavailable
from ..model import ChatType, Message, MessageId, UserId
from ..ports import Route
from ..protocol import frames as f
from ..protocol.codec import OutFrame
from .hub import Session

if TYPE_CHECKING:
    from .connection import Connection

log = structlog.get_logger()
REPLAY_PAGE = 500


async def open_session(conn: Connection, user_id: int, client: str, uuid: str | None, holding: bool) -> Session:
    """Registers the route in Redis, joins the hub, and closes the sessions it replaces.

    With `holding`, live frames are held until `release` (used while replaying).
    Raises StoreUnavailable if Redis is down (then nothing was registered).
    """
    ctx = conn.ctx
    session = Session(
        id=str(await ctx.ids.next_id()),
        user_id=user_id,
        client=client,
        uuid=uuid,
        outbox=conn.outbox,
        cancel_scope=conn.cancel_scope,
        holding=[] if holding else None,
    )
    route = Route(session.id, ctx.node_id, client, uuid)
    earlier = (await ctx.redis(ctx.registry.routes, [UserId(user_id)])).get(UserId(user_id), [])
    await ctx.redis(ctx.registry.add_route, UserId(user_id), route)
    ctx.hub.add(session)
    ctx.delivery.cluster.session_opened(session)
    log.info("session_opened", session_id=session.id, user_id=user_id, client=client)
    # Sessions Redis may not list yet (opened a moment ago here) count too.
    local = [Route(s.id, ctx.node_id, s.client, s.uuid) for s in ctx.hub.sessions(user_id)]
    candidates = {r.session_id: r for r in [*earlier, *local]}
    notice = OutFrame(f.OtherLogin(uuid, ctx.node_id))
    for old in replaced_sessions(candidates.values(), session.id, client):
        ctx.delivery.kick(old.node_id, user_id, old.session_id, CloseCode.OTHER_LOGIN, notice)
    return session


async def close_session(conn: Connection) -> None:
    """Leaves the hub and removes this session's route (never a newer session's)."""
    session = conn.session
    if session is None:
        return
    ctx = conn.ctx
    ctx.hub.remove(session)
    ctx.delivery.cluster.session_closed(session)
    try:
        await ctx.redis(ctx.registry.remove_route, UserId(session.user_id), session.id)
    except StoreUnavailable as exc:
        # The route stays until this node's routes are purged; routing ignores dead sessions.
        log.warning("route_remove_failed", session_id=session.id, user_id=session.user_id, error=str(exc))
    log.info("session_closed", session_id=session.id, user_id=session.user_id)


async def replay(conn: Connection, user_id: int, sent: set[int]) -> None:
    """Sends every unconfirmed friend message and every group message newer than the read
    cursor, oldest first, as `message` frames with offline=true; adds each id to `sent`."""
    ctx = conn.ctx
    uid = UserId(user_id)
    groups = await ctx.db(ctx.directory.groups_of, uid)
    cursors = {c.chat_id: c.timestamp for c in await ctx.store(ctx.messages.read_cursors, uid)
               if c.chat_type is ChatType.GROUP}
    group_cursors = {g.id: cursors.get(g.id, 0) for g in groups}
    after = MessageId(0)
    while True:
        friends = await ctx.store(ctx.messages.pending, uid, after, REPLAY_PAGE)
        grouped = await ctx.store(ctx.messages.group_messages_after, group_cursors, after, REPLAY_PAGE)
        page = _merge_page(friends, grouped)
        if not page:
            return
        for message in page:
            if message.id not in sent:
                sent.add(message.id)
                await conn.reply(f.MessageOut(message, offline=True))
        after = MessageId(page[-1].id)


def _merge_page(a: list[Message], b: list[Message]) -> list[Message]:
    """The messages of both pages, oldest first, up to where both pages are complete."""
    bound = min([p[-1].id for p in (a, b) if len(p) == REPLAY_PAGE], default=None)
    merged = sorted(a + b, key=lambda m: m.id)
    return [m for m in merged if bound is None or m.id <= bound]


def release(session: Session, replayed: set[int]) -> None:
    """Sends the frames held during replay, but the messages replay already sent."""
    held, session.holding = session.holding or [], None
    for frame in held:
        if frame.reply.message_id() in replayed:
            continue
        session.push(frame)



