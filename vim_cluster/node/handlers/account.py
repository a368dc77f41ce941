"""ping, register, login, ready."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from ...core import auth, usernames
from ...core.lockout import EXHAUSTED_ORDER, registrations_counted
from ...errors import ClientError, Conflict, ErrorKind
from ...model import User, UserId
from ...protocol import frames as f
from .. import offline_replay

if TYPE_CHECKING:
    from ..connection import Connection
    from ..context import NodeContext

log = structlog.get_logger()


async def raw_ping(conn: Connection, command: f.RawPing) -> None:
    await conn.reply(f.RawPong())


async def ping(conn: Connection, command: f.Ping) -> None:
    await conn.reply(f.Pong(conn.ctx.clock_ms(), rid=command.rid))


async def register(conn: Connection, command: f.Register) -> None:
    """Counted per address before the password is hashed (core.lockout): the hashing threads
    are the logins' too."""
    ctx = conn.ctx
    policy = ctx.config.lockout
    if registrations_counted(conn.address) and not await ctx.redis(
            ctx.registry.reserve_register, conn.address, policy.window_s, policy.registrations_per_address):
        log.warning("register_limited", address=conn.address)
        minutes = policy.window_s // 60
        raise ClientError(ErrorKind.RATE_LIMITED, f"too many new accounts from this address: try again within {minutes} minutes")
    password_hash = await ctx.cpu(auth.hash_password, command.password)
    user = User(UserId(await ctx.ids.next_id()), command.username, command.name or command.username, password_hash)
    try:
        await ctx.db(ctx.directory.create_user, user)
    except Conflict:
        raise ClientError(ErrorKind.CONFLICT, f"the username {command.username!r} is taken") from None
    ctx.known_users.add(user.id)
    log.info("user_registered", user_id=user.id)
    await conn.reply(f.RegisterOk(user.id, rid=command.rid))


async def login(conn: Connection, command: f.Login) -> None:
    """Counts the attempt first (atomically, see core.lockout), then checks the password: as
    many guesses as the lockout allows are checked, however many arrive at once. The counters
    are the username's whether or not it exists, and a refusal comes before the directory is
    asked: `locked` says nothing of whether the account exists."""
    ctx = conn.ctx
    policy = ctx.config.lockout
    key = usernames.key(command.username)
    refused = await ctx.redis(ctx.registry.reserve_login, key, conn.address, policy.window_s, policy.limits)
    if refused:
        scope = EXHAUSTED_ORDER[refused - 1]
        log.warning("login_locked", scope=scope.name.lower(), address=conn.address)
        minutes = policy.window_s // 60
        raise ClientError(ErrorKind.LOCKED, f"too many failed logins for {scope.value}: try again within {minutes} minutes")
    user = await ctx.db(ctx.directory.user_by_username, command.username)
    password_hash = user.password_hash if user else auth.DUMMY_HASH
    valid = await ctx.cpu(auth.verify_password, password_hash, command.password)
    if user is None or not valid:
        log.info("login_failed", user_id=user.id if user else None, address=conn.address)
        raise ClientError(ErrorKind.UNAUTHORIZED, "wrong username or password")
    await ctx.redis(ctx.registry.refund_login, key, conn.address)
    token, expires_at = ctx.tokens.issue(user.id, ctx.clock_ms())
    log.info("login_ok", user_id=user.id, address=conn.address)
    await conn.reply(f.LoginOk(user.id, token, expires_at, rid=command.rid))


async def _ready_user(conn: Connection, command: f.Ready) -> int:
    ctx = conn.ctx
    if command.token is None:
        if conn.state.authenticated:
            return conn.user_id
        raise ClientError(ErrorKind.UNAUTHORIZED, "ready needs the token that login returned")
    user_id = await authenticate_token(ctx, command.token)
    if conn.state.authenticated and user_id != conn.user_id:
        raise ClientError(ErrorKind.INVALID, "the token is another user's than the handshake's")
    return user_id


async def authenticate_token(ctx: NodeContext, token: str) -> int:
    """The one check of a token, for `ready` and for the handshake URL alike: the user id of a
    well-signed, unexpired token whose user exists; ClientError(unauthorized) otherwise
    (StoreUnavailable if the directory cannot say)."""
    user_id = ctx.tokens.verify(token, ctx.clock_ms())
    if user_id not in ctx.known_users:
        if not await ctx.db(ctx.directory.users_by_id, [UserId(user_id)]):
            raise ClientError(ErrorKind.UNAUTHORIZED, "the token's user does not exist")
        ctx.known_users.add(user_id)
    return user_id


async def ready(conn: Connection, command: f.Ready) -> None:
    ctx = conn.ctx
    user_id = await _ready_user(conn, command)
    if conn.session is None:
        await conn.open_session(user_id, command.client, command.uuid, holding=True)
        structlog.contextvars.bind_contextvars(user_id=user_id)
    else:
        conn.session.holding = []
    assert conn.session is not None
    conn.state.transition("ready", user_id)
    await conn.reply(f.ReadyOk(user_id, ctx.node_id, ctx.clock_ms(),
                               round(ctx.config.message.recall_window * 1000), rid=command.rid))
    # The replay runs beside the reader: the client's frames are read and answered meanwhile.
    offline_replay.start(conn, user_id, command.rid)
