"""The `vim-cluster` command: one entry point, a subcommand per job (PROTOCOL.md §4).

Exit codes: 0 done; 1 the job failed or (whereis, kick) the user has no session; 2 usage,
config error, a taken port or an unknown user; 3 (whereis, kick, user) the cluster or a store
could not be reached. The user actions live in cli_users.py.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

from . import __version__, cli_users
from .cli_config import (
    DEFAULT_CONFIG,
    add_command,
    at_least,
    load_or_exit,
    secret_file_warnings,
    shown,
)
from .cli_lifecycle import add_lifecycle_commands, add_user_delete
from .cli_users import cmd_user_add
from .config import NodeConfig
from .errors import VimError
from .logs import configure_logging
from .ports import Route
from .sysinfo import raise_fd_limit

if TYPE_CHECKING:
    from .node.app import RunningNode

DEFAULT_DIR = "node-configs"
CONFIG_ENV = "VIM_CLUSTER_CONFIG"
log = structlog.get_logger()
EXIT_NO_SESSION, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
CONFIG_HELP = f"a node config of the cluster (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})"


def config_default() -> str:
    """--config's default: $VIM_CLUSTER_CONFIG, else node-configs/master.yaml."""
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=CONFIG_HELP)


def _config_from_env(parser: argparse.ArgumentParser) -> None:
    """Every subcommand's --config (and heartbeat's CONFIG) that defaults to
    node-configs/master.yaml defaults to $VIM_CLUSTER_CONFIG instead when it is set."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _config_from_env(sub)
        elif action.dest == "config" and action.default == DEFAULT_CONFIG:
            action.default = config_default()


def cmd_check(args: argparse.Namespace) -> int:
    from .tls import certificate_problems

    config = load_or_exit(args.config)
    for warning in (*config.ignored, *secret_file_warnings(config), *certificate_problems(config)):
        print(f"warning: {args.config}: {warning}", file=sys.stderr)
    print(f"ok: {args.config} ({config.node_id}, {config.cluster.node_type.value})")
    return 0


async def _run_node(config: NodeConfig) -> None:
    """Serves until SIGINT or SIGTERM, which are taken from the first moment: one during the
    start (up to seconds on a new Redis) ends it at once. A container's node is pid 1, which
    the kernel gives no default action for SIGTERM: `docker stop` would wait its whole timeout."""
    from .node.app import serve_node

    running: list[RunningNode] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    if running:
                        running[0].stop()  # drains: sessions get 1001, the link leaves (node/app.py)
                    else:
                        log.info("node_start_cancelled", why="a signal came during the start")
                        nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            running.append(await nursery.start(serve_node, config))
            # What startup made (modules, config, pools) lives as long as the node: keeping it out
            # of the collector's generations makes each full collection scan only newer objects
            # (a full collection of the startup heap takes 25 ms on a 2-core test machine).
            gc.freeze()
            print(f"{config.node_id} ({config.cluster.node_type.value}) ready at {config.client_url}", flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from .node.listeners import PortTaken
    from .wiring import hold_embedded_redis, release_embedded_redis

    config = load_or_exit(args.config)
    open_files = raise_fd_limit()  # every client connection is a file descriptor
    if open_files < 4096:
        structlog.get_logger().warning("open_files_limit_low", limit=open_files,
                                       hint="raise it (ulimit -Hn) for more client connections")
    embedded = config.redis.url == "embedded"
    try:
        if embedded:  # held by this process; the last holder to stop stops it
            hold_embedded_redis(os.getpid())
        trio.run(_run_node, config)
    except BaseException as exc:
        errors = _vim_errors(exc)
        if not errors:
            raise
        taken = [error for error in errors if isinstance(error, PortTaken)]
        if taken:  # one line naming the key and the port; the node never registered
            print(f"vim-cluster: {config.node_id}: {_taken_why(config, taken[0])}", file=sys.stderr)
            return EXIT_USAGE
        for error in errors:
            structlog.get_logger().error("node_failed", node_id=config.node_id, error=str(error))
            print(f"vim-cluster: {config.node_id}: {error}", file=sys.stderr)
        return 1
    finally:
        if embedded:
            release_embedded_redis(os.getpid())
    return 0


def _taken_why(config: NodeConfig, taken: VimError) -> str:
    """A taken port's line; says so when this very node already runs (same config twice)."""
    from .admin import live_node

    running = live_node(config)
    if running is None:
        return str(taken)
    return (f"node id {config.node_id!r} is held by another live process (pid {running.pid}, "
            f"{running.client_url}): {taken}")


