"""The node's HTTP port over a real socket: pages, dashboard JSON, health, metrics, errors."""

from __future__ import annotations

import json

import trio

from ..support import free_port


async def http(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request; the node answers and closes the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        if method == "POST":
            request += "Content-Length: 2\r\n\r\n{}"
        else:
            request += "\r\n"
        await stream.send_all(request.encode())
        raw = b""
        while chunk := await stream.receive_some(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, body


async def test_http_port_serves_pages_json_health_and_metrics(start_node) -> None:
    with trio.fail_after(30):
        node = await start_node(extra={"http": {"port": free_port()}})
        port = node.http_port
        assert port

        status, headers, body = await http(port, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert int(headers["content-length"]) == len(body)
        page = body.decode()
        assert "<script>" in page and '"register"' in page and "/healthz" in page  # the chat client
        assert "http://" not in page and "https://" not in page  # self-contained

        status, headers, body = await http(port, "/dashboard")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert "/dashboard.json" in body.decode()

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
