"""Write a master + two slave node configs on free loopback ports for benchmarks.

Usage: python scripts/bench_cluster.py DIR [--directory URL --messages URL]
The configs raise vim.websocket.rate-limit (PROTOCOL.md §3) so the load generator is not
throttled, and share one secret and one set of stores.
"""

from __future__ import annotations

import argparse
import secrets
import socket
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--directory", default="sqlite:data/directory.db")
    parser.add_argument("--messages", default="sqlite:data/messages.db")
    parser.add_argument("--redis", default="embedded")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "secret.key").write_text(secrets.token_hex(32))
    forward = free_port()
    store = {"directory": args.directory, "messages": args.messages}
    nodes = [("master", "master", None), ("dept-1", "slave", forward), ("dept-2", "slave", forward)]
    for node_id, role, master_port in nodes:
        cluster = {"node-type": role, "node-id": node_id, "secret-file": "secret.key"}
        websocket = {"host": "127.0.0.1", "port": free_port(), "rate-limit": 1_000_000, "idle-timeout": 600}
        if role == "master":
            websocket["forward-port"] = forward
        else:
            cluster["master-url"] = f"ws://127.0.0.1:{master_port}/forward"
        vim = {"cluster": cluster, "websocket": websocket, "http": {"port": free_port()},
               "redis": {"url": args.redis}, "store": store}
        (folder / f"{node_id}.yaml").write_text(yaml.safe_dump({"vim": vim}, sort_keys=False))


if __name__ == "__main__":
    main()