def _vim_errors(exc: BaseException) -> list[VimError]:
    """The VimErrors (StoreUnavailable, NodeIdTaken, LeaseLost, ...) that `exc` consists of;
    trio's nurseries wrap a task's error in exception groups. Empty if anything else is in it:
    that propagates, with its traceback."""
    if isinstance(exc, VimError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found = [_vim_errors(inner) for inner in exc.exceptions]
        if all(found):
            return [error for errors in found for error in errors]
    return []


def cmd_up(args: argparse.Namespace) -> int:
    from .launcher import launch

    return launch(Path(args.dir), log_json=args.log_json, log_level=args.log_level)


def cmd_nodes(args: argparse.Namespace) -> int:
    from . import wiring
    from .admin import master_summary, nodes_table, now_ms
    from .errors import StoreUnavailable

    config = load_or_exit(args.config)
    try:
        registry = wiring.open_registry(config, start=False)
    except StoreUnavailable as exc:  # the embedded Redis, not running
        print(f"vim-cluster nodes: cannot ask Redis: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        while True:
            nodes, view, now = registry.nodes(), registry.active_master(), now_ms()
            table = nodes_table(nodes, now, view) + "\n\n" + master_summary(view, nodes, now)
            if args.watch:
                print("\033[2J\033[H" + time.strftime("%H:%M:%S ") + "vim-cluster nodes (Ctrl-C stops)", flush=True)
            print(table, flush=True)
            if not args.watch:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    except StoreUnavailable as exc:
        print(f"vim-cluster nodes: cannot ask Redis: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        registry.close()


def cmd_heartbeat(args: argparse.Namespace) -> int:
    from .admin import node_health

    alive, line = node_health(load_or_exit(args.config))
    print(line, file=sys.stdout if alive else sys.stderr)
    return 0 if alive else 1


def _user_routes(args: argparse.Namespace) -> tuple[NodeConfig, int, list[Route]]:
    """The config, the user (username or id) and the user's sessions on live nodes; says so
    when there are none. Exits 2 for an unknown user, 3 if Redis or the directory is down."""
    from .admin import resolve_user, routes_of
    from .errors import ClientError, StoreUnavailable

    config = load_or_exit(args.config, stores_exist=("directory",))
    try:
        user_id = resolve_user(config, args.user)
        routes = routes_of(config, user_id)
    except ClientError as exc:
        print(f"vim-cluster {args.command}: {exc.detail}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except StoreUnavailable as exc:
        print(f"vim-cluster {args.command}: cannot ask the cluster: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_UNREACHABLE) from None
    if not routes:
        print(f"user {user_id} has no session on any live node")
    return config, user_id, routes


def cmd_whereis(args: argparse.Namespace) -> int:
    _, _, routes = _user_routes(args)
    if not routes:
        return EXIT_NO_SESSION
    for route in sorted(routes, key=lambda r: (r.node_id, r.session_id)):
        print(f"{route.node_id}\tsession {route.session_id}\tclient {shown(route.client)}\tuuid {shown(route.uuid or '-')}")
    return 0


def cmd_kick(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from trio_websocket import ConnectionClosed

    from .admin import master_forward_url
    from .errors import CloseCode, StoreUnavailable
    from .node.forward_link import ForwardLinkRefused, link_problem, send_as_operator
    from .node.ws_open import LinkOpenError
    from .protocol.forward_frames import Kick, Packet
    from .tls import operator_context

    config, user_id, routes = _user_routes(args)
    if not routes:
        return EXIT_NO_SESSION
    nodes = sorted({r.node_id for r in routes})
    packets: list[Packet] = [Kick(node, user_id, None, int(CloseCode.KICKED), None) for node in nodes]
    try:
        url = master_forward_url(config)
    except StoreUnavailable as exc:
        print(f"vim-cluster kick: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    parts = urlsplit(url)
    context = operator_context(config, parts.hostname or "") if parts.scheme == "wss" else None
    try:
        trio.run(partial(send_as_operator, url, config.cluster.secret, packets, ssl_context=context))
    except (LinkOpenError, OSError, ConnectionClosed, ForwardLinkRefused, trio.TooSlowError) as exc:
        print(f"vim-cluster kick: the master did not confirm the kick ({link_problem(url, exc)}); "
              "a node holding the user may be unreachable", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"closed {len(routes)} session(s) of user {user_id} on {', '.join(nodes)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    if not args.url and not Path(args.configs).is_dir():
        print(f"vim-cluster bench: give --url or a node-configs folder (not found: {args.configs})", file=sys.stderr)
        return 2
    if args.timeline:
        if args.scenario not in ("cross-node", "local", "group"):
            print(f"vim-cluster bench: --timeline goes with cross-node, local or group, not {args.scenario}",
                  file=sys.stderr)
            return 2
        folder = Path(args.timeline).parent
        if Path(args.timeline).is_dir() or not (folder.is_dir() and os.access(folder, os.W_OK)):
            print(f"vim-cluster bench: cannot write --timeline {args.timeline} (a folder, or not in a writable one)",
                  file=sys.stderr)
            return 2
    if args.ca_file:
        if not os.access(args.ca_file, os.R_OK):
            print(f"vim-cluster bench: cannot read --ca-file {args.ca_file}", file=sys.stderr)
            return 2
        os.environ["SSL_CERT_FILE"] = args.ca_file  # every wss:// connection's default context trusts it
    if args.scenario in ("cross-node", "local", "group") and not args.duration and not args.messages:
        print("vim-cluster bench: --duration 0 needs --messages N (else it would send for ever)", file=sys.stderr)
        return 2
    from trio_websocket import ConnectionClosed, HandshakeError

    unreachable = (OSError, HandshakeError, ConnectionClosed)  # a node that does not answer, or refuses
    try:
        return bench_main(args)
    except unreachable as exc:
        first: BaseException = exc
    except BaseExceptionGroup as group:  # from the scenario's nurseries
        matched, rest = group.split(unreachable)
        if matched is None or rest is not None:
            raise
        first = matched
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
    why = first if str(first) or first.__context__ is None else first.__context__  # HandshakeError says nothing
    print(f"vim-cluster bench: a node did not answer or closed the connection: {type(why).__name__}: {why}",
          file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vim-cluster",
        description="A clustered instant-messaging relay server: one master, one node per department.",
        epilog="Global options go before COMMAND (vim-cluster --log-level debug run CONFIG). "
        "`vim-cluster COMMAND --help` gives a command's options and exit codes. Commands that act on a "
        f"cluster read a node's config: --config FILE, else ${CONFIG_ENV}, else {DEFAULT_CONFIG} (in a checkout). "
        "Deploying, backups, upgrades: docs/operations.md; every command: docs/protocol.md section 6.",
    )
    parser.add_argument("--version", action="version", version=f"vim-cluster {__version__}")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="the least level logged to stderr (default info)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_node_commands(commands)  # up, run, check
    _add_cluster_commands(commands)  # nodes, heartbeat, whereis, kick
    _add_bench_command(commands)
    _add_user_commands(commands)  # user list, passwd, add, delete
    add_lifecycle_commands(commands)  # export, import, purge
    return parser


def _add_node_commands(commands: Any) -> None:
    """`up`, `run`, `check`: start nodes, or check a config."""
    up = add_command(
        commands, "up", cmd_up,
        help="start every node config in DIR, each as its own process",
        description="Start every *.yaml/*.yml/*.toml node config in DIR as its own process "
        "(embedded Redis and SQLite where the configs say so), print each node's client URL, "
        "and stop them all cleanly on Ctrl-C or SIGTERM (department nodes first). Exit 0 when "
        "stopped so; 1 if a node failed to start or died; 2 for a bad folder or config, a node "
        "already running or a port taken (one line).",
    )
    up.add_argument("dir", nargs="?", default=DEFAULT_DIR, help=f"folder of node configs (default {DEFAULT_DIR}/)")

    run = add_command(commands, "run", cmd_run, help="run one node",
                      description="Run one node until Ctrl-C or SIGTERM (it drains: sessions get 1001, "
                      "then it stops). Exit 0 when stopped so; 1 if it failed (one line: e.g. its node id "
                      "is held by a live process, a store is down); 2 for a config error or a taken port.")
    run.add_argument("config", help="the node's YAML or TOML config file")

    check = add_command(
        commands, "check", cmd_check, help="validate a node config without starting anything",
        description="Load CONFIG as `run` would (keys, values, the secret and TLS files) and start "
        "nothing: print `ok: CONFIG (NODE-ID, NODE-TYPE)` and exit 0, or exit 2 with the one-line error. "
        "Warnings (stderr, still exit 0): master-only keys in a slave's config, a cluster secret that others "
        "than its owner may read, a TLS key or password file that every user may read, a TLS certificate not "
        "valid for the host the node advertises, expired or expiring within 14 days.")
    check.add_argument("config", help="the node's YAML or TOML config file")


def _add_cluster_commands(commands: Any) -> None:
    """`nodes`, `heartbeat`, `whereis`, `kick`: look at a running cluster and act on it."""
    nodes = add_command(
        commands, "nodes", cmd_nodes,
        help="the cluster as Redis sees it",
        description="Every node registered in Redis: role (master, standby or slave), client URL, "
        "seconds since its last heartbeat, connections, messages accepted, and whether it is alive; "
        "then the active master, its epoch, the standbys, and the takeovers of the master lease. "
        "Exit 0; 3 if Redis cannot be reached (one line).",
    )
    add_config_option(nodes)
    nodes.add_argument("--watch", action="store_true", help="refresh the table until Ctrl-C")
    nodes.add_argument("--interval", type=at_least(0.1), default=2.0,
                       help="seconds between refreshes with --watch (at least 0.1; default 2)")

    heartbeat = add_command(
        commands, "heartbeat", cmd_heartbeat,
        help="exit 0 if CONFIG's node is registered and alive",
        description="Check one node for cron and health checks: exit 0 when the node of CONFIG is "
        "registered in Redis, its lease is alive and its /healthz answers 200; exit 1 otherwise (one line "
        "saying why). /healthz is asked at the node's own listen address (127.0.0.1 when it listens on "
        "0.0.0.0), so run it on the node's host.",
    )
    heartbeat.add_argument("config", nargs="?", default=DEFAULT_CONFIG,
                           help=f"the node's config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})")

    whereis = add_command(commands, "whereis", cmd_whereis, help="which nodes hold a user's sessions",
                          description="List every live session of USER (a username or user id). "
                          "Exit 0: listed; 1: the user has no session; 2: no such user (or usage, "
                          "config error); 3: Redis or the directory is unreachable.")
    whereis.add_argument("user", help="username or user id")
    add_config_option(whereis)

    kick = add_command(commands, "kick", cmd_kick, help="close every session of a user",
                       description="Close every session of USER on every node (close code 4002), "
                       "through the master's forward channel. Exit 0: closed; 1: the user has no "
                       "session; 2: no such user (or usage, config error); 3: the cluster did not "
                       "confirm.")
    kick.add_argument("user", help="username or user id")
    add_config_option(kick)


def _add_bench_command(commands: Any) -> None:
    """`bench`: the load generator."""
    bench = add_command(
        commands, "bench", cmd_bench,
        help="load generator: run a scenario against a running cluster",
        description="Speak the client protocol to a running cluster and measure it. Scenarios: "
        "cross-node (senders on one node, recipients on another, pipelined), local (one node), "
        "group (one group spread over every node), connections (K idle authenticated "
        "connections; RSS per connection), churn (connect/ready/close cycles per second). "
        "Raise vim.websocket.rate-limit in the nodes' configs for high rates. Exit 0; 1 a node did not "
        "answer or closed the connection; 2 no cluster given or an option out of range.",
    )
    bench.add_argument("scenario", choices=["cross-node", "local", "group", "connections", "churn"],
                       help="what to run (above)")
    bench.add_argument("--configs", default=DEFAULT_DIR, help="node-configs folder of the running cluster")
    bench.add_argument("--url", action="append", help="a node's client URL (repeat; instead of --configs)")
    bench.add_argument("--pid", action="append", type=int, help="a node's pid for CPU/RSS (with --url)")
    bench.add_argument("--ca-file", help="PEM CA bundle that verifies the nodes' wss:// certificates "
                       "(instead of the system's CAs)")
    bench.add_argument("--senders", type=at_least(1, int), default=4, help="sending clients (churn: parallel loops); default 4")
    bench.add_argument("--members", type=at_least(2, int), default=12, help="group scenario: members; default 12")
    bench.add_argument("--duration", type=at_least(0), default=10.0, help="seconds to send (0: use --messages); default 10")
    bench.add_argument("--messages", type=at_least(0, int), default=0, help="messages in all (instead of --duration)")
    bench.add_argument("--window", type=at_least(1, int), default=32, help="unacked messages per sender; default 32")
    bench.add_argument("--rate", type=at_least(0), default=0, help="messages/s in all, paced (0, the default: as fast as acks allow)")
    bench.add_argument("--size", type=at_least(0, int), default=100, help="content bytes per message; default 100")
    bench.add_argument("--connections", type=at_least(1, int), default=1000, help="connections scenario: K; default 1000")
    bench.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    bench.add_argument("--timeline", metavar="FILE",
                       help="message scenarios: write each message's send, ack and delivery times "
                       "(seconds from the first send) to FILE as CSV")


def _add_user_commands(commands: Any) -> None:
    """`user list`, `user passwd`, `user add`, `user delete`."""
    user = commands.add_parser("user", help="manage users", description="Manage users in the directory.")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    cli_users.register_user_actions(user_commands, add_config_option)  # list, passwd
    add = add_command(
        user_commands, "add", cmd_user_add,
        help="add a user (password prompted, or from stdin / --password-file)",
        description="Add a user to the directory of CONFIG's node (no node needs to run) and print "
        "its id. The password (at least 8 characters) is prompted twice without echo on a terminal, "
        "else read from the first line of stdin, or of --password-file. Exit 0; 1 refused (an invalid "
        "or taken username, a short password, prompts that differ); 2 config error; 3 a store or "
        "Redis unreachable.",
    )
    add.add_argument("username", help="the login name: 3 to 32 of A-Z a-z 0-9 _ . - (unique whatever its case)")
    cli_users.add_password_file_option(add)
    add.add_argument("--name", help="display name (default: the username)")
    add.add_argument("--dept", metavar="DEPT",
                     help="department path, e.g. 'Engineering/Backend' (missing departments are created)")
    add.add_argument("--config", default=DEFAULT_CONFIG,
                     help=f"a node config naming the directory (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})")
    add_user_delete(user_commands)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _config_from_env(parser)
    args = parser.parse_args(argv)
    configure_logging(json=args.log_json, level=args.log_level)
    try:
        return int(args.func(args) or 0)
    except VimError as exc:
        print(f"vim-cluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
