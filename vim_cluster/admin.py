"""Operator actions that work on the stores directly (no running node needed)."""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.error
import urllib.request

from . import departments, wiring
from .config import NodeConfig, url_host
from .core import auth, names, usernames
from .core.lease import MintGate
from .core.mastership import MasterView, shown_role
from .errors import ClientError, Conflict, ErrorKind, StoreUnavailable
from .ids import IdGenerator
from .model import User, UserId, user_id_in
from .ports import NodeInfo, Route
from .protocol.codec import MIN_PASSWORD
from .tls import local_probe_context
from .wiring import hold_embedded_redis, release_embedded_redis

ADMIN_LEASE_S = 30


def add_user(config: NodeConfig, username: str, password: str, name: str | None = None,
             dept: str | None = None) -> int:
    """Creates a user (in the department at path `dept`, created if missing, e.g.
    "Engineering/Backend"); returns its id. Raises ClientError(invalid|conflict)."""
    normal = usernames.valid_new(username)
    if normal is None:
        raise ClientError(ErrorKind.INVALID, f"username must be {usernames.PATTERN} (after NFKC normalisation)")
    username = normal
    if len(password) < MIN_PASSWORD:
        raise ClientError(ErrorKind.INVALID, f"password must be at least {MIN_PASSWORD} characters")
    if name:  # the display name others see: `register`'s rule (core/names.py)
        name = names.valid_new(name)
        if name is None:
            raise ClientError(ErrorKind.INVALID, f"name {names.RULE}")
    # Ids are minted with a worker id leased like a node's, so they never collide with a node's.
    # An embedded Redis is held meanwhile: one this command had to start stops again after it.
    # A worker id taken in a young Redis generation waits until it is safe (core/lease.py).
    embedded = config.redis.url == "embedded"
    if embedded:
        hold_embedded_redis(os.getpid())
    try:
        registry = wiring.open_registry(config)
        try:
            sent = time.monotonic()
            worker, generation = registry.lease_worker("admin", f"admin-{os.getpid()}-{secrets.token_hex(4)}",
                                                       ADMIN_LEASE_S)
        finally:
            registry.close()
    finally:
        if embedded:
            release_embedded_redis(os.getpid())
    gate = MintGate()
    gate.took(worker, generation, sent, time.monotonic())
    time.sleep(gate.wait_s(time.monotonic()) or 0.0)
    ids = IdGenerator(worker, lambda: time.time_ns() // 1_000_000)
    if dept is not None:
        departments.parse_path(dept)  # an invalid path is refused before anything is written
    directory = wiring.open_directory(config)
    try:
        department_id = departments.ensure_path(directory, dept, ids.next_id) if dept is not None else None
        user = User(UserId(ids.next_id()), username, name or username, auth.hash_password(password), department_id)
        directory.create_user(user)
    except Conflict:
        raise ClientError(ErrorKind.CONFLICT, f"the username {username!r} is taken") from None
    finally:
        directory.close()
    return user.id


def list_users(config: NodeConfig) -> list[tuple[User, str]]:
    """Every user with its department's path ("-" for none)."""
    directory = wiring.open_directory(config)
    try:
        users, tree = directory.all_users(), directory.departments()
    finally:
        directory.close()
    return [(u, "-" if u.department_id is None else departments.path_of(tree, u.department_id)) for u in users]


def set_password(config: NodeConfig, username: str, password: str) -> UserId:
    """Replaces a user's password; returns the user's id. Raises ClientError(not-found, else
    invalid: an unknown user is said first, whatever the password)."""
    directory = wiring.open_directory(config)
    try:
        user = directory.user_by_username(username)
        if user is None:
            raise ClientError(ErrorKind.NOT_FOUND, f"no such user: {username}")
        if len(password) < MIN_PASSWORD:
            raise ClientError(ErrorKind.INVALID, f"password must be at least {MIN_PASSWORD} characters")
        directory.set_password_hash(user.id, auth.hash_password(password))
    finally:
        directory.close()
    return user.id


__all__ = ["add_user", "list_users", "set_password"]


# --- cluster views and actions (vim-cluster nodes / heartbeat / whereis / kick) -------------


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def nodes_table(nodes: list[NodeInfo], now: int, view: MasterView | None = None) -> str:
    """The `nodes` table: id, role, URL, heartbeat age, connections, alive."""
    header = ("NODE", "ROLE", "URL", "HEARTBEAT", "CONNECTIONS", "MESSAGES", "ALIVE")
    rows = [header] + [
        (n.node_id, shown_role(n.node_id, n.role, view), n.client_url, f"{max(0, now - n.heartbeat_at) / 1000:.1f}s ago",
         str(n.connections), str(n.messages), "yes" if n.alive else "DEAD")
        for n in nodes
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


LAPSED = " (its lease LAPSED: a standby takes over)"
LAPSED_ALONE = " (its lease LAPSED and no standby is alive: start a master-capable node)"


def master_summary(view: MasterView | None, nodes: list[NodeInfo], now: int) -> str:
    """The lines under the `nodes` table: the active master, its epoch, the standbys, takeovers."""
    standbys = [n.node_id for n in nodes if n.alive and shown_role(n.node_id, n.role, view) == "standby"]
    if view is None:
        return "\n".join(["active master: none (no master ever took the lease)",
                          "standbys: " + (", ".join(standbys) or "none"), *draining_line(nodes)])
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(view.since_ms / 1000))
    ago = f"{max(0, now - view.since_ms) / 1000:.1f}s ago"
    state = "" if view.alive else LAPSED if standbys else LAPSED_ALONE
    return "\n".join([
        f"active master: {view.node_id}{state}, epoch {view.epoch}, forward {view.forward_url}",
        f"standbys: {', '.join(standbys) or 'none'}",
        f"takeovers: {view.takeovers} (the first start included), the last {since} ({ago})",
        *draining_line(nodes),
    ])


def draining_line(nodes: list[NodeInfo]) -> list[str]:
    """The `nodes` line naming the live nodes that take no new clients (drained, or stopping),
    as their last heartbeat said; none when there are none."""
    draining = [n.node_id for n in nodes if n.alive and n.draining]
    return [f"draining: {', '.join(draining)} (no new client connections)"] if draining else []


def resolve_user(config: NodeConfig, user: str) -> UserId:
    """A user id from an id or a username; raises ClientError(not-found)."""
    directory = wiring.open_directory(config)
    try:
        if (user_id := user_id_in(user)) is not None:
            found = directory.users_by_id([user_id])
            if found:
                return next(iter(found))
        record = directory.user_by_username(user)
    finally:
        directory.close()
    if record is None:
        raise ClientError(ErrorKind.NOT_FOUND, f"no such user: {user}")
    return record.id


def routes_of(config: NodeConfig, user_id: UserId) -> list[Route]:
    registry = wiring.open_registry(config, start=False)
    try:
        return registry.routes([user_id]).get(user_id, [])
    finally:
        registry.close()


def master_forward_url(config: NodeConfig) -> str:
    """The active master's forward URL as Redis names it, else the first master-url candidate."""
    registry = wiring.open_registry(config, start=False)
    try:
        view = registry.active_master()
    except StoreUnavailable:
        view = None
    finally:
        registry.close()
    if view is not None and view.alive and view.forward_url:
        return view.forward_url
    if config.cluster.master_url:
        return config.cluster.master_url
    raise StoreUnavailable("no live master is registered in Redis, and the config names no master-url")


def live_node(config: NodeConfig) -> NodeInfo | None:
    """CONFIG's node if a live process holds it in Redis (read-only; None if Redis, or the
    embedded Redis, is not running)."""
    try:
        registry = wiring.open_registry(config, start=False)
    except StoreUnavailable:
        return None
    try:
        nodes = registry.nodes()
    except StoreUnavailable:
        return None
    finally:
        registry.close()
    return next((n for n in nodes if n.node_id == config.node_id and n.alive), None)


def node_health(config: NodeConfig) -> tuple[bool, str]:
    """Whether CONFIG's node is registered and alive (and its /healthz says 200 if it has one)."""
    registry = wiring.open_registry(config, start=False)
    try:
        nodes = {n.node_id: n for n in registry.nodes()}
    finally:
        registry.close()
    node = nodes.get(config.node_id)
    if node is None:
        return False, f"{config.node_id}: not registered in Redis"
    age = (now_ms() - node.heartbeat_at) / 1000
    if not node.alive:
        return False, f"{config.node_id}: DEAD (last heartbeat {age:.1f}s ago)"
    if config.http.port:
        scheme, context = ("https", local_probe_context(config)) if config.websocket.tls else ("http", None)
        url = f"{scheme}://{probe_host(config.websocket.host)}:{config.http.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            return False, f"{config.node_id}: alive but {url} answers {exc.code}: {_unhealthy(exc)}"
        except OSError as exc:
            return False, f"{config.node_id}: registered but {url} does not answer: {exc}"
        if status != 200:
            return False, f"{config.node_id}: alive but {url} answers {status}"
    return True, f"{config.node_id}: alive, heartbeat {age:.1f}s ago, {node.connections} connections"


def probe_host(host: str) -> str:
    """Where a local tool reaches a node bound to `host`: that address, or loopback for every
    address (IPv6's for `::`, whose listener takes no IPv4)."""
    return "[::1]" if host == "::" else url_host(host)


def _unhealthy(answer: urllib.error.HTTPError) -> str:
    """What a /healthz 503 says: draining, or which checks are down."""
    try:
        body = json.loads(answer.read())
        checks = body.get("checks", {})
        down = [f"{name} {state}" for name, state in checks.items() if state != "ok"]
    except (OSError, ValueError, AttributeError):
        return "its body is not /healthz's JSON"
    if body.get("draining") and not down:
        return "draining (it takes no new connections; restart it to serve again)"
    return "; ".join(down) or str(body.get("status", "unavailable"))
