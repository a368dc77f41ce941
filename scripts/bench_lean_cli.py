"""`vim-cluster` for scripts/bench_lean_ab.py: the same CLI, with two changes.

- The load generator's users are made one connection each (register, login, close). On a
  loaded machine the stock helper's connections, each registering a dozen users in turn,
  outlive the 10 s authentication deadline and the scenario fails before it measures anything.
- `bench raw-connections --configs DIR --connections K --json`: K idle connections to the last
  node, authenticated by `ready` with a token as `bench connections` does, held by a bare
  client (a socket and nothing else per connection, so the client's own cost does not slow
  the node down); prints the node's RSS growth per connection, as `bench connections` does.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
from pathlib import Path

import trio
from trio_websocket import open_websocket_url

import vim_cluster.bench as bench
from vim_cluster.cli import main
from vim_cluster.sysinfo import raise_fd_limit, rss_kb


async def create_users(url: str, count: int, prefix: str, parallel: int = 8) -> list[bench.Account]:
    accounts: list[bench.Account | None] = [None] * count
    numbers = iter(range(count))

    async def worker() -> None:
        for i in numbers:
            name = f"{prefix}{i}"
            async with open_websocket_url(url) as ws:
                await bench.send(ws, "register", username=name, password=bench.PASSWORD)
                await bench.expect(ws, "register-ok")
            async with open_websocket_url(url) as ws:
                await bench.send(ws, "login", username=name, password=bench.PASSWORD)
                login = await bench.expect(ws, "login-ok")
            accounts[i] = bench.Account(login["userId"], login["token"])

    async with trio.open_nursery() as nursery:
        for _ in range(min(parallel, count)):
            nursery.start_soon(worker)
    return [a for a in accounts if a is not None]


def _masked_text(payload: bytes) -> bytes:
    """One final masked text frame (client to server), payload under 126 bytes... or not."""
    mask = secrets.token_bytes(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + mask + body


async def _open(host: str, port: int, token: str, held: list[trio.SocketStream]) -> None:
    """Handshake, then `ready` with the token as the load generator does, up to sync-done."""
    stream = await trio.open_tcp_stream(host, port)
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    await stream.send_all((f"GET / HTTP/1.1\r\nHost: {host}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise OSError("closed during the handshake")
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 101"):
        raise OSError(answer.split(b"\r\n")[0].decode())
    ready = {"code": "ready", "message": {"token": token, "client": f"raw-{secrets.token_hex(3)}"}}
    await stream.send_all(_masked_text(json.dumps(ready).encode()))
    while b"sync-done" not in answer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise OSError("closed before sync-done")
        answer += chunk
    held.append(stream)


async def raw_connections(configs: str, count: int) -> dict[str, object]:
    ns = argparse.Namespace(configs=configs, url=None, pid=None)
    urls, pids = bench.targets(ns)
    accounts = await create_users(urls[0], max(1, count // 100), f"r{secrets.token_hex(3)}u")
    host, port = urls[-1].split("//")[1].rstrip("/").rsplit(":", 1)
    held: list[trio.SocketStream] = []
    failed = 0
    await trio.sleep(1)
    before = rss_kb(pids[-1])
    limiter = trio.CapacityLimiter(64)

    async def one(i: int) -> None:
        nonlocal failed
        async with limiter:
            try:
                await _open(host, int(port), accounts[i % len(accounts)].token, held)
            except OSError:
                failed += 1

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    elapsed = trio.current_time() - started
    await trio.sleep(3)  # the node settles (session registration, garbage)
    after = rss_kb(pids[-1])
    for stream in held:
        stream.socket.close()
    return {"scenario": "raw-connections", "rate": "max", "connections": len(held), "failed": failed,
            "open_seconds": round(elapsed, 1), "rss_before_kb": before, "rss_after_kb": after,
            "rss_per_connection_kb": round((after - before) / len(held), 2) if held else None}


if __name__ == "__main__":
    bench.create_users = create_users  # type: ignore[assignment]
    if sys.argv[1:3] == ["bench", "raw-connections"]:
        raise_fd_limit()
        parser = argparse.ArgumentParser()
        parser.add_argument("--configs", required=True)
        parser.add_argument("--connections", type=int, default=10000)
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--duration")
        options = parser.parse_args(sys.argv[3:])
        print(json.dumps(trio.run(raw_connections, str(Path(options.configs)), options.connections)))
        sys.exit(0)
    sys.exit(main())
