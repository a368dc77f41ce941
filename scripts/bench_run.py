"""Run every `vim-cluster bench` scenario on fresh clusters and print a markdown table.

For each profile (sqlite: embedded Redis + SQLite; servers: embedded Redis + private MariaDB
and FerretDB, when their binaries exist) it starts a master and two department nodes with
`vim-cluster up` on free loopback ports, runs the scenarios one after the other, stops the
cluster, and prints one table row per scenario. Everything is bounded in time.
"server cores" is the nodes' CPU seconds per wall second of a message scenario (the row at
rate 1000 is the cores the cluster needs for 1,000 msg/s); "generator CPU" is the load
generator's own process CPU per delivered message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import FerretDB, FerretDBOnPostgreSQL, MariaDB, PostgreSQL, PrivateServer  # noqa: E402

VIM = [str(ROOT / ".venv" / "bin" / "vim-cluster")]
SCENARIOS: list[tuple[str, list[str]]] = [
    ("cross-node", ["--senders", "4", "--window", "32"]),
    ("cross-node", ["--senders", "4", "--window", "32", "--rate", "1000"]),
    ("local", ["--senders", "4", "--window", "32"]),
    ("group", ["--senders", "2", "--members", "12", "--window", "16"]),
    ("churn", ["--senders", "8"]),
]


PROGRESS = re.compile(r"\s+[\d.]+s acked ")  # the load generator's progress lines


def wait_healthy(folder: Path, timeout: float = 40.0) -> None:
    import yaml

    ports = [yaml.safe_load(p.read_text())["vim"]["http"]["port"] for p in sorted(folder.glob("*.yaml"))]
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the cluster in {folder} did not become healthy")
            time.sleep(0.2)


@contextlib.contextmanager
def cluster(name: str, folder: Path, stores: dict[str, str], vim: list[str] | None = None) -> Iterator[dict[str, str]]:
    """A master + two department nodes (`vim-cluster up` of `vim`, default this tree's) on
    `stores`, healthy; yields the environment `vim-cluster bench` runs with. Stopped on exit.
    `up` runs in `folder`: it starts the nodes with `python -m`, which puts the working
    directory first on sys.path, so from a checkout's root the nodes would import that
    checkout's `vim_cluster` whatever `vim` is (an A/B against another tree would then
    measure this one twice)."""
    env = {**os.environ, "VIM_EMBEDDED_REDIS_DIR": str(folder / "redis")}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_cluster.py"), str(folder),
                    "--directory", stores["directory"], "--messages", stores["messages"]], check=True)
    with open(folder / "cluster.log", "w") as log:
        up = subprocess.Popen((vim or VIM) + ["--log-level", "warning", "up", str(folder)], stdout=log, stderr=log,
                              env=env, cwd=folder)
        try:
            wait_healthy(folder)
            yield env
        finally:
            stop_cluster(up, folder)


def stop_cluster(up: subprocess.Popen[Any], folder: Path) -> None:
    """Stops a `vim-cluster up` (SIGTERM, then a kill after 30 s) and its embedded Redis."""
    up.send_signal(signal.SIGTERM)
    try:
        up.wait(30)
    except subprocess.TimeoutExpired:
        up.kill()
    from vim_cluster.adapters.embedded_redis import stop_embedded_redis

    stop_embedded_redis(folder / "redis")


def bench_scenario(name: str, folder: Path, env: dict[str, str], scenario: str, extra: list[str],
                   duration: float, timeout: float | None = None) -> dict[str, Any]:
    """One `vim-cluster bench` run (this tree's load generator) against the cluster in
    `folder`: its JSON result, or {"failed": exit code or "timeout"}; "profile" and "scenario"
    set. `timeout`: seconds (default: 4 durations + 5 minutes)."""
    command = VIM + ["bench", scenario, "--configs", str(folder), "--json", "--duration", str(duration)] + extra
    print(f"[{name}] {' '.join(command[1:])}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env,
                              timeout=timeout or duration * 4 + 300)
    except subprocess.TimeoutExpired as exc:
        print(f"[{name}] {scenario}: no result within {exc.timeout:.0f} s", file=sys.stderr, flush=True)
        return {"scenario": scenario, "profile": name, "failed": "timeout"}
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if not PROGRESS.match(line)]
        print("\n".join(errors[-40:]), file=sys.stderr)
        return {"scenario": scenario, "profile": name, "failed": done.returncode}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["profile"] = name
    return result


def run_profile(name: str, folder: Path, stores: dict[str, str], args: argparse.Namespace,
                scenarios: list[tuple[str, list[str]]] | None = None) -> list[dict[str, Any]]:
    if scenarios is None:
        scenarios = SCENARIOS + [("connections", ["--connections", str(args.connections)])]
    with cluster(name, folder, stores) as env:
        return [bench_scenario(name, folder, env, scenario, extra, args.duration) for scenario, extra in scenarios]


def fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def table(results: list[dict[str, Any]]) -> str:
    head = ["profile", "scenario", "rate", "acked msg/s", "delivered/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
            "errors", "lost", "server CPU µs/delivered", "server cores", "generator CPU µs/delivered", "other"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        other = ""
        if r["scenario"] == "connections":
            other = f"{r.get('connections')} conns, {r.get('rss_per_connection_kb')} KB RSS/conn"
        elif r["scenario"] == "churn":
            other = f"{r.get('cycles_per_s')} cycles/s"
        elif "failed" in r:
            other = f"FAILED (exit {r['failed']})"
        row = [r["profile"], r["scenario"], r.get("rate"), r.get("acked_per_s"), r.get("delivered_per_s"),
               r.get("p50_ms"), r.get("p90_ms"), r.get("p99_ms"), r.get("max_ms"), r.get("errors"),
               r.get("lost"), r.get("server_cpu_us_per_delivered"), r.get("server_cores"),
               r.get("generator_cpu_us_per_delivered"), other]
        lines.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per message scenario")
    parser.add_argument("--connections", type=int, default=10000, help="connections scenario: K")
    parser.add_argument("--profiles", default="sqlite,servers", help="comma-separated: sqlite, servers")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vim-bench-") as tmp:
        base = Path(tmp)
        if "sqlite" in args.profiles:
            results += run_profile("sqlite", base / "sqlite",
                                   {"directory": "sqlite:data/directory.db", "messages": "sqlite:data/messages.db"}, args)
        if "servers" in args.profiles:
            results += run_servers(base / "servers", args)
    print(table(results))


def run_servers(folder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from tests.servers import find_ferretdb, find_mariadb

    try:
        find_mariadb()
        find_ferretdb()
    except BaseException as exc:  # noqa: BLE001 - pytest's Skipped is a BaseException
        print(f"skipping the MySQL + MongoDB profile: {exc}", file=sys.stderr)
        return []
    with private_servers(folder, "vimbench") as (mariadb, ferret, _):
        stores = {"directory": mariadb.url("vimbench"), "messages": ferret.url("vimbench")}
        return run_profile("mysql+mongo", folder / "cluster", stores, args)


@contextlib.contextmanager
def private_servers(folder: Path, database: str, backend: str = "sqlite") -> Iterator[tuple[Any, Any, list[int]]]:
    """A private MariaDB (with `database` created) and FerretDB under `folder`, stopped on exit;
    yields them and the pids of every server started (for `sysinfo.tree_cpu_seconds`).

    backend: FerretDB's storage, "sqlite" (files under `folder`) or "postgresql" (a private
    PostgreSQL cluster of its own, started here too: the closest thing to a real MongoDB here)."""
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        mariadb = MariaDB(folder / "mariadb").create()  # initialised and started
        stack.callback(mariadb.stop)
        started: list[PrivateServer] = [mariadb]
        if backend == "postgresql":
            postgres = PostgreSQL(folder / "postgresql")
            stack.callback(postgres.stop)
            postgres.start()
            started.append(postgres)
            ferret: FerretDB = FerretDBOnPostgreSQL(folder / "ferretdb", postgres.url("postgres"))
        elif backend == "sqlite":
            ferret = FerretDB(folder / "ferretdb")
        else:
            raise ValueError(f"unknown FerretDB backend {backend!r}: sqlite or postgresql")
        stack.callback(ferret.stop)
        ferret.start()
        started.append(ferret)
        admin = mariadb.admin()
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
        admin.close()
        yield mariadb, ferret, [server.process.pid for server in started if server.process is not None]


if __name__ == "__main__":
    main()
