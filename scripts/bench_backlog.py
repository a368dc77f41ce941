#!/usr/bin/env python3
"""How a message store's group commit slows as other users' offline sets grow.

Every relayed message is a save (the message and its recipient's offline row) and, once the
recipient got it, a confirm (the row leaves the offline set). A store whose confirm finds its
rows by index costs the same whatever else waits offline; one that reads every offline row
does not. This script writes a backlog of offline rows for users who never confirm, then
times commits of live traffic (saves plus the confirms of the previous commit's messages, as
a node's store thread runs them), and prints a table.

    scripts/bench_backlog.py --messages sqlite:/tmp/m.db
    scripts/bench_backlog.py --messages mongodb://127.0.0.1:27017/vim
    scripts/bench_backlog.py --ferretdb postgresql     # a private FerretDB (and PostgreSQL)

The store is written to: give it a database of its own. Ids are snowflake-sized (above 2**53)
like the ones a node mints.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId  # noqa: E402
from vim_cluster.ports import Confirm, MessageStore, NewMessage  # noqa: E402

BIG = 1 << 60  # user and message ids above 2**53, as minted
OFFLINE_USERS = 50


def numbers(parser: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    """A comma-separated list of integers, or the parser's one-line error (exit 2)."""
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        parser.error(f"{flag}: comma-separated numbers, got {text!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Prints one row per backlog: ms per commit and messages a second.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--messages", help="the store: sqlite:PATH or a mongodb:// URL (its own database)")
    where.add_argument("--ferretdb", choices=["postgresql", "sqlite"],
                       help="start a private FerretDB on this backend (scripts/install-test-servers.sh)")
    parser.add_argument("--backlogs", default="0,1000,4000",
                        help="offline rows of other users to measure at, ascending (default 0,1000,4000)")
    parser.add_argument("--rounds", type=int, default=8, help="commits timed at each backlog (default 8)")
    parser.add_argument("--batch", type=int, default=40, help="messages saved (and confirmed) per commit (default 40)")
    args = parser.parse_args(argv)
    args.backlogs = numbers(parser, "--backlogs", args.backlogs)
    if any(b < 0 for b in args.backlogs) or args.backlogs != sorted(args.backlogs):
        parser.error("--backlogs: numbers from 0 up, ascending")
    if args.rounds < 1 or args.batch < 1:
        parser.error("--rounds and --batch must be at least 1")
    return args


def open_store(url: str) -> MessageStore:
    if url.startswith("sqlite:"):
        from vim_cluster.adapters.sqlite_messages import SqliteMessages

        return SqliteMessages(url.removeprefix("sqlite:"))
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from vim_cluster.adapters.mongo_messages import MongoMessages

        return MongoMessages(url)
    raise SystemExit(f"--messages: sqlite:PATH or mongodb://..., got {url!r}")


@contextlib.contextmanager
def private_servers_of(backend: str) -> Iterator[tuple[Any, list[int]]]:
    """A private FerretDB on `backend` in a temporary folder, and the pids of the servers
    started with it (for `sysinfo.tree_cpu_seconds`)."""
    from bench_run import private_servers

    with tempfile.TemporaryDirectory(prefix="vim-backlog-") as folder:
        with private_servers(Path(folder), "vimbacklog", backend) as (_, ferret, pids):
            yield ferret, pids


@contextlib.contextmanager
def private_ferretdb(backend: str) -> Iterator[str]:
    with private_servers_of(backend) as (ferret, _pids):
        yield ferret.url("vimbacklog")


class Traffic:
    """Messages from senders to recipients: live pairs, or offline users who never confirm."""

    def __init__(self) -> None:
        self._ids = itertools.count(BIG)

    def message(self, sender: int, recipient: int) -> NewMessage:
        n = next(self._ids)
        m = Message(MessageId(n), f"c{n}", UserId(sender), recipient, ChatType.FRIEND, MessageType.TEXT,
                    "x" * 100, None, 1_760_000_000_000 + n % 1_000_000)
        return NewMessage(m, (UserId(recipient),))


def measure(store: MessageStore, backlogs: list[int], rounds: int, batch: int) -> list[tuple[int, float]]:
    """(backlog, seconds per commit) for each backlog."""
    traffic = Traffic()
    offline, live = BIG + 1_000, BIG + 10
    written = 0
    previous: list[NewMessage] = []  # the last commit's messages: the next one confirms them
    results: list[tuple[int, float]] = []
    for backlog in backlogs:
        while written < backlog:
            n = min(200, backlog - written)
            store.commit([traffic.message(offline + k, offline + 500 + k % OFFLINE_USERS) for k in range(n)], [])
            written += n
        started = time.perf_counter()
        for _ in range(rounds):
            saves = [traffic.message(live + k % 4, live + 4 + k % 4) for k in range(batch)]
            confirms = [Confirm(UserId(live + 4 + u), tuple(s.message.id for s in previous
                                                            if s.message.chat_id == live + 4 + u)) for u in range(4)]
            store.commit(saves, confirms if previous else [])
            previous = saves
        results.append((backlog, (time.perf_counter() - started) / rounds))
    return results


def table(results: list[tuple[int, float]], batch: int) -> str:
    lines = [f"| other users' offline rows | ms per commit ({batch} saves + {batch} confirms) | messages/s |",
             "|---|---|---|"]
    lines += [f"| {backlog:,} | {seconds * 1000:.1f} | {batch / seconds:,.0f} |" for backlog, seconds in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        url = args.messages or stack.enter_context(private_ferretdb(args.ferretdb))
        store = open_store(url)
        stack.callback(store.close)
        print(table(measure(store, args.backlogs, args.rounds, args.batch), args.batch))


if __name__ == "__main__":
    main()
