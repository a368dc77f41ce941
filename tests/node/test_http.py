"""The node's HTTP port over a real socket: pages, dashboard JSON, health, metrics, errors."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from pathlib import Path

import attrs
import structlog
import trio
from structlog.testing import LogCapture, capture_logs

from vim_cluster.admin import node_health
from vim_cluster.config import load_config
from vim_cluster.model import UserId
from vim_cluster.node.app import RunningNode, serve_node
from vim_cluster.node.http import UNAVAILABLE
from vim_cluster.node.operator import FAILURES_PER_MINUTE
from vim_cluster.ports import Route
from vim_cluster.tunables import DEFAULTS

from ..servers import MariaDB, RedisServer, private_mariadb, redis_process  # noqa: F401 - fixtures
from ..support import connect, free_port, online, write_config


async def exchange(port: int, method: str, path: str, cookie: str | None, body: bytes | None,
                   content_type: str | None = None, host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request (a body: with its Content-Length); the node answers and closes
    the connection. (status, lower-case headers, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        if cookie:
            head += f"Cookie: {cookie}\r\n"
        await stream.send_all(head.encode() + b"\r\n" + (body or b""))
        raw = b""
        while chunk := await stream.receive_some(65536):
            raw += chunk
    top, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, payload


async def http(port: int, path: str, method: str = "GET", cookie: str | None = None) -> tuple[int, dict[str, str], bytes]:
    return await exchange(port, method, path, cookie, b"{}" if method == "POST" else None)


async def test_http_port_serves_pages_json_health_and_metrics(start_node) -> None:
    with trio.fail_after(30):
        node = await start_node(extra={"http": {"port": free_port()}})
        port = node.http_port
        assert port

        status, headers, body = await http(port, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert int(headers["content-length"]) == len(body)
        page = body.decode()
        assert '<script src="/chat.js"></script>' in page and "<script>" not in page  # the CSP forbids inline
        assert "http://" not in page and "https://" not in page  # self-contained
        status, headers, body = await http(port, "/chat.js")
        assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
        script = body.decode()
        assert '"register"' in script and "/healthz" in script  # the chat client
        assert "http://" not in script and "https://" not in script

        status, headers, body = await http(port, "/dashboard")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        policy = dict((d.split(" ", 1) + [""])[:2] for d in headers["content-security-policy"].split("; "))
        assert policy["frame-ancestors"] == "'none'"  # no clickjacking of kick/drain
        assert policy["script-src"] == "'self'" and policy["default-src"] == "'self'"  # nothing inline, no eval
        assert policy["object-src"] == policy["base-uri"] == "'none'" and policy["form-action"] == "'self'"
        assert policy["connect-src"] == "'self' ws: wss:"  # any node's client port
        assert '<script src="/dashboard.js"></script>' in body.decode() and "<script>" not in body.decode()
        status, headers, body = await http(port, "/dashboard.js")
        assert status == 200 and "/dashboard.json" in body.decode()

        status, headers, body = await http(port, "/healthz")
        assert status == 200 and headers["content-type"] == "application/json"
        health = json.loads(body)
        assert health["status"] == "ok" and health["node"] == node.ctx.node_id
        assert health["url"] == f"ws://127.0.0.1:{node.client_port}/"
        assert all(v == "ok" for v in health["checks"].values())

        # The node registers itself in Redis on its first heartbeat.
        while True:
            status, headers, body = await http(port, "/dashboard.json")
            assert status == 200 and headers["content-type"] == "application/json"
            data = json.loads(body)
            mine = [n for n in data["nodes"] if n["node"] == node.ctx.node_id]
            if mine:
                break
            await trio.sleep(0.1)
        assert isinstance(data["now"], int)
        assert mine[0]["alive"] is True and mine[0]["role"] == "master"
        assert set(mine[0]) >= {"url", "heartbeat_age_s", "connections", "messages"}

        status, headers, body = await http(port, "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        assert b"vim_connections" in body

        status, _, _ = await http(port, "/no-such-page")
        assert status == 404
        status, _, _ = await http(port, "/", method="POST")
        assert status == 405
        status, headers, body = await http(port, "/healthz", method="HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0


async def test_method_not_allowed_carries_its_body(start_node) -> None:
    with trio.fail_after(30):
        node = await start_node(extra={"http": {"port": free_port()}})
        status, headers, body = await http(node.http_port, "/", method="POST")
        assert status == 405
        assert int(headers["content-length"]) == len(body) and body == b"only GET\n"


async def raw_exchange(port: int, data: bytes, end: bool = True) -> bytes:
    """Sends `data` as it is (then ends our side, unless `end` is false) and reads the answer
    until the node closes the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        if end:
            await stream.send_eof()
        raw = b""
        while chunk := await stream.receive_some(65536):
            raw += chunk
    return raw


