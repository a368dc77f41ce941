#!/usr/bin/env python3
"""What a group commit costs a private FerretDB, for today's MongoDB layout and three sketches.

The MySQL + MongoDB profile is bound by the CPU FerretDB and PostgreSQL spend per message
(docs/performance.md). This script asks how much of it a different layout would save before
anyone writes one. Each commit saves `batch` messages from 4 senders to 4 recipients and
confirms the previous commit's messages, as a node's store thread does under load; the table
gives the stores' CPU per message, the commit's wall time and the commands it sent.

Layouts:
- today: `MongoMessages.commit` (a claim, an offline row and a document per message; the
  confirms one find and one delete of the rows).
- batched: a sketch. Claims and documents as today, but a commit writes one offline-set
  document per recipient (the ids only) and one document holding the commit's copies; a
  confirm finds its user's offline-set documents by a string owner (FerretDB hands that
  equality down to SQL), deletes those it empties, and the copies go once nothing refers
  to them.
- inline: the same, with each recipient's copies inside its offline-set document (no
  document of copies, nothing to remove once a set is empty).
- no-claims: the same sketch without claims: the message documents carry the unique
  (from_id, cid) index.
The sketches are not stores: no retry, replay, recall or erasure reads them. They write and
read what such a layout would at each commit, so their figures are a floor for it.

    scripts/bench_mongo_layouts.py                       # FerretDB on PostgreSQL
    scripts/bench_mongo_layouts.py --ferretdb sqlite --batches 40 --repeat 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_backlog import BIG, Traffic, numbers, private_servers_of  # noqa: E402
from bson import ObjectId  # noqa: E402
from pymongo import ASCENDING, monitoring  # noqa: E402
from pymongo.database import Database  # noqa: E402

from vim_cluster import sysinfo  # noqa: E402
from vim_cluster.adapters.mongo_base import (  # noqa: E402
    CHAT_PREFIX,
    DEFAULT_SPLIT,
    message_doc,
    open_client,
    pack,
    shard_of,
)
from vim_cluster.adapters.mongo_messages import MongoMessages  # noqa: E402
from vim_cluster.model import UserId  # noqa: E402
from vim_cluster.ports import Confirm, NewMessage  # noqa: E402

Doc = dict[str, Any]
LAYOUTS = ("today", "batched", "inline", "no-claims")
RECIPIENTS = 4
# The commands of a commit; pymongo's own (hello, endSessions...) are not counted.
COUNTED = {"insert", "find", "getMore", "delete", "update", "findAndModify", "aggregate"}


class CommandCount(monitoring.CommandListener):
    """Counts the commands every client of this process sends (registered before any opens)."""

    def __init__(self) -> None:
        self.sent = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in COUNTED:
            self.sent += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


_COUNT: list[CommandCount] = []


def command_count() -> CommandCount:
    """This process's one counter, registered with pymongo at the first call (a listener
    cannot be taken back: it counts for every client opened after)."""
    if not _COUNT:
        _COUNT.append(CommandCount())
        monitoring.register(_COUNT[0])
    return _COUNT[0]


class Sketch:
    """The `batched`, `inline` or `no-claims` layout; see the module docstring."""

    def __init__(self, db: Database[Doc], claims: bool, inline: bool = False) -> None:
        self._inline = inline
        self._claims = db["message_ids"] if claims else None
        self._shards = [db[f"{CHAT_PREFIX}{n}"] for n in range(DEFAULT_SPLIT)]
        self._offline = db["offline_sets"]
        self._copies = db["offline_copies"]
        unique = [("from_id", ASCENDING), ("cid", ASCENDING)]
        if self._claims is not None:
            self._claims.create_index(unique, unique=True)
        for shard in self._shards:
            shard.create_index([("chat_key", ASCENDING), ("_id", ASCENDING)])
            shard.create_index([("chat_key", ASCENDING), ("timestamp", ASCENDING)])
            if self._claims is None:
                shard.create_index(unique, unique=True)
        self._offline.create_index([("owner", ASCENDING)])

    def commit(self, saves: Sequence[NewMessage], confirms: Sequence[Confirm]) -> None:
        if saves:
            self._save(saves)
        unreferenced: set[ObjectId] = set()
        for confirm in confirms:
            unreferenced |= self._confirm(confirm)
        for copies in unreferenced:
            if self._offline.find_one({"copies": copies}, {"_id": 1}) is None:
                self._copies.delete_one({"_id": copies})

    def _save(self, saves: Sequence[NewMessage]) -> None:
        docs = [message_doc(s.message) for s in saves]
        if self._claims is not None:
            self._claims.insert_many([{"_id": d["_id"], "from_id": d["from_id"], "cid": d["cid"], "message": d,
                                       "pending_for": list(s.pending_for)} for s, d in zip(saves, docs, strict=True)],
                                     ordered=False)
        packed = {str(d["_id"]): pack(d) for d in docs}
        ids: dict[int, list[int]] = defaultdict(list)
        for s in saves:
            for user in s.pending_for:
                ids[user].append(s.message.id)
        sets: list[Doc]
        if self._inline:
            sets = [{"owner": str(u), "ids": v, "items": {str(i): packed[str(i)] for i in v}} for u, v in ids.items()]
        else:
            copies = ObjectId()
            self._copies.insert_one({"_id": copies, "items": packed})
            sets = [{"owner": str(u), "ids": v, "copies": copies} for u, v in ids.items()]
        self._offline.insert_many(sets, ordered=False)
        by_shard: dict[int, list[Doc]] = defaultdict(list)
        for d in docs:
            by_shard[shard_of(d["chat_key"], DEFAULT_SPLIT)].append(d)
        for shard, batch in sorted(by_shard.items()):
            self._shards[shard].insert_many(batch, ordered=False)

    def _confirm(self, confirm: Confirm) -> set[ObjectId]:
        """Removes the confirmed ids from the user's offline-set documents; returns the copies
        documents of those it emptied."""
        confirmed = set(confirm.ids)
        if not confirmed:
            return set()
        owner = str(confirm.user_id)
        emptied: list[Doc] = []
        for doc in self._offline.find({"owner": owner}):
            left = [i for i in doc["ids"] if i not in confirmed]
            if not left:
                emptied.append(doc)
            elif len(left) < len(doc["ids"]):
                self._offline.update_one({"_id": doc["_id"]}, {"$set": {"ids": left}})
        if emptied:
            self._offline.delete_many({"owner": owner, "_id": {"$in": [d["_id"] for d in emptied]}})
        return {d["copies"] for d in emptied if "copies" in d}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Prints one row per layout and batch: medians over the repeats.")
    parser.add_argument("--ferretdb", choices=["postgresql", "sqlite"], default="postgresql",
                        help="the private FerretDB's backend (default postgresql; scripts/install-test-servers.sh)")
    parser.add_argument("--batches", default="40,100", help="messages saved (and confirmed) per commit (default 40,100)")
    parser.add_argument("--messages", type=int, default=1200,
                        help="messages timed per layout, batch and repeat (default 1200)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds (default 2)")
    args = parser.parse_args(argv)
    args.batches = numbers(parser, "--batches", args.batches)
    if any(b < 1 for b in args.batches) or args.messages < 1 or args.repeat < 1:
        parser.error("--batches, --messages and --repeat must be at least 1")
    return args


Commit = Callable[[Sequence[NewMessage], Sequence[Confirm]], object]


def measure(commit: Commit, cpu: Callable[[], float], count: CommandCount, batch: int,
            commits: int, traffic: Traffic) -> tuple[float, float, float]:
    """(µs of the stores' CPU per message, ms per commit, commands per commit) over `commits`
    commits after one untimed, each confirming the previous commit's messages; the last
    commit's messages are confirmed after the timing."""
    live = BIG + 10
    previous: list[NewMessage] = []

    def one(size: int) -> None:
        nonlocal previous
        saves = [traffic.message(live + k % RECIPIENTS, live + RECIPIENTS + k % RECIPIENTS) for k in range(size)]
        confirms = [Confirm(UserId(live + RECIPIENTS + u),
                            tuple(s.message.id for s in previous if s.message.chat_id == live + RECIPIENTS + u))
                    for u in range(RECIPIENTS)] if previous else []
        commit(saves, confirms)
        previous = saves

    one(batch)
    cpu_before, sent_before, started = cpu(), count.sent, time.perf_counter()
    for _ in range(commits):
        one(batch)
    wall = time.perf_counter() - started
    one(0)  # untimed: the last commit's confirms, so no offline row is left for the next round
    return ((cpu() - cpu_before) / (commits * batch) * 1e6, wall / commits * 1000,
            (count.sent - sent_before) / commits)


def table(results: dict[tuple[str, int], list[tuple[float, float, float]]]) -> str:
    lines = ["| layout | messages per commit | stores' CPU per message | ms per commit | commands per commit |",
             "|---|---|---|---|---|"]
    for (layout, batch), rounds in results.items():
        cpu, wall, sent = (statistics.median(r[i] for r in rounds) for i in range(3))
        lines.append(f"| {layout} | {batch} | {cpu:,.0f} µs | {wall:.1f} | {sent:.1f} |")
    return "\n".join(lines)


def run(url_of: Callable[[str], str], cpu: Callable[[], float], batches: list[int], messages: int,
        repeat: int) -> dict[tuple[str, int], list[tuple[float, float, float]]]:
    """Every layout on a database of its own, the rounds interleaved."""
    count = command_count()
    stores: dict[str, Commit] = {}
    closers: list[Callable[[], None]] = []
    try:
        for layout in LAYOUTS:
            url = url_of(f"layouts_{layout.replace('-', '_')}")
            if layout == "today":
                store = MongoMessages(url)
                closers.append(store.close)
                stores[layout] = store.commit
            else:
                client = open_client(url)  # the store's client options (journaled writes)
                closers.append(client.close)
                stores[layout] = Sketch(client.get_default_database(), claims=layout != "no-claims",
                                        inline=layout == "inline").commit
        traffic = Traffic()
        results: dict[tuple[str, int], list[tuple[float, float, float]]] = defaultdict(list)
        for _ in range(repeat):
            for batch in batches:
                for layout, commit in stores.items():
                    results[(layout, batch)].append(
                        measure(commit, cpu, count, batch, max(1, messages // batch), traffic))
        return dict(sorted(results.items(), key=lambda item: (item[0][1], LAYOUTS.index(item[0][0]))))
    finally:
        for close in closers:
            close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with private_servers_of(args.ferretdb) as (ferret, pids):
        results = run(ferret.url, lambda: sysinfo.tree_cpu_seconds(pids), args.batches, args.messages,
                      args.repeat)
    print(f"FerretDB on {args.ferretdb}; the stores' CPU: FerretDB, its backend and MariaDB (idle here)")
    print(table(results))


if __name__ == "__main__":
    main()
