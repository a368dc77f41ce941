"""The node's HTTP port (h11 over trio): /healthz, /metrics, / (web client), /dashboard, their
scripts (/chat.js, /dashboard.js) and the dashboard's JSON and operator endpoints (see
`dashboard`).

Each request is its own bulkhead: an error is logged and answered 500, never the node's end.
GET, HEAD and POST (the operator's, see `dashboard`) are served; one request per connection.
Every path but the monitoring ones (/healthz, /metrics: tools may use any name) answers 403
to a `Host` the node does not know (DNS rebinding: core/origins.py): a page of another site
whose name an attacker made resolve to the node could otherwise read the dashboard and spend
the operator login's failures from a browser inside the network.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from importlib import resources
from typing import Any

import h11
import structlog
import trio

from ..errors import StoreUnavailable
from . import dashboard
from .admission import Admission
from .context import NodeContext
from .health import health, note
from .listeners import Listeners
from .operator import cookie_of

log = structlog.get_logger()
# Every answer of this port (docs/security.md, "The HTTP port's pages"): scripts only from
# this port's own files (chat.js, dashboard.js), never inline, so text that reaches a page as
# HTML (a message, a display name) cannot run; connections to this port and to any node's
# client port (ws:, wss:: the web client moves between nodes and takes a typed-in address);
# no plugins, <base>, foreign form targets or referrers; no framing (clickjacking of the
# dashboard's kick and drain, even from a page of the same site) nor guessed types.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")
FRAMING = (("x-frame-options", "DENY"), ("content-security-policy", CSP),
           ("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer"))
MAX_REQUEST = 16 * 1024
REQUEST_TIMEOUT = 10.0  # to read a request and answer it
REFUSAL_TIMEOUT = 2.0  # to write the one line that refuses a request
SCRIPTS = ("/chat.js", "/dashboard.js")  # the pages' scripts (CSP: none inline)
ANY_HOST = ("/healthz", "/metrics")  # monitoring tools, by whatever name they are given
UNAVAILABLE = b"unavailable: Redis or a store is down (the node's log says why); retry later\n"
UNKNOWN_HOST = b"host not known to this node: list its origin (scheme://host:port) in vim.websocket.allowed-origins\n"


def _static(name: str) -> bytes:
    return resources.files("vim_cluster.web").joinpath(name).read_bytes()


Response = tuple[int, str, bytes, tuple[tuple[str, str], ...]]


def _json(status: int, body: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return status, "application/json", json.dumps(body).encode(), headers


async def _route(ctx: NodeContext, request: dashboard.Request) -> Response:
    if request.method == "POST":
        answer = await dashboard.post(ctx, request)
        return _json(answer.status, answer.body, answer.headers)
    path = request.path
    if path == "/healthz":
        ok, body = await health(ctx)
        body["draining"] = ctx.draining
        return _json(200 if ok and not ctx.draining else 503, body)
    if path == "/metrics":
        return 200, "text/plain; version=0.0.4; charset=utf-8", ctx.metrics.render(), ()
    who = ctx.operator.who(cookie_of(request.headers.get("cookie"))) if ctx.operator else None
    if path == "/stats.json":
        return _json(200, await dashboard.node_stats(ctx, who is not None))
    if path == "/dashboard.json":
        return _json(200, await dashboard.dashboard_data(ctx, who))
    if path == "/dashboard":
        return 200, "text/html; charset=utf-8", _static("dashboard.html"), ()
    if path in ("/", "/index.html"):
        return 200, "text/html; charset=utf-8", _static("index.html"), ()
    if path in SCRIPTS:
        return 200, "text/javascript; charset=utf-8", _static(path[1:]), ()
    return 404, "text/plain", b"not found\n", ()


async def _handle(ctx: NodeContext, stream: trio.abc.Stream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    deadline = trio.current_time() + REQUEST_TIMEOUT
    try:
        request, refusal = None, None
        with trio.move_on_at(deadline) as reading:
            try:
                request = await _read_request(conn, stream)
            except h11.RemoteProtocolError as exc:
                refusal = exc.error_status_hint, _reason(exc)
        if reading.cancelled_caught and (conn.their_state is not h11.IDLE or conn.trailing_data[0]):
            refusal = 408, f"no whole request within {REQUEST_TIMEOUT:g} s"  # a request began: say why it ends
        if refusal is not None:
            await _refuse(stream, *refusal)
            return
        if request is None:
            return
        with trio.fail_at(deadline):
            extra: tuple[tuple[str, str], ...] = ()
            post_ok = request.method == "POST" and request.path in dashboard.POST_PATHS
            host = request.headers.get("host", "")
            if request.method not in ("GET", "HEAD") and not post_ok:
                status, kind, body = 405, "text/plain", b"only GET\n"
            elif request.path not in ANY_HOST and not await ctx.cluster_hosts.host_known(
                    ctx.config, ctx.redis, ctx.registry, host):
                log.warning("http_request_rejected", reason="host not known", host=host, path=request.path,
                            remote=request.remote)
                status, kind, body = 403, "text/plain", UNKNOWN_HOST
            else:
                # Noted per path: a page that needs no store (/healthz, /chat.js) answering
                # meanwhile is no end of the outage of one that does (/dashboard.json).
                check = f"http {request.path}"
                try:
                    status, kind, body, extra = await _route(ctx, request)
                    note(ctx, check, None)  # logged when it was down
                except StoreUnavailable as exc:  # its text names hosts, users, paths: the log's, not the body's
                    note(ctx, check, str(exc), "http_store_unavailable")
                    status, kind, body = 503, "text/plain", UNAVAILABLE
                except Exception:  # noqa: BLE001 - the request's bulkhead: logged, answered 500
                    log.exception("http_request_crashed", path=request.path, remote=request.remote)
                    status, kind, body = 500, "text/plain", b"internal error (the node's log says why)\n"
            headers = [("content-type", kind), ("content-length", str(len(body))), ("connection", "close"),
                       ("cache-control", "no-store"), *FRAMING, *extra]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            if request.method != "HEAD":
                await stream.send_all(conn.send(h11.Data(data=body)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
    except (trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        log.debug("http_request_dropped", error=f"{type(exc).__name__}: {exc}")
    except Exception:  # noqa: BLE001 - the HTTP request bulkhead
        log.exception("http_request_crashed")
    finally:
        await stream.aclose()


def _reason(exc: h11.RemoteProtocolError) -> str:
    """What was wrong with a request, in a few words (not the bytes h11 quotes)."""
    if exc.error_status_hint == 431:
        return f"request head larger than {MAX_REQUEST} bytes"
    if str(exc) == "peer unexpectedly closed connection":
        return "incomplete request"
    return re.split(r""":? (?:bytearray\(|b['"])""", str(exc))[0][:100]


async def _refuse(stream: trio.abc.Stream, status: int, reason: str) -> None:
    """Answers a request that cannot be served (malformed: 400, 431, 413; incomplete: 408) with
    one line saying why, then the connection ends. Logged at debug: anyone can send these.

    What the client still sends (the rest of an oversized request) is read and dropped after
    our side ended, for REFUSAL_TIMEOUT at most: closing with data unread would make the kernel
    reset the connection, and the client would see the reset, not the answer."""
    log.debug("http_request_refused", remote=_remote(stream), status=status, reason=reason)
    body = f"{reason}\n".encode()
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: text/plain; charset=utf-8",
            f"content-length: {len(body)}", "connection: close", "cache-control: no-store",
            *(f"{name}: {value}" for name, value in FRAMING)]
    with trio.move_on_after(REFUSAL_TIMEOUT):
        await stream.send_all("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        while await stream.receive_some(MAX_REQUEST):
            pass


async def _read_request(conn: h11.Connection, stream: trio.abc.Stream) -> dashboard.Request | None:
    """The request with its body (at most MAX_REQUEST bytes), or None if the client closed
    before sending a byte. Raises h11.RemoteProtocolError (with the status to answer) for a
    malformed, oversized or cut-off one."""
    head: h11.Request | None = None
    body = b""
    received = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = bytes(await stream.receive_some(MAX_REQUEST))
            received += len(data)
            conn.receive_data(data)  # b"": EOF, h11 says if early
            continue
        if isinstance(event, h11.Request):
            head = event
            if received - len(conn.trailing_data[0]) > MAX_REQUEST:  # h11 counts only a head still incomplete
                raise h11.RemoteProtocolError("request head too large", 431)
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_REQUEST:
                raise h11.RemoteProtocolError(f"request body larger than {MAX_REQUEST} bytes", 413)
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
            remote = _remote(stream)
            target = head.target.decode("ascii", "replace").split("?", 1)[0]
            return dashboard.Request(head.method.decode("ascii", "replace"), target, headers, body, remote)
        else:
            return None


def _remote(stream: Any) -> str:
    """The peer's address of a TCP stream, or of the TCP stream under a TLS one."""
    while not hasattr(stream, "socket") and hasattr(stream, "transport_stream"):
        stream = stream.transport_stream
    try:
        return str(stream.socket.getpeername()[0])
    except (AttributeError, OSError):
        return "?"


async def serve_http(ctx: NodeContext, listeners: Listeners) -> None:
    """Serves the HTTP port on bound `listeners` (HTTPS when they are TLS ones). Every
    connection of it is unauthenticated: an address gets at most
    vim.websocket.max-unauthenticated-per-address at once (node/admission.py)."""
    admission = Admission.for_port("http", ctx.config, ctx.metrics, per_address=False,
                                   extra_headers=(("cache-control", "no-store"), *FRAMING))

    async def connection(stream: trio.abc.Stream) -> None:
        slot = await admission.enter(stream, _remote(stream))
        if slot is None:
            return
        try:
            await _handle(ctx, stream)
        finally:
            slot.release()

    await trio.serve_listeners(connection, listeners)
