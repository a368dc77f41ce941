"""`vim-cluster user delete NAME [--erase]`: remove an account, and with --erase its personal data.

Order (each step idempotent, so re-running the command after a failure finishes the job):
1. the account and its group memberships go (no new login; owned groups pass on);
2. every live node is told (kick code 4006 through the master): the user's sessions close and
   each node forgets that the user exists (its cache), so an unexpired token no longer works;
3. with --erase: the content of every message the user sent becomes a `deleted` placeholder
   (id, conversation, sender id and time stay, so others' conversations keep their shape),
   the offline messages waiting for the user, their read cursors and raw logged frames go,
   and their routes are removed from Redis (sessions on dead nodes included); failed-login
   counters expire on their own within the lockout window.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from . import wiring
from .config import NodeConfig
from .errors import ClientError, CloseCode, ErrorKind, StoreUnavailable
from .model import MessageId, UserId

PAGE = 1000


@attrs.frozen
class DeleteReport:
    user_id: UserId
    account_removed: bool  # False: there was no account (a re-run)
    nodes_told: tuple[str, ...]
    kick_error: str | None  # why the live nodes could not be told, if they could not
    messages_erased: int = 0
    pending_removed: int = 0
    routes_removed: int = 0


def user_id_of(config: NodeConfig, user: str) -> tuple[UserId, str | None]:
    """The user's id and username (None: the account is gone); a bare id is accepted for an
    account already deleted (so an erasure can be finished). Raises ClientError(not-found)."""
    from .model import user_id_in

    directory = wiring.open_directory(config)
    try:
        record = directory.user_by_username(user)
        if record is None and (user_id := user_id_in(user)) is not None:
            record = directory.users_by_id([user_id]).get(user_id)
            if record is None:
                return user_id, None
        if record is not None:
            return record.id, record.username
    finally:
        directory.close()
    raise ClientError(ErrorKind.NOT_FOUND, f"no such user: {user} (give the user id to finish an erasure)")


def _remove_account(config: NodeConfig, user_id: UserId) -> bool:
    directory = wiring.open_directory(config)
    try:
        return directory.delete_user(user_id)
    finally:
        directory.close()


def _tell_nodes(config: NodeConfig, user_id: UserId) -> tuple[tuple[str, ...], str | None]:
    """Kicks the user (4006) on every live node through the master, as `vim-cluster kick`
    does (wss:// verified the same way); returns (nodes, the error or None)."""
    from functools import partial
    from urllib.parse import urlsplit

    from trio_websocket import ConnectionClosed

    from .admin import master_forward_url
    from .node.forward_link import ForwardLinkRefused, link_problem, send_as_operator
    from .node.ws_open import LinkOpenError
    from .protocol.forward_frames import Kick, Packet
    from .tls import operator_context

    try:
        registry = wiring.open_registry(config, start=False)
    except StoreUnavailable as exc:
        if config.redis.url == "embedded":  # it runs while a node of this machine does: none runs
            return (), None
        return (), str(exc)
    try:
        nodes = tuple(sorted(n.node_id for n in registry.nodes() if n.alive))
    except StoreUnavailable as exc:  # the account is gone already: say so, then why the nodes were not told
        return (), str(exc)
    finally:
        registry.close()
    if not nodes:
        return (), None  # nothing runs: no session, no cache to clear
    packets: list[Packet] = [Kick(node, user_id, None, int(CloseCode.ACCOUNT_DELETED), None) for node in nodes]
    try:
        url = master_forward_url(config)
    except StoreUnavailable as exc:
        return nodes, str(exc)
    parts = urlsplit(url)
    context = operator_context(config, parts.hostname or "") if parts.scheme == "wss" else None
    try:
        trio.run(partial(send_as_operator, url, config.cluster.secret, packets, ssl_context=context))
    except (LinkOpenError, OSError, ConnectionClosed, ForwardLinkRefused, trio.TooSlowError) as exc:
        return nodes, link_problem(url, exc)
    return nodes, None


def _erase(config: NodeConfig, user_id: UserId, progress: Callable[[int], object]) -> tuple[int, int, int]:
    store = wiring.open_messages(config)
    try:
        erased, after = 0, MessageId(0)
        while ids := store.erase_sent(user_id, after, PAGE):
            progress(len(ids))
            erased += len(ids)
            after = ids[-1]
        pending = store.forget_user(user_id)
    finally:
        store.close()
    try:
        registry = wiring.open_registry(config, start=False)
    except StoreUnavailable:
        if config.redis.url == "embedded":  # not running: no node runs, and one started later starts empty
            return erased, pending, 0
        raise
    try:
        routes = registry.forget_user(user_id)
    finally:
        registry.close()
    return erased, pending, routes


def delete_user(config: NodeConfig, user: str, erase: bool,
                progress: Callable[[int], object] = lambda n: None) -> DeleteReport:
    """Steps 1-3 of the module docstring. Raises ClientError(not-found) for an unknown user
    (without --erase), StoreUnavailable when a store is down."""
    user_id, username = user_id_of(config, user)
    if username is None and not erase:
        raise ClientError(ErrorKind.NOT_FOUND, f"no such user: {user}")
    removed = _remove_account(config, user_id) if username is not None else False
    nodes, kick_error = _tell_nodes(config, user_id)
    report = DeleteReport(user_id, removed, nodes, kick_error)
    if not erase:
        return report
    erased, pending, routes = _erase(config, user_id, progress)
    return attrs.evolve(report, messages_erased=erased, pending_removed=pending, routes_removed=routes)
