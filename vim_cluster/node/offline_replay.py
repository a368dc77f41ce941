"""Offline replay at `ready`: every message a session missed, then the live frames held
meanwhile (the session's open and close are Connection's, node/connection.py)."""

from __future__ import annotations

from ..model import ChatType, Message, MessageId, UserId
from ..protocol import frames as f
from .connection import Connection
from .local_sessions import Session


async def replay(conn: Connection, user_id: int, sent: set[int]) -> None:
    """Once the cluster routes to the session: sends every unconfirmed friend message and every
    group message newer than the read cursor, oldest first, as `message` frames with offline=true; adds each id to `sent`."""
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
    while True:
        friends = await ctx.store(ctx.messages.pending, uid, after, size)
        grouped = await ctx.store(ctx.messages.group_messages_after, group_cursors, after, size)
        page = merge_page(friends, grouped, size)
        if not page:
            return
        for message in page:
            if message.id not in sent:
                sent.add(message.id)
                await conn.reply(f.MessageOut(message, offline=True))
        after = MessageId(page[-1].id)


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
