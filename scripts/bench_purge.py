"""Measure the retention purge: live-traffic p99 while a node purges, purge throughput, and
export/import speed. Prints a markdown table.

For each profile (sqlite: SQLite stores; mongo: FerretDB messages + MariaDB directory, when
their binaries exist) it:
1. seeds N messages 40 days old (and a 20,000-message conversation from today, for export),
2. writes a master + two department configs with `vim.message.retention-days: 30`,
   `purge-hour: 0`, and marks today's purge done in Redis so no node purges at start,
3. starts the cluster (`vim-cluster up`), measures cross-node traffic at --rate (baseline),
4. clears the mark: at its next check (within 60 s) one node takes the purge lock and purges;
   cross-node traffic runs in --chunk second slices until the purge is done (p99 per slice),
5. reads the purge's rows and duration from that node's /metrics,
6. times `vim-cluster export --chat` of the young conversation and `vim-cluster import` of
   the file into a fresh store of the same kind (SQLite file; FerretDB database).
Everything is bounded; servers and the cluster are stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_run import VIM, private_servers, stop_cluster, wait_healthy  # noqa: E402

from vim_cluster.ids import first_id_at  # noqa: E402
from vim_cluster.model import ChatType, Message, MessageId, MessageType, UserId  # noqa: E402
from vim_cluster.ports import NewMessage  # noqa: E402

DAY = 86_400_000
SEED_BATCH = 200  # FerretDB under load answers a 1000-message save slower than the client's 10 s timeout
YOUNG = 20_000


def seed(store: Any, count: int, days_ago: int, users: int, chat: tuple[int, int] | None = None) -> float:
    """Saves `count` messages minted `days_ago` days back; returns messages/s."""
    start_ms = int(time.time() * 1000) - days_ago * DAY
    started = time.perf_counter()
    for first in range(0, count, SEED_BATCH):
        batch = []
        for i in range(first, min(count, first + SEED_BATCH)):
            sender, to = chat if chat else (1 + i % users, 1 + (i * 7 + 3) % users)
            at = start_ms + i // 64
            batch.append(NewMessage(Message(
                MessageId(first_id_at(at) + i % 64 + 1000), f"seed-{days_ago}-{i}", UserId(sender), to,
                ChatType.FRIEND, MessageType.TEXT, "x" * 100, None, at), (UserId(to),) if i % 10 == 0 else ()))
        if hasattr(store, "_claims"):
            seed_mongo(store, batch)
        else:
            store.save_messages(batch)
    return count / (time.perf_counter() - started)


def seed_mongo(store: Any, batch: list[NewMessage]) -> None:
    """Writes finished saves straight into the store's collections (the layout `save_messages`
    leaves): its claim step's update_many is slower than the client timeout on a loaded
    FerretDB, whose SQLite backend scans for every query."""
    from vim_cluster.adapters.mongo_base import message_doc, shard_of

    claims, pending, shards = [], [], {}
    for item in batch:
        m = item.message
        shard = shard_of(m.chat_key, store.split)
        claims.append({"_id": m.id, "from_id": m.from_id, "cid": m.cid, "shard": shard, "done": True})
        pending += [{"user_id": u, "message_id": m.id, "shard": shard} for u in item.pending_for]
        shards.setdefault(shard, []).append(message_doc(m))
    store._claims.insert_many(claims, ordered=False)
    if pending:
        store._pending.insert_many(pending, ordered=False)
    for shard, docs in shards.items():
        store._shards[shard].insert_many(docs, ordered=False)


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


def sample(text: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def traffic(folder: Path, env: dict[str, str], rate: float, seconds: float) -> dict[str, Any]:
    command = VIM + ["bench", "cross-node", "--configs", str(folder), "--json", "--duration", str(seconds),
                     "--rate", str(rate), "--senders", "4", "--window", "32"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds * 4 + 120)
    if done.returncode != 0:
        raise SystemExit(f"bench failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def write_configs(folder: Path, stores: dict[str, str], batch: int | None = None) -> list[int]:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_cluster.py"), str(folder),
                    "--directory", stores["directory"], "--messages", stores["messages"]], check=True)
    ports = []
    for path in sorted(folder.glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        document["vim"]["message"] = {"retention-days": 30, "purge-hour": 0}
        if batch is not None:
            document["vim"]["message"]["purge-batch"] = batch
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        ports.append(document["vim"]["http"]["port"])
    return ports


def run_profile(name: str, folder: Path, stores: dict[str, str], open_store: Any, args: argparse.Namespace,
                count: int) -> dict[str, Any]:
    import redis

    from vim_cluster.adapters.embedded_redis import ensure_embedded_redis
    from vim_cluster.adapters.redis_registry import Keys

    folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"profile": name, "messages": count, "rate": args.rate}
    store = open_store()
    try:
        print(f"[{name}] seeding {count} old messages", file=sys.stderr, flush=True)
        result["seed_per_s"] = round(seed(store, count, 40, 1000))
        seed(store, YOUNG, 0, 1000, chat=(5001, 5002))
    finally:
        store.close()
    http_ports = write_configs(folder, stores, args.batch)
    env = {**os.environ, "VIM_EMBEDDED_REDIS_DIR": str(folder / "redis")}
    os.environ["VIM_EMBEDDED_REDIS_DIR"] = str(folder / "redis")
    r = redis.Redis.from_url(ensure_embedded_redis(folder / "redis"))
    r.set(Keys.duty_done("purge"), time.strftime("%Y%m%d", time.gmtime()))
    log = open(folder / "cluster.log", "w")
    cluster = subprocess.Popen(VIM + ["--log-level", "info", "up", str(folder)], stdout=log, stderr=log, env=env)
    try:
        wait_healthy(folder)
        print(f"[{name}] baseline traffic", file=sys.stderr, flush=True)
        base = traffic(folder, env, args.rate, args.chunk * 2)
        result["baseline_p99_ms"] = base.get("p99_ms")
        r.delete(Keys.duty_done("purge"))
        deadline = time.monotonic() + 90
        while r.get(Keys.duty_lock("purge")) is None:  # a node's next check takes the lock
            if time.monotonic() > deadline:
                raise SystemExit("no node started the purge within 90 s")
            time.sleep(0.1)
        print(f"[{name}] purge started; traffic during it", file=sys.stderr, flush=True)
        slices = []
        while r.get(Keys.duty_done("purge")) is None:
            slices.append(traffic(folder, env, args.rate, args.chunk))
            print(f"[{name}]   slice p99 {slices[-1].get('p99_ms')} ms", file=sys.stderr, flush=True)
        result["during_p99_ms"] = [s.get("p99_ms") for s in slices]
        result["during_max_ms"] = max(s.get("max_ms") or 0 for s in slices)
        result["during_errors"] = sum(s.get("errors") or 0 for s in slices)
        result["during_lost"] = sum(s.get("lost") or 0 for s in slices)
        for port in http_ports:
            text = metrics(port)
            removed = sample(text, 'vim_purge_removed_total{kind="messages"}')
            seconds = sample(text, "vim_purge_last_duration_seconds")
            if removed and seconds:
                result["purged"] = int(removed)
                result["purge_s"] = round(seconds, 1)
                result["purge_per_s"] = round(removed / seconds)
        result.update(export_import(folder, env, name, stores.get("import", "sqlite:data/messages.db")))
    finally:
        stop_cluster(cluster, folder)
        r.close()
    return result


def export_import(folder: Path, env: dict[str, str], name: str, import_into: str) -> dict[str, Any]:
    out = folder / "export.jsonl"
    config = str(folder / "master.yaml")
    started = time.perf_counter()
    subprocess.run(VIM + ["export", "--chat", "f5001-5002", "--out", str(out), "--config", config],
                   check=True, env=env, capture_output=True, timeout=600)
    export_s = time.perf_counter() - started
    lines = len(out.read_text(encoding="utf-8").splitlines()) - 1
    other = folder / "import"
    other.mkdir()
    document = yaml.safe_load((folder / "master.yaml").read_text())
    document["vim"]["store"] = {"directory": "sqlite:data/directory.db", "messages": import_into}
    (other / "secret.key").write_text((folder / "secret.key").read_text())
    (other / "master.yaml").write_text(yaml.safe_dump(document))
    started = time.perf_counter()
    subprocess.run(VIM + ["import", str(out), "--config", str(other / "master.yaml")],
                   check=True, env=env, capture_output=True, timeout=600)
    import_s = time.perf_counter() - started
    print(f"[{name}] exported and imported {lines} messages", file=sys.stderr, flush=True)
    return {"exported": lines, "export_per_s": round(lines / export_s), "import_per_s": round(lines / import_s)}


def table(results: list[dict[str, Any]]) -> str:
    head = ["profile", "old messages", "live rate msg/s", "baseline p99 ms", "p99 ms per slice during purge",
            "max ms during", "errors", "lost", "purged", "purge s", "purged msg/s", "export msg/s",
            "import msg/s"]
    keys = ["profile", "messages", "rate", "baseline_p99_ms", "during_p99_ms", "during_max_ms", "during_errors",
            "during_lost", "purged", "purge_s", "purge_per_s", "export_per_s", "import_per_s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        lines.append("| " + " | ".join(str(r.get(k, "-")) for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="old messages to purge (SQLite)")
    parser.add_argument("--mongo-messages", type=int, default=100_000, help="old messages to purge (FerretDB)")
    parser.add_argument("--rate", type=float, default=500, help="live cross-node messages/s during the purge")
    parser.add_argument("--chunk", type=float, default=5.0, help="seconds per traffic slice")
    parser.add_argument("--profiles", default="sqlite,mongo")
    parser.add_argument("--batch", type=int, default=None,
                        help="vim.message.purge-batch for the nodes (default: the node's default)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="vim-purge-") as tmp:
        base = Path(tmp)
        if "sqlite" in args.profiles:
            from vim_cluster.adapters.sqlite_messages import SqliteMessages

            folder = base / "sqlite"
            results.append(run_profile(
                "sqlite", folder, {"directory": "sqlite:data/directory.db", "messages": "sqlite:data/messages.db"},
                lambda: SqliteMessages(str(folder / "data" / "messages.db")), args, args.messages))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        if "mongo" in args.profiles:
            results.append(run_servers(base / "servers", args))
        for result in results:
            print(json.dumps(result), file=sys.stderr, flush=True)
    print(table(results))


def run_servers(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from vim_cluster.adapters.mongo_messages import MongoMessages

    with private_servers(folder, "vimpurge") as (mariadb, ferret, _):
        stores = {"directory": mariadb.url("vimpurge"), "messages": ferret.url("vimpurge"),
                  "import": ferret.url("vimimport")}
        return run_profile("mysql+mongo", folder / "cluster", stores, lambda: MongoMessages(stores["messages"]),
                           args, args.mongo_messages)


if __name__ == "__main__":
    main()
