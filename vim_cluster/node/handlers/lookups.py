"""Directory checks the handlers share, each raising the documented client error."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import ClientError, ErrorKind
from ...model import ChatType, Group, GroupId, UserId

if TYPE_CHECKING:
    from ..connection import Connection
    from ..context import NodeContext


async def require_users(conn: Connection, user_ids: set[int] | list[int] | tuple[int, ...]) -> None:
    """Raises not-found unless every user exists (cached; `user delete` clears a user on every node)."""
    ctx = conn.ctx
    unknown = {u for u in user_ids if u not in ctx.known_users}
    if not unknown:
        return
    found = await ctx.db(ctx.directory.users_by_id, [UserId(u) for u in unknown])
    ctx.known_users.update(found)
    missing = unknown - set(found)
    if missing:
        raise ClientError(ErrorKind.NOT_FOUND, f"no such user: {', '.join(map(str, sorted(missing)))}")


async def group_of(ctx: NodeContext, group_id: int) -> Group | None:
    """The group, or None if there is none."""
    directory = ctx.directory
    # On the event loop when the directory knows it unchanged (SQLite), else a worker thread.
    return directory.cached_group(GroupId(group_id)) or await ctx.db(directory.group, GroupId(group_id))


async def require_group(conn: Connection, group_id: int) -> Group:
    group = await group_of(conn.ctx, group_id)
    if group is None:
        raise ClientError(ErrorKind.NOT_FOUND, f"no such group: {group_id}")
    return group


async def require_member(conn: Connection, group_id: int, kind: ErrorKind) -> Group:
    group = await require_group(conn, group_id)
    if conn.user_id not in group.members:
        raise ClientError(kind, f"you are not a member of group {group_id}")
    return group


async def require_chat(conn: Connection, chat_type: ChatType, chat_id: int, kind: ErrorKind) -> Group | None:
    """The one check of who may use a chat: a friend chat's peer must exist (not-found), a
    group's caller must be a member (`kind`: not-member to write, forbidden to read or recall).
    Returns the group, or None for a friend chat."""
    if chat_type is ChatType.FRIEND:
        await require_users(conn, [chat_id])
        return None
    return await require_member(conn, chat_id, kind)
