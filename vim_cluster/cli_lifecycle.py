"""The data-lifecycle subcommands: export, import, purge and `user delete` (docs/data-lifecycle.md).

Each command works on the stores of CONFIG's node directly (no running node needed), except
that `user delete` tells the live nodes through the master. Exit codes (as `whereis`/`kick`):
0 done; 1 `purge` found another purge running; 2 a usage or config error, an unknown user, a bad
file; 3 a store or Redis unreachable, or (`user delete`) the master did not confirm. Errors are
one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from tqdm import tqdm

from .cli_config import DEFAULT_CONFIG, add_command, load_or_exit
from .config import NodeConfig
from .errors import ClientError, StoreUnavailable

EXIT_UNREACHABLE = 3


def _config_arg(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("VIM_CLUSTER_CONFIG", DEFAULT_CONFIG)
    parser.add_argument("--config", default=default,
                        help=f"a node config of the cluster (default $VIM_CLUSTER_CONFIG, else {DEFAULT_CONFIG})")


def _fail(command: str, problem: str, code: int) -> int:
    print(f"vim-cluster {command}: {problem}", file=sys.stderr)
    return code


@contextlib.contextmanager
def _progress(what: str) -> Iterator[tqdm[Any]]:
    """A progress bar on stderr when it is a terminal (nothing otherwise)."""
    with tqdm(unit=" msg", desc=what, file=sys.stderr, disable=not sys.stderr.isatty(), mininterval=0.5) as bar:
        yield bar


def _per_second(count: int, seconds: float) -> str:
    return f"{count / max(seconds, 1e-9):,.0f}/s"


_ConfigCommand = Callable[[argparse.Namespace, NodeConfig], int]


def _on_config(name: str, stores_exist: tuple[str, ...] = ()) -> Callable[[_ConfigCommand], Callable[[argparse.Namespace], int]]:
    """The command `name` runs on the config of --config (a config error, or one of the SQLite
    `stores_exist` missing: exit 2); a store or Redis that does not answer: one line on stderr
    and exit 3."""
    def wrap(command: _ConfigCommand) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(command)
        def run(args: argparse.Namespace) -> int:
            config = load_or_exit(args.config, stores_exist)
            try:
                return command(args, config)
            except StoreUnavailable as exc:
                return _fail(name, str(exc), EXIT_UNREACHABLE)
        return run
    return wrap


@_on_config("export", stores_exist=("messages",))
def cmd_export(args: argparse.Namespace, config: NodeConfig) -> int:
    from . import wiring
    from .admin import resolve_user
    from .export import Selection, chat_key_of, exported, header, message_line, parse_since
    from .model import user_id_in

    try:
        since = parse_since(args.since) if args.since else None
        chat = chat_key_of(args.chat) if args.chat else None
    except ValueError as exc:
        return _fail("export", str(exc), 2)
    try:
        user = resolve_user(config, args.user) if args.user is not None else None
    except ClientError as exc:
        user = user_id_in(args.user)  # a deleted account's id: its messages (placeholders if erased) stay
        if user is None:
            return _fail("export", exc.detail, 2)
        print(f"no account {user} (deleted?): exporting the messages stored under its id", file=sys.stderr)
    store = wiring.open_messages(config)
    started, count = time.perf_counter(), 0
    try:
        try:
            out: IO[str] = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
        except OSError as exc:
            return _fail("export", f"cannot write {args.out}: {exc.strerror or exc}", 2)
        with _progress("export") as bar:
            out.write(header())
            for message in exported(store, Selection(user, chat, since)):
                out.write(message_line(message))
                count += 1
                bar.update(1)
        if out is not sys.stdout:
            out.close()
    finally:
        store.close()
    seconds = time.perf_counter() - started
    print(f"exported {count} messages in {seconds:.1f} s ({_per_second(count, seconds)})", file=sys.stderr)
    return 0


@_on_config("import")
def cmd_import(args: argparse.Namespace, config: NodeConfig) -> int:
    from . import wiring
    from .export import BadExportLine, ImportCount, import_lines

    try:
        source = open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        return _fail("import", f"cannot read {args.file}: {exc.strerror or exc}", 2)
    store = wiring.open_messages(config)
    count = ImportCount()
    started = time.perf_counter()
    try:
        with source, _progress("import") as bar:
            def lines() -> Iterator[str]:
                for line in source:
                    bar.update(1)
                    yield line
            import_lines(store, lines(), count)
    except BadExportLine as exc:
        return _fail("import", f"{args.file}: {exc} ({count.created} created before it)", 2)
    except UnicodeDecodeError as exc:
        return _fail("import", f"{args.file}: not UTF-8 text ({exc.reason}); {count.created} created before it", 2)
    finally:
        store.close()
    seconds = time.perf_counter() - started
    total = count.created + count.existing
    print(f"imported {total} messages in {seconds:.1f} s ({_per_second(total, seconds)}): "
          f"{count.created} created, {count.existing} already there")
    return 0


@_on_config("purge", stores_exist=("messages",))
def cmd_purge(args: argparse.Namespace, config: NodeConfig) -> int:
    import trio

    from .node.purge_once import purge_now

    if config.message.retention_days is None and config.message.offline_retention_days is None:
        return _fail("purge", f"{args.config} keeps everything (set vim.message.retention-days "
                     "or vim.message.offline-retention-days)", 2)
    report = trio.run(purge_now, config)
    if report is None:
        return _fail("purge", "another node holds the purge lock (a purge is running)", 1)
    print(f"purged {report.messages} messages ({_per_second(report.messages, report.seconds)}), "
          f"{report.pending} offline rows, {len(report.logs)} daily logs in {report.seconds:.1f} s")
    return 0


@_on_config("user delete", stores_exist=("directory",))
def cmd_user_delete(args: argparse.Namespace, config: NodeConfig) -> int:
    from .erasure import delete_user

    try:
        with _progress("erase") as bar:
            report = delete_user(config, args.username, args.erase, bar.update)
    except ClientError as exc:  # an unknown user
        return _fail("user delete", exc.detail, 2)
    except StoreUnavailable as exc:  # each step is idempotent: what was done stays done
        return _fail("user delete", f"stopped part way: {exc}; run it again once it answers (what is done "
                     "stays done)", EXIT_UNREACHABLE)
    print(f"user {report.user_id}: account {'deleted' if report.account_removed else 'already gone'}", end="")
    if report.nodes_told and not report.kick_error:
        print(f"; its sessions closed on the live nodes ({', '.join(report.nodes_told)})", end="")
    if args.erase:
        print(f"; {report.messages_erased} sent messages erased (placeholders), {report.pending_removed} offline messages "
              f"and {report.routes_removed} routes removed", end="")
    print()
    if report.kick_error:
        return _fail("user delete", f"the live nodes were not all told ({report.kick_error}); a node not told "
                     f"closes the sessions of user {report.user_id} and refuses its token once it links to the "
                     "master; run it again once the master answers", EXIT_UNREACHABLE)
    return 0


def add_lifecycle_commands(commands: Any) -> None:
    """`export`, `import` and `purge`."""
    export = add_command(
        commands, "export", cmd_export,
        help="write messages as JSON Lines (a user's data request, moving backends)",
        description="Write the messages of one user (--user: what they sent, and friend messages "
        "sent to them) or of one conversation (--chat) as JSON Lines, oldest first; the same bytes "
        "on every backend. A progress bar goes to stderr when it is a terminal. Exit 0; 2 a bad option, "
        "an unknown user, an unwritable --out or a config error; 3 a store unreachable.")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", help="username or user id")
    which.add_argument("--chat", help="g<groupId>, f<userId>-<userId>, or a group id")
    export.add_argument("--since", help="only messages from this UTC date or date-time on (2026-01-31)")
    export.add_argument("--out", help="file to write (default: stdout)")
    _config_arg(export)

    imp = add_command(
        commands, "import", cmd_import, help="load an export file (idempotent)",
        description="Load a file written by `vim-cluster export` into CONFIG's message store. "
        "Idempotent: a message that exists (same sender and cid) is left alone, so running it "
        "twice creates nothing twice. Exit 0; 2 an unreadable or malformed file (the line is named) or a "
        "config error; 3 a store unreachable.")
    imp.add_argument("file", help="a JSON Lines file written by `vim-cluster export`")
    _config_arg(imp)

    purge = add_command(
        commands, "purge", cmd_purge, help="run the retention purge now",
        description="Run the retention purge now (what each node does daily at vim.message.purge-hour), "
        "under the cluster's purge lock, so it never runs twice at once. Exit 0; 1 another purge holds "
        "the lock; 2 the config keeps everything (no retention set) or a config error; 3 a store or Redis "
        "unreachable.")
    _config_arg(purge)


def add_user_delete(user_commands: Any) -> None:
    """`user delete USERNAME [--erase]`."""
    delete = add_command(
        user_commands, "delete", cmd_user_delete,
        help="delete an account (--erase: and the user's personal data)",
        description="Delete USERNAME's account and close its sessions on every node. With --erase also "
        "erase what they sent (kept as 'deleted' placeholders so conversations keep their shape), "
        "the offline messages waiting for them, their read cursors and routes. Give the user id "
        "to finish an erasure whose account is already gone. Exit 0; 2 no such user or a config error; 3 a "
        "store or Redis unreachable, or the master did not confirm (what is done stays done: run it again).")
    delete.add_argument("username", help="username or user id")
    delete.add_argument("--erase", action="store_true", help="also erase the user's messages and data")
    _config_arg(delete)
