"""The dashboard's data and the operator's actions, behind the HTTP port (see `operator`).

    GET  /stats.json        this node: checks, connections, forward queue, samples (history)
    GET  /dashboard.json    every node in Redis with its /stats.json (fetched by this node),
                            the logged-in operator (or null) and, for them, the action trail
    POST /login             {"secret", "name"} -> 200 + session cookie, 401 otherwise
    POST /logout            clears the cookie
    POST /admin/kick        {"user": username or id}   (operator only: 401 otherwise)
    POST /admin/drain       {"node": node id}          (operator only; another node's drain is
                                                        passed on to that node's HTTP port)
POSTs take JSON bodies (Content-Type application/json; a form elsewhere cannot send one).
"""

from __future__ import annotations

import functools
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import attrs
import structlog
import trio

from ..config import NodeConfig
from ..core.mastership import MasterView, shown_role
from ..errors import CloseCode, StoreUnavailable
from ..model import user_id_in
from ..ports import NodeInfo
from ..tls import operator_context
from .context import NodeContext
from .health import health
from .operator import cookie_header, cookie_of

log = structlog.get_logger()
PEER_TIMEOUT = 2.0  # urllib's timeout of each socket operation of a fetch of another node
FORWARDED = "x-vim-forwarded-by"  # a drain passed on by another node (never passed on again)
POST_PATHS = ("/login", "/logout", "/admin/kick", "/admin/drain")


@attrs.frozen
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    remote: str


@attrs.frozen
class Answer:
    status: int
    body: Any  # JSON-able
    headers: tuple[tuple[str, str], ...] = ()


def _fetch(config: NodeConfig, url: str, data: bytes | None = None,
           headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET (or POST `data` to) another node's HTTP port; HTTPS is verified like the forward
    channel (tls.ca-file; only the chain on a loopback address)."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    parts = urllib.parse.urlsplit(url)
    context = operator_context(config, parts.hostname or "") if parts.scheme == "https" else None
    try:
        with urllib.request.urlopen(request, timeout=PEER_TIMEOUT, context=context) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None


async def node_stats(ctx: NodeContext, operator: bool = False) -> dict[str, Any]:
    """This node's /stats.json; for a logged-in `operator` with `problems`: each failing
    backend check's error in full (/healthz says only `down: unavailable` or `down: timeout`)."""
    ok, body = await health(ctx)
    if operator:
        body["problems"] = {name: ctx.problems[name] for name in body["checks"] if name in ctx.problems}
    body["draining"] = ctx.draining
    body["master_epoch"] = ctx.metrics.registry.get_sample_value("vim_master_epoch")
    body["samples"] = ctx.stats.wire() if ctx.stats is not None else []
    body["now"] = ctx.clock_ms()
    return body


def master_json(view: MasterView | None, nodes: list[NodeInfo]) -> dict[str, Any]:
    """The active master, its epoch, the standbys and the takeovers (operations.md)."""
    standbys = [n.node_id for n in nodes if n.alive and shown_role(n.node_id, n.role, view) == "standby"]
    if view is None:
        return {"node": None, "standbys": standbys}
    return {"node": view.node_id, "epoch": view.epoch, "alive": view.alive, "forward_url": view.forward_url,
            "since": view.since_ms, "takeovers": view.takeovers, "standbys": standbys}


async def dashboard_data(ctx: NodeContext, who: str | None) -> dict[str, Any]:
    now = ctx.clock_ms()
    nodes = await ctx.redis(ctx.registry.nodes)
    view = await ctx.redis(ctx.registry.active_master)
    stats: dict[str, Any] = {}

    async def one(node_id: str, http_url: str | None, alive: bool) -> None:
        if node_id == ctx.node_id:
            stats[node_id] = await node_stats(ctx, who is not None)
            return
        if not http_url:
            return
        if not alive:  # its lease lapsed: not asked (a dead host held a thread 2 s a request)
            stats[node_id] = {"status": "unreachable", "error": "not alive in Redis"}
            return
        url = http_url.rstrip("/") + "/stats.json"
        try:
            status, body = await ctx.peer_fetches.get(url, functools.partial(_fetch, ctx.config, url))
        except trio.WouldBlock:
            stats[node_id] = {"status": "unreachable", "error": "busy: other nodes' answers are awaited"}
            return
        except (OSError, ValueError, http.client.HTTPException) as exc:  # TimeoutError is an OSError
            # HTTPException: what answered is not HTTP, or cut its answer short
            stats[node_id] = {"status": "unreachable", "error": str(exc) or type(exc).__name__}
            return
        if not isinstance(body, dict):
            stats[node_id] = {"status": "unreachable", "error": f"HTTP {status}"}
        elif body.get("node") != node_id:  # its registered URL reaches another node
            stats[node_id] = {"status": "unreachable", "error": f"{http_url} answers as {body.get('node')!r}"}
        else:
            stats[node_id] = body

    async with trio.open_nursery() as nursery:
        for n in nodes:
            nursery.start_soon(one, n.node_id, n.http_url, n.alive)
    return {
        "now": now,
        "self": ctx.node_id,
        "operator": who,
        "trail": list(ctx.operator.trail) if who and ctx.operator else [],
        "master": master_json(view, nodes),
        "nodes": [
            {
                "node": n.node_id, "role": shown_role(n.node_id, n.role, view), "url": n.client_url, "alive": n.alive,
                "heartbeat_age_s": round((now - n.heartbeat_at) / 1000, 1),
                "connections": n.connections, "messages": n.messages,
                "stats": stats.get(n.node_id),
            }
            for n in nodes
        ],
    }


def _json_body(request: Request) -> dict[str, Any] | None:
    if not request.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, RecursionError):  # RecursionError: arrays or objects nested too deep
        return None
    return body if isinstance(body, dict) else None


