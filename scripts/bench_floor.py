"""The memory floor under vim-cluster's connections: RSS per idle connection of a bare
trio-websocket server that accepts connections and holds them, nothing else.

Usage: .venv/bin/python scripts/bench_floor.py [K]   (default 10000)
Compare with `vim-cluster bench connections` (docs/performance.md): the difference is what
vim-cluster itself keeps per connection.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, open_websocket_url, serve_websocket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cluster import free_port  # noqa: E402

from tests.support import wait_port  # noqa: E402
from vim_cluster.sysinfo import raise_fd_limit, rss_kb  # noqa: E402


async def _hold(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        pass


async def serve(port: int) -> None:
    await serve_websocket(_hold, "127.0.0.1", port, None)


async def open_connections(url: str, count: int, server_pid: int) -> float:
    async def hold(*, task_status: trio.TaskStatus[None]) -> None:
        async with open_websocket_url(url):
            task_status.started()
            await trio.sleep_forever()

    before = rss_kb(server_pid)
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            await nursery.start(hold)
        await trio.sleep(2)
        after = rss_kb(server_pid)
        nursery.cancel_scope.cancel()
    return (after - before) / count


def main() -> None:
    raise_fd_limit()
    if sys.argv[1:2] == ["--serve"]:
        trio.run(serve, int(sys.argv[2]))
        return
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        wait_port(port, 20.0, server)
        per = trio.run(open_connections, f"ws://127.0.0.1:{port}/", count, server.pid)
        print(f"bare trio-websocket server: {per:.2f} KB RSS per idle connection at {count} connections")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