def http_tasks() -> list[trio.lowlevel.Task]:
    """The HTTP port's connection tasks still running in this trio run."""
    found, todo = [], [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        assert task is not None
        found += [task] if task.name.endswith("http._handle") else []
        todo += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return found


async def test_a_malformed_request_gets_a_one_line_answer_and_a_close(start_node, monkeypatch) -> None:
    """Attack: garbage, a cut-off request line, a head over 16 KiB, a bad or conflicting
    Content-Length, a body over 16 KiB, a request that never ends. Each used to end in a
    silent close; now each gets its status (400, 431, 413, 408) with one line saying what was
    wrong (not the bytes sent) and the port's headers, is logged at debug with the peer, and
    leaves no task behind; the node serves on."""
    monkeypatch.setattr("vim_cluster.node.http.REQUEST_TIMEOUT", 1.0)
    captured = LogCapture()  # the HTTP port's log at debug level (the tests' is warning)
    monkeypatch.setattr("vim_cluster.node.http.log", structlog.wrap_logger(
        None, processors=[captured], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)))
    logs = captured.entries
    with trio.fail_after(30):
        node = await start_node(extra={"http": {"port": free_port()}})
        port = node.http_port
        post = b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        cases = [
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400, b"illegal request line"),
            (b"GET /dashb", 400, b"incomplete request"),
            (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", 431,
             b"request head larger than 16384 bytes"),
            (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 16_400 + b"\r\n\r\n", 431,
             b"request head larger than 16384 bytes"),  # whole in the second read: h11 let it pass
            (post + b"Content-Length: ten\r\n\r\n{}", 400, b"bad Content-Length"),
            (post + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, b"conflicting Content-Length headers"),
            (post + b"Content-Length: 20000\r\n\r\n" + b" " * 20_000, 413, b"request body larger than 16384 bytes"),
            (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n", 408, b"no whole request within 1 s"),  # and nothing more
        ]
        for data, status, reason in cases:
            answer = await raw_exchange(port, data, end=status != 408)
            head, _, body = answer.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            assert lines[0].startswith(f"HTTP/1.1 {status} "), (data[:40], answer[:200])
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            assert body == reason + b"\n" and int(headers["content-length"]) == len(body)
            assert headers["x-content-type-options"] == "nosniff" and "script-src 'self'" in headers[
                "content-security-policy"]
        refused = [e for e in logs if e["event"] == "http_request_refused"]
        assert [(e["status"], e["reason"].encode()) for e in refused] == [(s, r) for _, s, r in cases]
        assert all(e["remote"] == "127.0.0.1" and e["log_level"] == "debug" for e in refused)
        assert await raw_exchange(port, b"", end=True) == b""  # a connection that sends nothing: closed unanswered
        assert http_tasks() == []
        status, _, _ = await http(port, "/healthz")
        assert status == 200


