"""group-create, group-add, group-remove: the owner manages members; everyone involved hears."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from ...errors import ClientError, ErrorKind, NotFound
from ...ids import first_id_at
from ...model import ChatType, Group, GroupId, UserId
from ...ports import GroupQuota
from ...protocol import frames as f
from .lookups import require_group, require_users

if TYPE_CHECKING:
    from ..connection import Connection

log = structlog.get_logger()
MAX_MEMBERS = 1000
QUOTA_WINDOW_S = 3600  # vim.group.create-per-hour counts the groups created in the last hour


async def _start_cursors(conn: Connection, group_id: int, members: set[int]) -> None:
    """New members start reading at now: they are not replayed the group's older messages.

    One ms earlier than now, so a message sent in this very millisecond is still replayed.
    """
    ctx = conn.ctx
    now = ctx.clock_ms() - 1
    for member in members:
        await ctx.store(ctx.messages.set_read_cursor, UserId(member), ChatType.GROUP, group_id, now)


def _announce(conn: Connection, group: Group, also: set[int], rid: str | None) -> f.GroupOk:
    audience = set(group.members) | also
    conn.ctx.delivery.to_users(audience, f.GroupOk(group), exclude=conn.session_id)
    return f.GroupOk(group, rid=rid)


async def create(conn: Connection, command: f.GroupCreate) -> None:
    ctx = conn.ctx
    members = set(command.members) | {conn.user_id}
    if len(members) > MAX_MEMBERS:
        raise ClientError(ErrorKind.INVALID, f"a group has at most {MAX_MEMBERS} members")
    await require_users(conn, members)
    group = Group(GroupId(await ctx.ids.next_id()), command.name, UserId(conn.user_id),
                  tuple(sorted(UserId(m) for m in members)))
    limits = ctx.config.group
    quota = GroupQuota(GroupId(first_id_at(ctx.clock_ms() - QUOTA_WINDOW_S * 1000)), limits.create_per_hour,
                       QUOTA_WINDOW_S, limits.max_owned)
    try:
        await ctx.db(ctx.directory.create_group, group, quota)
    except ClientError as exc:
        log.info("group_create_refused", user_id=conn.user_id, error=exc.kind.value, detail=exc.detail)
        raise
    await _start_cursors(conn, group.id, members)
    log.info("group_created", group_id=group.id, members=len(members))
    await conn.reply(_announce(conn, group, set(), command.rid))


async def _owned(conn: Connection, group_id: int) -> Group:
    group = await require_group(conn, group_id)
    if group.owner_id != conn.user_id:
        raise ClientError(ErrorKind.FORBIDDEN, "only the group's owner may change its members")
    return group


async def add(conn: Connection, command: f.GroupAdd) -> None:
    ctx = conn.ctx
    group = await _owned(conn, command.group_id)
    new = set(command.members) - set(group.members)
    if len(group.members) + len(new) > MAX_MEMBERS:
        raise ClientError(ErrorKind.INVALID, f"a group has at most {MAX_MEMBERS} members")
    await require_users(conn, new)
    try:
        changed = await ctx.db(ctx.directory.change_members, group.id, [UserId(m) for m in new], [], MAX_MEMBERS)
    except NotFound:
        raise ClientError(ErrorKind.NOT_FOUND, f"no such group: {group.id}") from None
    await _start_cursors(conn, group.id, new)
    await conn.reply(_announce(conn, changed, set(), command.rid))


async def remove(conn: Connection, command: f.GroupRemove) -> None:
    ctx = conn.ctx
    group = await _owned(conn, command.group_id)
    if group.owner_id in command.members:
        raise ClientError(ErrorKind.INVALID, "the owner cannot be removed from the group")
    gone = set(command.members) & set(group.members)
    try:
        changed = await ctx.db(ctx.directory.change_members, group.id, [], [UserId(m) for m in gone])
    except NotFound:
        raise ClientError(ErrorKind.NOT_FOUND, f"no such group: {group.id}") from None
    await conn.reply(_announce(conn, changed, gone, command.rid))