async def kick_user(ctx: NodeContext, user: str) -> tuple[int, int | None]:
    """Closes every session of `user` (username or id) with 4002; (sessions, user id)."""
    found = None
    if (user_id := user_id_in(user)) is not None:
        found = (await ctx.db(ctx.directory.users_by_id, [user_id])).get(user_id)
    if found is None:
        found = await ctx.db(ctx.directory.user_by_username, user)
    if found is None:
        return 0, None
    routes = (await ctx.redis(ctx.registry.routes, [found.id])).get(found.id, [])
    for route in routes:
        ctx.delivery.kick(route.node_id, found.id, route.session_id, CloseCode.KICKED, None)
    return len(routes), found.id


def drain_here(ctx: NodeContext) -> int:
    """Stops accepting client connections and closes every session with 4005; the next
    heartbeat, at once, tells Redis (`vim-cluster nodes`)."""
    ctx.draining = True
    ctx.ids.lease.beat_soon()
    closed = 0
    for user_id in ctx.local_sessions.users():
        for session in ctx.local_sessions.sessions(user_id):
            session.kick(CloseCode.DRAINING, "node draining: reconnect to another node")
            closed += 1
    return closed


async def _drain(ctx: NodeContext, request: Request, node: str) -> Answer:
    if node == ctx.node_id:
        return Answer(200, {"ok": True, "node": node, "closed": drain_here(ctx)})
    if request.headers.get(FORWARDED):  # passed on once already: its URL reached another node
        return Answer(409, {"error": f"{ctx.node_id} is not {node}: its registered HTTP URL reaches another node"})
    target = next((n for n in await ctx.redis(ctx.registry.nodes) if n.node_id == node), None)
    if target is None or not target.http_url:
        return Answer(404, {"error": f"no node {node!r} with an HTTP port"})
    headers = {"content-type": "application/json", "cookie": request.headers.get("cookie", ""), FORWARDED: ctx.node_id}
    try:
        status, body = await trio.to_thread.run_sync(
            _fetch, ctx.config, target.http_url.rstrip("/") + "/admin/drain", json.dumps({"node": node}).encode(),
            headers, limiter=ctx.peer_fetches.limiter)  # not trio's default pool (node/peer_fetch.py)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(502, {"error": f"{node} does not answer: {exc or type(exc).__name__}"})
    return Answer(status, body)


async def post(ctx: NodeContext, request: Request) -> Answer:
    assert ctx.operator is not None
    body = _json_body(request)
    if body is None:
        return Answer(400, {"error": "send a JSON object with Content-Type application/json"})
    if request.path == "/login":
        locked = ctx.operator.locked_for_s(request.remote)
        if locked:  # a right secret too: said so, not "wrong secret" (the attempt is logged)
            ctx.operator.login(str(body.get("secret", "")), str(body.get("name", "")), request.remote)
            return Answer(429, {"error": f"too many failed logins on this node: try again in {locked} s"},
                          (("retry-after", str(locked)),))
        cookie = ctx.operator.login(str(body.get("secret", "")), str(body.get("name", "")), request.remote)
        if cookie is None:
            return Answer(401, {"error": "wrong cluster secret"})
        secure = ctx.config.websocket.tls
        return Answer(200, {"ok": True, "who": ctx.operator.who(cookie)},
                      (("set-cookie", cookie_header(cookie, secure=secure)),))
    if request.path == "/logout":
        return Answer(200, {"ok": True}, (("set-cookie", cookie_header("", 0, secure=ctx.config.websocket.tls)),))
    who = ctx.operator.who(cookie_of(request.headers.get("cookie")))
    if who is None:
        log.warning("operator_action_refused", path=request.path, remote=request.remote)
        return Answer(401, {"error": "operator login required"})
    if request.path == "/admin/kick":
        user = str(body.get("user", "")).strip()
        if not user:
            return Answer(400, {"error": "name the user: {\"user\": USERNAME or user id}"})
        try:
            sessions, user_id = await kick_user(ctx, user)
        except StoreUnavailable as exc:
            ctx.operator.record(who, request.remote, "kick", user, f"failed: {exc}")
            return Answer(503, {"error": str(exc)})
        result = "no such user" if user_id is None else f"{sessions} session(s) closed"
        ctx.operator.record(who, request.remote, "kick", user, result)
        return Answer(200 if user_id is not None else 404, {"ok": user_id is not None, "result": result})
    if request.path == "/admin/drain":
        node = str(body.get("node", ctx.node_id))
        answer = await _drain(ctx, request, node)
        ctx.operator.record(who, request.remote, "drain", node, f"HTTP {answer.status}")
        return answer
    return Answer(404, {"error": "not found"})