async def test_a_body_nested_too_deep_or_a_failing_page_is_answered_not_dropped(start_node, monkeypatch) -> None:
    """Attack: a JSON body of 10,000 nested arrays to POST /login (anyone may send it). json
    raised RecursionError, no ValueError: the request crashed, was logged with its traceback
    at error level each time and the connection closed unanswered. Now it is 400 like any body
    that is not a JSON object; and a request whose page does fail is answered 500, not dropped."""
    with trio.fail_after(30):
        node = await start_node(extra={"http": {"port": free_port()}})
        port = node.http_port
        with capture_logs() as logs:
            status, _, body = await exchange(port, "POST", "/login", None, b"[" * 10_000, "application/json")
        assert status == 400 and json.loads(body) == {"error": "send a JSON object with Content-Type application/json"}
        assert [e for e in logs if e["log_level"] == "error"] == []

        def broken(*args, **kwargs):
            raise RuntimeError("a bug")
        monkeypatch.setattr("vim_cluster.node.dashboard.node_stats", broken)
        with capture_logs() as logs:
            status, _, body = await exchange(port, "GET", "/stats.json", None, None)
        assert status == 500 and body == b"internal error (the node's log says why)\n"
        assert [(e["event"], e["path"]) for e in logs if e["log_level"] == "error"] == [
            ("http_request_crashed", "/stats.json")]
        assert http_tasks() == []
        status, _, _ = await http(port, "/healthz")
        assert status == 200


async def test_a_forged_operator_cookie_with_a_letter_outside_ascii_is_no_login(start_node) -> None:
    """Attack: an operator cookie whose MAC holds a byte over 0x7f (the header is read as
    latin-1). hmac.compare_digest raised TypeError on it: every page but /healthz and /metrics
    (the cookie is read for all of them since the dashboard's `problems`) and every operator
    action crashed with a traceback at error level. Now it is no login, like any wrong MAC."""
    with trio.fail_after(30):
        node = await start_node(extra={"http": {"port": free_port()}})
        port = node.http_port
        cookie = "vim_operator=99999999999999.ZXZl.\xff"
        with capture_logs() as logs:
            for path in ("/", "/stats.json", "/dashboard.json"):
                status, _, body = await exchange(port, "GET", path, cookie, None)
                assert status == 200 and b'"problems"' not in body, path
            status, _, body = await exchange(port, "POST", "/admin/drain", cookie, b"{}", "application/json")
            assert status == 401 and not node.ctx.draining
        assert [e for e in logs if e["log_level"] == "error"] == []


async def test_a_page_failing_on_redis_is_logged_once_while_pages_without_a_store_answer(
        nursery: trio.Nursery, node_folder: Path, redis_process: RedisServer) -> None:  # noqa: F811
    """Redis is down, a dashboard polls /dashboard.json (503) and a load balancer /healthz (a
    503 it answers itself). Each /healthz ended the outage of "http" in the log
    (`health_check_ok`) and the next /dashboard.json began it again: two lines a poll, and an
    "ok" in the middle of the outage. Now the outage is noted per path: one warning, no "ok"."""
    with trio.fail_after(60), capture_logs() as logs:
        config = load_config(write_config(node_folder, redis_url=redis_process.url,
                                          extra={"http": {"port": free_port()}}))
        node: RunningNode = await nursery.start(serve_node, config)
        port = node.http_port
        assert port is not None
        redis_process.kill()
        for _ in range(3):
            status, _, body = await http(port, "/dashboard.json")
            assert status == 503 and body == UNAVAILABLE
            status, _, _ = await http(port, "/healthz")
            assert status == 503
    noted = [(e["event"], e["check"]) for e in logs if e.get("check", "").startswith("http")]
    assert noted == [("http_store_unavailable", "http /dashboard.json")], noted


