"""read, history, contacts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import ClientError, ErrorKind
from ...model import ChatType, MessageId, UserId, chat_key
from ...protocol import frames as f
from .lookups import require_member, require_users

if TYPE_CHECKING:
    from ..connection import Connection


async def read(conn: Connection, command: f.Read) -> None:
    ctx = conn.ctx
    if command.chat_type is ChatType.FRIEND:
        await require_users(conn, [command.chat_id])
    else:
        await require_member(conn, command.chat_id, ErrorKind.NOT_MEMBER)
    reader = UserId(conn.user_id)
    await ctx.store(ctx.messages.set_read_cursor, reader, command.chat_type, command.chat_id, command.timestamp)
    if command.chat_type is ChatType.FRIEND and command.chat_id != reader:
        notice = f.ReadOut(reader, ChatType.FRIEND, command.timestamp, by=reader)
        ctx.delivery.to_users([command.chat_id], notice)


async def history(conn: Connection, command: f.History) -> None:
    ctx = conn.ctx
    unknown_peer: ClientError | None = None
    if command.chat_type is ChatType.FRIEND:
        try:
            await require_users(conn, [command.chat_id])
        except ClientError as exc:  # a deleted account's conversation stays readable
            unknown_peer = exc
    else:
        await require_member(conn, command.chat_id, ErrorKind.FORBIDDEN)
    key = chat_key(command.chat_type, conn.user_id, command.chat_id)
    before = MessageId(command.before) if command.before is not None else None
    messages, more = await ctx.store(ctx.messages.history, key, before, command.limit)
    if unknown_peer is not None and not messages:
        raise unknown_peer
    reply = f.HistoryOut(command.chat_id, command.chat_type, tuple(messages), more, rid=command.rid)
    await conn.reply(reply)


async def contacts(conn: Connection, command: f.Contacts) -> None:
    ctx = conn.ctx
    users = [u for u in await ctx.db(ctx.directory.all_users) if u.id != conn.user_id]
    groups = await ctx.db(ctx.directory.groups_of, UserId(conn.user_id))
    routes = await ctx.redis(ctx.registry.routes, [u.id for u in users])
    contact_users = tuple(f.ContactUser(u.id, u.name, bool(routes.get(u.id))) for u in users)
    await conn.reply(f.ContactsOut(contact_users, tuple(groups), rid=command.rid))
