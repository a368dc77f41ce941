"""Operator actions that work on the stores directly (no running node needed)."""

from __future__ import annotations

import os
import secrets
import time

from .config import NodeConfig
from .core import auth
from .errors import ClientError, Conflict, ErrorKind
from .ids import IdGenerator
from .model import User, UserId
from .node import wiring
from .protocol.codec import MIN_PASSWORD, USERNAME_RE

ADMIN_LEASE_S = 30


def add_user(config: NodeConfig, username: str, password: str, name: str | None = None) -> int:
    """Creates a user; returns its id. Raises ClientError(invalid|conflict)."""
    if not USERNAME_RE.match(username):
        raise ClientError(ErrorKind.INVALID, f"username must match {USERNAME_RE.pattern}")
    if len(password) < MIN_PASSWORD:
        raise ClientError(ErrorKind.INVALID, f"password must be at least {MIN_PASSWORD} characters")
    # Ids are minted with a worker id leased like a node's, so they never collide with a node's.
    registry = wiring.open_registry(config)
    try:
        worker = registry.lease_worker("admin", f"admin-{os.getpid()}-{secrets.token_hex(4)}", ADMIN_LEASE_S)
    finally:
        registry.close()
    ids = IdGenerator(worker, lambda: time.time_ns() // 1_000_000)
    user = User(UserId(ids.next_id()), username, name or username, auth.hash_password(password))
    directory = wiring.open_directory(config)
    try:
        directory.create_user(user)
    except Conflict:
        raise ClientError(ErrorKind.CONFLICT, f"the username {username!r} is taken") from None
    finally:
        directory.close()
    return user.id


__all__ = ["add_user"]