async def test_a_cut_off_or_endless_upgrade_request_is_answered_on_the_client_port(start_node, monkeypatch) -> None:
    """Attack: on the client port, an upgrade request cut off by the client's FIN (it used to
    be closed unanswered), one never finished (closed unanswered at the handshake deadline) and
    one with a 20 KB header read at once (upgraded: h11 checks its limit only on a head still
    incomplete): now 400, 408 and 431 with the reason, logged at debug with the peer."""
    captured = LogCapture()
    monkeypatch.setattr("vim_cluster.node.ws_server.log", structlog.wrap_logger(
        None, processors=[captured], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)))
    with trio.fail_after(30):
        node = await start_node(tunables=attrs.evolve(DEFAULTS, client_handshake_timeout_s=1.0))
        begun = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webs"
        answer = await raw_exchange(node.client_port, begun)
        assert answer.startswith(b"HTTP/1.1 400 ") and answer.endswith(b"\r\n\r\nbad HTTP request: peer unexpectedly "
                                                                        b"closed connection"), answer
        answer = await raw_exchange(node.client_port, begun, end=False)
        assert answer.startswith(b"HTTP/1.1 408 ") and answer.endswith(b"no whole upgrade request within 1 s"), answer
        assert await raw_exchange(node.client_port, b"") == b""  # nothing sent: nothing to answer
        big = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Big: "
               + b"a" * 20_000 + b"\r\n\r\n")  # whole in one read: h11 let it pass (its limit is 16 KiB)
        answer = await raw_exchange(node.client_port, big)
        assert answer.startswith(b"HTTP/1.1 431 ") and answer.endswith(b"head larger than 16384 bytes"), answer
        assert [(e["event"], e["status"], e["remote"]) for e in captured.entries] == [
            ("handshake_refused", 400, "127.0.0.1"), ("handshake_refused", 408, "127.0.0.1"),
            ("handshake_refused", 431, "127.0.0.1")]


async def post_json(port: int, path: str, body: dict, cookie: str | None = None) -> tuple[int, dict[str, str], dict]:
    status, headers, payload = await exchange(port, "POST", path, cookie, json.dumps(body).encode(), "application/json")
    return status, headers, json.loads(payload)


