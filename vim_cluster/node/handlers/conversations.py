"""read, history, contacts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ...core import read_state
from ...errors import ClientError, ErrorKind
from ...model import ChatType, Message, MessageId, UserId, chat_key
from ...protocol import frames as f
from ..context import ContactsBase, NodeContext
from .lookups import require_chat

if TYPE_CHECKING:
    from ..connection import Connection


async def read(conn: Connection, command: f.Read) -> None:
    ctx = conn.ctx
    await require_chat(conn, command.chat_type, command.chat_id, ErrorKind.NOT_MEMBER)
    reader = UserId(conn.user_id)
    # A cursor only moves forward: an older `read` (another device's, late) leaves it, and the
    # peer is told the cursor as it stands, as history's statuses show it.
    cursor = await ctx.store(ctx.messages.set_read_cursor, reader, command.chat_type, command.chat_id,
                             command.timestamp)
    if command.chat_type is ChatType.FRIEND and command.chat_id != reader:
        notice = f.ReadOut(reader, ChatType.FRIEND, cursor, by=reader)
        ctx.delivery.to_users([command.chat_id], notice)


async def history(conn: Connection, command: f.History) -> None:
    ctx = conn.ctx
    unknown_peer: ClientError | None = None
    try:
        group = await require_chat(conn, command.chat_type, command.chat_id, ErrorKind.FORBIDDEN)
    except ClientError as exc:
        if command.chat_type is not ChatType.FRIEND:
            raise
        group, unknown_peer = None, exc  # a deleted account's conversation stays readable
    key = chat_key(command.chat_type, conn.user_id, command.chat_id)
    before = MessageId(command.before) if command.before is not None else None
    messages, more = await ctx.store(ctx.messages.history, key, before, command.limit)
    if unknown_peer is not None and not messages:
        raise unknown_peer
    if group is not None:
        cursors = await ctx.store(ctx.messages.group_cursors, group.id)
        state = read_state.group_read_counts(messages, cursors, set(group.members))
        reply = f.HistoryOut(command.chat_id, command.chat_type, tuple(messages), more, rid=command.rid,
                             read_counts=state)
    else:
        statuses = await _friend_statuses(conn, messages, UserId(command.chat_id))
        reply = f.HistoryOut(command.chat_id, command.chat_type, tuple(messages), more, rid=command.rid,
                             statuses=statuses)
    await conn.reply(reply)


async def _friend_statuses(conn: Connection, messages: list[Message], peer: UserId) -> dict[int, str]:
    """sent / delivered / read of the reader's own messages, from the peer's offline set and
    read cursor (nothing for a chat with oneself)."""
    ctx, me = conn.ctx, UserId(conn.user_id)
    mine = [m.id for m in messages if m.from_id == me]
    if not mine or peer == me:
        return {}
    undelivered = await ctx.store(ctx.messages.pending_among, peer, mine)
    peer_cursors = await ctx.store(ctx.messages.read_cursors, peer)
    cursor = next((c.timestamp for c in peer_cursors if c.chat_type is ChatType.FRIEND and c.chat_id == me), 0)
    return read_state.friend_statuses(messages, me, undelivered, cursor)


async def contacts(conn: Connection, command: f.Contacts) -> None:
    ctx = conn.ctx
    me = UserId(conn.user_id)
    # Its answer costs the node 6 to 15 µs of CPU per user of the directory (docs/performance.md):
    # within the frame rate alone one connection could keep a node busy.
    budget = conn.contacts_budget
    if not budget.admit(trio.current_time()):
        raise ClientError(ErrorKind.RATE_LIMITED, "contacts asked too often for the directory's size: "
                                                  "ask again in a few seconds")
    if conn.session is not None:
        conn.session.wants_presence = True  # from now on it gets `presence` updates
    # Read after this request (and its presence watch) began, and shared with the requests
    # of other connections that wait meanwhile: a reconnect storm reads it once or twice.
    base = await ctx.contacts_base.get(lambda: _read_base(ctx))
    budget.charge(len(base.everyone), trio.current_time())
    users = [u for u in base.everyone if u.id != me]
    groups = await ctx.db(ctx.directory.groups_of, me)
    cursors = await ctx.store(ctx.messages.read_cursors, me)
    wanted = read_state.unread_cursors(me, [u.id for u in users], [g.id for g in groups], cursors)
    unread = await ctx.store(ctx.messages.unread_counts, me, wanted)
    contact_users = tuple(
        f.ContactUser(u.id, u.name, u.id in base.online, u.department_id,
                      unread.get(chat_key(ChatType.FRIEND, me, u.id), 0))
        for u in users
    )
    await conn.reply(f.ContactsOut(
        contact_users, tuple(groups), rid=command.rid, departments=tuple(base.departments),
        group_unread={g.id: unread.get(chat_key(ChatType.GROUP, me, g.id), 0) for g in groups},
        members=base.members,
    ))


async def _read_base(ctx: NodeContext) -> ContactsBase:
    everyone = await ctx.db(ctx.directory.all_users)
    departments = await ctx.db(ctx.directory.departments)
    online = await ctx.redis(ctx.registry.online, [u.id for u in everyone])
    members: dict[int, list[int]] = {}
    for u in everyone:
        if u.department_id is not None:
            members.setdefault(u.department_id, []).append(u.id)
    return ContactsBase(everyone, departments, {k: tuple(v) for k, v in members.items()},
                        frozenset(online))
