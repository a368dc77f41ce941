"""The `vim-cluster` command: one entry point, a subcommand per job (PROTOCOL.md §4)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import structlog
import trio

from . import __version__
from .config import NodeConfig, load_config
from .errors import ConfigError, StoreUnavailable, VimError
from .logs import configure_logging

DEFAULT_DIR = "node-configs"


def _load(path: str) -> NodeConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"vim-cluster: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def _run_node(config: NodeConfig) -> None:
    from .node.app import serve_node

    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve_node, config)
        print(f"{config.node_id} ({config.cluster.node_type.value}) ready at {config.client_url}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                running.stop()
                break


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    try:
        trio.run(_run_node, config)
    except (StoreUnavailable, VimError) as exc:
        structlog.get_logger().error("node_failed", node_id=config.node_id, error=str(exc))
        print(f"vim-cluster: {config.node_id}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .launcher import launch

    return launch(Path(args.dir), log_json=args.log_json)


def cmd_user_add(args: argparse.Namespace) -> int:
    from .admin import add_user

    config = _load(args.config)
    password = sys.stdin.readline().rstrip("\n")
    try:
        user_id = add_user(config, args.username, password, args.name)
    except VimError as exc:
        print(f"vim-cluster: {exc}", file=sys.stderr)
        return 1
    print(user_id)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vim-cluster",
        description="A clustered instant-messaging relay server: one master, one node per department.",
    )
    parser.add_argument("--version", action="version", version=f"vim-cluster {__version__}")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up",
        help="start every node config in DIR, each as its own process",
        description="Start every *.yaml/*.yml/*.toml node config in DIR as its own process "
        "(embedded Redis and SQLite where the configs say so), print each node's client URL, "
        "and stop them all cleanly on Ctrl-C.",
    )
    up.add_argument("dir", nargs="?", default=DEFAULT_DIR, help=f"folder of node configs (default {DEFAULT_DIR}/)")
    up.set_defaults(func=cmd_up)

    run = commands.add_parser("run", help="run one node", description="Run one node until Ctrl-C or SIGTERM.")
    run.add_argument("config", help="the node's YAML or TOML config file")
    run.set_defaults(func=cmd_run)

    user = commands.add_parser("user", help="manage users", description="Manage users in the directory.")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = user_commands.add_parser(
        "add",
        help="add a user (password from stdin)",
        description="Add a user to the directory of CONFIG's node; reads the password from stdin.",
    )
    add.add_argument("username")
    add.add_argument("--name", help="display name (default: the username)")
    add.add_argument("--config", default=f"{DEFAULT_DIR}/master.yaml", help="a node config naming the directory")
    add.set_defaults(func=cmd_user_add)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(json=args.log_json, level=args.log_level)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