async def upgrade(port: int, origin: str | None = None, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """The HTTP status and body a WebSocket upgrade request gets (with this Origin and Host)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n".encode()
            + (f"Origin: {origin}\r\n".encode() if origin else b"")
            + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        answer = await stream.receive_some(4096)
    return int(answer.split(b" ", 2)[1]), answer.partition(b"\r\n\r\n")[2]


async def upgrade_status(port: int, origin: str | None = None, host: str = "127.0.0.1") -> int:
    return (await upgrade(port, origin, host))[0]


async def test_a_page_of_another_site_cannot_open_a_client_connection(start_node) -> None:
    """Cross-site WebSocket hijacking: a page on evil.example, opened by a user inside the
    network, is refused (403); the node's own pages, a live node's host, listed origins and
    native clients (no Origin) are not."""
    with trio.fail_after(30):
        node = await start_node(extra={"http": {"port": free_port()}})
        port = node.client_port
        assert await upgrade_status(port, "https://evil.example") == 403
        assert await upgrade_status(port, "null") == 403
        assert await upgrade_status(port) == 101
        assert await upgrade_status(port, f"http://127.0.0.1:{node.http_port}") == 101  # its web client
        own = socket.gethostname()  # the machine's own name is one the node knows
        assert await upgrade_status(port, f"https://{own}:8190", host=f"{own}:443") == 101
        listed = await start_node(websocket={"allowed-origins": ["https://app.corp.example"]})
        assert await upgrade_status(listed.client_port, "https://app.corp.example") == 101
        assert await upgrade_status(listed.client_port, "https://evil.example") == 403
        # The web client of another node (its public host, read from Redis) moving here:
        await start_node(websocket={"public-host": "dept-2.corp.example"})  # registered once started
        assert await upgrade_status(port, "https://dept-2.corp.example:8192") == 403  # the hosts read before it
        node.ctx.cluster_hosts.read_at = -60.0  # read Redis again now, not in 10 s
        assert await upgrade_status(port, "https://dept-2.corp.example:8192") == 101


async def test_a_page_reached_by_dns_rebinding_is_refused(start_node) -> None:
    """DNS rebinding: a page on evil.example whose name the attacker made resolve to the node's
    address sends `Origin: http://evil.example:PORT` and `Host: evil.example:PORT`. The client
    port refuses its handshake (403, logged with the host), the HTTP port its dashboard and
    operator login (not counted as a failed login); monitoring paths and native clients (no
    Origin) are not checked, and a listed origin makes its host known."""
    with trio.fail_after(30), capture_logs() as logs:
        node = await start_node(extra={"http": {"port": free_port()}})
        port, http_port = node.client_port, node.http_port
        evil = f"evil.example:{port}"
        status, body = await upgrade(port, f"http://{evil}", host=evil)
        assert status == 403 and b"vim.websocket.allowed-origins" in body and b"\n" not in body
        rejected = [e for e in logs if e["event"] == "handshake_rejected"]
        assert rejected and rejected[-1]["host"] == evil and rejected[-1]["reason"] == "host not known"
        assert await upgrade_status(port, host=evil) == 101  # a native client: no Origin
        for path in ("/", "/dashboard", "/dashboard.json", "/stats.json"):
            status, _, body = await exchange(http_port, "GET", path, None, None, host=f"evil.example:{http_port}")
            assert status == 403 and b"vim.websocket.allowed-origins" in body, path
        status, _, _ = await exchange(http_port, "POST", "/login", None, b'{"secret": "guess"}', "application/json",
                                      host=f"evil.example:{http_port}")
        assert status == 403 and not node.ctx.operator._failures  # no failed login spent
        assert any(e["event"] == "http_request_rejected" and e["host"] == f"evil.example:{http_port}" for e in logs)
        for path in ("/healthz", "/metrics"):  # monitoring tools use whatever name they were given
            status, _, _ = await exchange(http_port, "GET", path, None, None, host=f"evil.example:{http_port}")
            assert status == 200, path
        for host in (f"localhost:{http_port}", f"[::1]:{http_port}", f"{socket.gethostname()}:{http_port}"):
            status, _, _ = await exchange(http_port, "GET", "/dashboard.json", None, None, host=host)
            assert status == 200, host
        listed = await start_node(extra={"http": {"port": free_port()}},
                                  websocket={"allowed-origins": ["https://chat.corp.example"]})
        assert await upgrade_status(listed.client_port, "https://chat.corp.example", host="chat.corp.example") == 101
        status, _, _ = await exchange(listed.http_port, "GET", "/", None, None, host="chat.corp.example")
        assert status == 200


async def test_operator_actions_need_a_login_with_the_cluster_secret(start_node) -> None:
    """Kick and drain answer 401 without the operator cookie; the login takes the cluster
    secret; every action lands in the trail with the operator's name."""
    with trio.fail_after(30):
        node = await start_node(extra={"http": {"port": free_port()}})
        port, ctx = node.http_port, node.ctx
        url = f"ws://127.0.0.1:{node.client_port}/"
        status, _, body = await post_json(port, "/admin/kick", {"user": "alice"})
        assert status == 401 and body == {"error": "operator login required"}
        status, _, _ = await post_json(port, "/login", {"secret": "wrong", "name": "eve"})
        assert status == 401
        for _ in range(FAILURES_PER_MINUTE - 1):
            await post_json(port, "/login", {"secret": "wrong", "name": "eve"})
        status, headers, body = await post_json(  # locked out: said so, even to the right secret
            port, "/login", {"secret": ctx.config.cluster.secret.decode(), "name": "ops-anna"})
        assert status == 429 and body == {"error": "too many failed logins on this node: try again in 60 s"}
        assert headers["retry-after"] == "60"
        ctx.operator._failures.clear()  # a minute later
        forged = "9999999999999.ZXZl.00"
        status, _, _ = await post_json(port, "/admin/drain", {}, cookie=f"vim_operator={forged}")
        assert status == 401 and not ctx.draining
        status, headers, body = await post_json(
            port, "/login", {"secret": ctx.config.cluster.secret.decode(), "name": "ops-anna"})
        assert status == 200 and body["who"] == "ops-anna"
        cookie = headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        assert "Secure" not in headers["set-cookie"]  # plain HTTP: a Secure cookie would not come back
        status, _, body = await post_json(port, "/admin/kick", {}, cookie=cookie)
        assert status == 400 and "name the user" in body["error"]
        async with contextlib.AsyncExitStack() as stack:
            alice = await online(stack, url, "alice")
            status, _, body = await post_json(port, "/admin/kick", {"user": "alice"}, cookie=cookie)
            assert status == 200 and body["result"] == "1 session(s) closed"
            assert (await alice.expect_closed()).code == 4002
            bob = await online(stack, url, "bob")
            carol = await stack.enter_async_context(connect(url))  # connected, no session yet
            await carol.register_login("carol")
            status, _, body = await post_json(port, "/admin/drain", {"node": ctx.node_id}, cookie=cookie)
            assert status == 200 and body["closed"] == 1
            assert (await bob.expect_closed()).code == 4005
            await carol.send("ready", token=carol.token, client="web")  # nor a session on an open connection
            assert (await carol.expect_closed()).code == 4005
            assert len(ctx.local_sessions) == 0
        assert await upgrade_status(node.client_port) == 503  # no new client connections while draining
        while not [n for n in await ctx.redis(ctx.registry.nodes) if n.node_id == ctx.node_id and n.draining]:
            await ctx.ids.lease.changed()  # registered with the heartbeat the drain asked for at once
        status, _, health = await http(port, "/healthz")
        assert status == 503 and json.loads(health)["draining"] is True
        status, _, raw = await http(port, "/dashboard.json", cookie=cookie)
        data = json.loads(raw)
        assert data["operator"] == "ops-anna"
        assert [(e["who"], e["action"], e["target"]) for e in data["trail"]] == [
            ("ops-anna", "login", ""), ("ops-anna", "kick", "alice"), ("ops-anna", "drain", ctx.node_id)]
        status, _, raw = await http(port, "/dashboard.json")
        assert json.loads(raw)["operator"] is None and json.loads(raw)["trail"] == []


async def test_stats_keep_a_history_of_samples(start_node) -> None:
    with trio.fail_after(30):
        node = await start_node(extra={"http": {"port": free_port()}})
        stats = node.ctx.stats
        node.ctx.metrics.relay_delivered(0.004)
        node.ctx.metrics.relay_delivered(0.010)
        sample = stats.sample()
        assert (sample.p50_ms, sample.p99_ms) == (4.0, 10.0)
        status, _, body = await http(node.http_port, "/stats.json")
        data = json.loads(body)
        assert status == 200 and data["node"] == node.ctx.node_id and data["draining"] is False
        assert data["samples"][-1]["p99_ms"] == 10.0
        assert set(data["samples"][-1]) == {"t", "connections", "msgs_per_s", "forward_queue", "p50_ms", "p99_ms"}


async def test_dashboard_json_carries_every_node_s_stats_and_drains_another_node(start_node) -> None:
    """The master's /dashboard.json fetches the slave's /stats.json; a drain of the slave asked
    of the master is passed on to the slave's HTTP port with the operator's cookie."""
    with trio.fail_after(40):
        master = await start_node(node_id="m", extra={"http": {"port": free_port()}})
        slave = await start_node(node_id="s", node_type="slave", extra={"http": {"port": free_port()}},
                                 master_url=f"ws://127.0.0.1:{master.forward_port}/forward")
        while True:
            status, _, raw = await http(master.http_port, "/dashboard.json")
            nodes = {n["node"]: n for n in json.loads(raw)["nodes"]}
            if {"m", "s"} <= set(nodes) and (nodes["s"]["stats"] or {}).get("checks", {}).get("master_link") == "ok":
                break
            await trio.sleep(0.2)
        assert nodes["s"]["stats"]["node"] == "s" and nodes["s"]["stats"]["samples"]
        assert nodes["m"]["stats"]["role"] == "master"
        status, headers, _ = await post_json(
            master.http_port, "/login", {"secret": master.ctx.config.cluster.secret.decode(), "name": "ops"})
        cookie = headers["set-cookie"].split(";")[0]
        url = f"ws://127.0.0.1:{slave.client_port}/"
        async with contextlib.AsyncExitStack() as stack:
            on_slave = await online(stack, url, "sam")
            status, _, body = await post_json(master.http_port, "/admin/drain", {"node": "s"}, cookie=cookie)
            assert status == 200 and body == {"ok": True, "node": "s", "closed": 1}
            assert (await on_slave.expect_closed()).code == 4005
        assert slave.ctx.draining and not master.ctx.draining
        # a drain already passed on once is never passed on again (a loop guard)
        assert await forwarded_drain(slave.http_port, cookie) == 409


async def forwarded_drain(port: int, cookie: str) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        data = b'{"node": "m"}'
        await stream.send_all(
            b"POST /admin/drain HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n"
            + f"Cookie: {cookie}\r\nX-Vim-Forwarded-By: m\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        raw = b""
        while chunk := await stream.receive_some(65536):
            raw += chunk
    return int(raw.split(b" ", 2)[1])


async def test_a_session_opening_as_the_node_starts_draining_is_closed_4005_and_leaves_no_route(start_node) -> None:
    """`ready` passed the drain check, then the drain (or a stop) began while it registered its
    route: its session would miss the drain's kicks (and hold a stopping node's `leaving`)."""
    with trio.fail_after(30):
        node = await start_node()
        ctx = node.ctx
        real = ctx.registry.add_route

        def add_route_then_drain(user_id: UserId, route: Route) -> list[Route]:
            earlier = real(user_id, route)
            ctx.draining = True
            return earlier

        ctx.registry.add_route = add_route_then_drain
        async with contextlib.AsyncExitStack() as stack:
            carol = await stack.enter_async_context(connect(f"ws://127.0.0.1:{node.client_port}/"))
            await carol.register_login("carol")
            await carol.send("ready", token=carol.token, client="web")
            assert (await carol.expect_closed()).code == 4005
        assert len(ctx.local_sessions) == 0
        assert carol.user_id is not None
        assert ctx.registry.routes([UserId(int(carol.user_id))]) in ({}, {UserId(int(carol.user_id)): []})


async def test_heartbeat_asks_the_node_where_it_listens_and_says_why_it_is_unhealthy(start_node) -> None:
    """`vim-cluster heartbeat` (admin.node_health) reaches a node bound to one address at that
    address (not at 127.0.0.1, where nothing listens), and a 503 says what /healthz says."""
    with trio.fail_after(30):
        node = await start_node(websocket={"host": "127.0.0.2"}, extra={"http": {"port": free_port()}})
        ctx = node.ctx
        while True:  # the node registers itself in Redis on its first heartbeat
            healthy, line = await trio.to_thread.run_sync(node_health, ctx.config)
            if "not registered" not in line:
                break
            await trio.sleep(0.1)
        assert healthy and line.startswith(f"{ctx.node_id}: alive, heartbeat"), line
        ctx.draining = True
        healthy, line = await trio.to_thread.run_sync(node_health, ctx.config)
        assert not healthy and line == (f"{ctx.node_id}: alive but http://127.0.0.2:{node.http_port}/healthz answers"
                                        " 503: draining (it takes no new connections; restart it to serve again)")


async def test_a_kick_of_a_number_no_store_holds_is_no_such_user(start_node) -> None:
    """The dashboard's kick reads a number as a user id only when a store could hold it (the
    CLI's rule, model.user_id_in): a number past 64 bits was a traceback in the directory's thread."""
    with trio.fail_after(30):
        node = await start_node(extra={"http": {"port": free_port()}})
        port, secret = node.http_port, node.ctx.config.cluster.secret.decode()
        _, headers, _ = await post_json(port, "/login", {"secret": secret, "name": "ops-anna"})
        cookie = headers["set-cookie"].split(";")[0]
        status, _, body = await post_json(port, "/admin/kick", {"user": str(2**64)}, cookie=cookie)
        assert status == 404 and body == {"ok": False, "result": "no such user"}


async def test_health_checks_that_overlap_all_get_the_backends_answer(start_node) -> None:
    """Attack: 20 /healthz at once (or a load balancer's /healthz while the dashboard fetches
    /stats.json). Each check used to fail at once with 'the previous check has not returned
    yet' while another was out: 503 for a healthy node, which a load balancer takes out of
    rotation. Now each waits for the probe in flight and gets its answer."""
    with trio.fail_after(30):
        node = await start_node(extra={"http": {"port": free_port()}})
        answers: list[tuple[int, dict]] = []

        async def check(path: str) -> None:
            status, _, body = await http(node.http_port, path)
            answers.append((status, json.loads(body)["checks"]))

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(check, "/stats.json" if i % 4 == 0 else "/healthz")
        assert [a for a in answers if a[0] != 200 or set(a[1].values()) != {"ok"}] == []


async def test_healthz_and_a_503_name_what_is_down_not_the_backend_s_error(
        nursery: trio.Nursery, node_folder: Path, redis_process: RedisServer,  # noqa: F811
        private_mariadb: MariaDB) -> None:  # noqa: F811
    """Attack: read /healthz (and a 503) while MariaDB and Redis are down. Their errors named
    the database account, hosts and ports (`down: mysql vim@127.0.0.1:PORT: (2003, "Can't
    connect ...")`) to anyone; now the checks say `down: unavailable` (or `down: timeout`), the
    503 one fixed line, the node's log has each error once however often it is probed, and
    the logged-in operator's /stats.json has them in `problems`."""
    with private_mariadb.admin() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE vim CHARACTER SET utf8mb4")
    config = load_config(write_config(
        node_folder, redis_url=redis_process.url, extra={"http": {"port": free_port()}},
        store={"directory": private_mariadb.url("vim"), "messages": "sqlite:data/messages.db"}))
    with trio.fail_after(60), capture_logs() as logs:
        node: RunningNode = await nursery.start(serve_node, config)
        port = node.http_port
        assert port is not None
        status, _, body = await http(port, "/healthz")
        assert status == 200, body
        private_mariadb.stop()
        redis_process.kill()
        secrets_shown = (private_mariadb.password, str(private_mariadb.port), str(redis_process.port), "vim@",
                         "mysql", "Connect", "refused", "Errno")
        for _ in range(3):
            status, _, body = await http(port, "/healthz")
            assert status == 503 and not [s for s in secrets_shown if s in body.decode()], body
            checks = json.loads(body)["checks"]
            assert checks["directory"] in ("down: unavailable", "down: timeout"), checks
            assert checks["redis"] in ("down: unavailable", "down: timeout") and checks["messages"] == "ok", checks
        for _ in range(2):
            status, _, body = await http(port, "/dashboard.json")  # lists the nodes from Redis
            assert status == 503 and body == UNAVAILABLE
        status, _, body = await http(port, "/stats.json")
        assert "problems" not in json.loads(body)
        _, headers, _ = await post_json(port, "/login", {"secret": config.cluster.secret.decode(), "name": "ops"})
        status, _, body = await http(port, "/stats.json", cookie=headers["set-cookie"].split(";")[0])
        problems = json.loads(body)["problems"]
        assert set(problems) == {"redis", "directory"} and str(private_mariadb.port) in problems["directory"]
        assert str(redis_process.port) in problems["redis"]
    failed = [(e["event"], e["check"]) for e in logs if e["event"] in ("health_check_failed", "http_store_unavailable")]
    assert sorted(failed) == [("health_check_failed", "directory"), ("health_check_failed", "redis"),
                              ("http_store_unavailable", "http /dashboard.json")], failed
    assert all(str(private_mariadb.port) in e["error"] for e in logs if e.get("check") == "directory")
