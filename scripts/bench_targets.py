"""Issue 12's target table from one run: vim-cluster against python-socketio and Centrifugo,
the production-store profiles against SQLite, fan-out and memory; medians of interleaved runs.

Run it through scripts/bench.sh (which prepares the peers). Every system is started once; then
`--repeat` rounds each run every system in turn (interleaved, so a noisy minute hits all of
them; each run starts once the machine is quiet, see SETTLE_BUSY), and each figure is the
median over the rounds:
- cross-node at full rate (as fast as acks allow): vim-cluster (embedded Redis + SQLite),
  python-socketio, Centrifugo, and vim-cluster on MySQL + MongoDB (MariaDB + FerretDB, on
  FerretDB's PostgreSQL backend and on its SQLite backend);
- cross-node at --cores-rate (1,000 msg/s) for vim-cluster and the two peers: p99 latency and
  the server cores each system needs;
- group fan-out: one group of --members (500) spread over the three nodes; 2 members send
  (every run registers its own 500 users first; about 20 s here).
Once, at the end: RSS per idle authenticated connection at --connections (10,000) on a fresh
cluster, and a bare trio-websocket server's RSS per connection beside it (scripts/bench_floor.py).

`--quick` measures only what A/B work needs: vim-cluster's server CPU per delivered
cross-node message, --repeat runs; with `--against DIR` the same for the checkout in DIR
(its own .venv), interleaved, so a change can be judged on a busy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_peers import (  # noqa: E402
    CentrifugoDialect,
    Processes,
    SocketIODialect,
    centrifugo_servers,
    peer_accounts,
    socketio_servers,
)
from bench_run import VIM, bench_scenario, cluster, private_servers  # noqa: E402

from vim_cluster import bench  # noqa: E402
from vim_cluster.sysinfo import raise_fd_limit, tree_cpu_seconds  # noqa: E402

SQLITE = {"directory": "sqlite:data/directory.db", "messages": "sqlite:data/messages.db"}
PROFILES = {"postgresql": "mysql+mongo (FerretDB/PostgreSQL)", "sqlite": "mysql+mongo (FerretDB/SQLite)"}

# A run is one record: {"system": ..., "kind": ..., **the load generator's result}; kinds:
MAX, FIXED, GROUP, CONNECTIONS, FLOOR = "max", "fixed", "group", "connections", "floor"
CONNECTIONS_TIMEOUT_S = 900.0  # opening 10,000 connections took over 5 minutes at load average 20
# Before each run the machine must be quiet: the previous run's leftovers must not be measured
# as the next system's. The MySQL + MongoDB profile leaves the most: its recipients' node
# commits the backlog of `received` confirms for a minute after an 8 s run, FerretDB at 120 %
# CPU (2026-12-01). A run starts once the machine's CPU (all cores, steal included) is under
# SETTLE_BUSY for a SETTLE_WINDOW_S sample, or after SETTLE_MAX_S; both are in its record.
SETTLE_BUSY, SETTLE_WINDOW_S, SETTLE_MAX_S = 0.25, 0.5, 120.0
DISK_PROBE_EVERY_S = 0.02  # between the disk probe's syncs, beside vim-cluster's runs at the fixed rate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="A full run takes 12-15 minutes on an idle 2-core machine (18 at a load average of 15-20); "
               "--quick about 2 minutes. scripts/bench.sh --scenarios runs every `vim-cluster bench` scenario "
               "instead (scripts/bench_run.py).")
    parser.add_argument("--quick", action="store_true",
                        help="only vim-cluster's server CPU per delivered cross-node message (A/B work); "
                             "with --systems group, per delivered copy of the group fan-out instead")
    parser.add_argument("--against", metavar="DIR",
                        help="--quick: also run the vim-cluster checkout in DIR (DIR/.venv/bin/vim-cluster), "
                             "interleaved")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; figures are medians (default 3)")
    parser.add_argument("--duration", type=float, help="seconds of sending per run (default 8; --quick 5)")
    parser.add_argument("--cores-rate", type=float, default=1000.0,
                        help="the fixed rate (msg/s) for p99 and server cores (default 1000)")
    parser.add_argument("--connections", type=int, default=10_000, help="idle connections for RSS (default 10000)")
    parser.add_argument("--members", type=int, default=500, help="group fan-out: members (default 500)")
    parser.add_argument("--systems", default="vim-cluster,python-socketio,centrifugo,postgresql,sqlite,group,"
                        "connections,floor",
                        help="what to run, comma-separated (default: everything): vim-cluster, python-socketio, "
                             "centrifugo, postgresql and sqlite (the MySQL + MongoDB profile on FerretDB's "
                             "backend), group, connections, floor")
    parser.add_argument("--centrifugo", default="", help="the centrifugo binary (none: Centrifugo is skipped)")
    parser.add_argument("--json-out", metavar="FILE", help="also write every run's record as JSON to FILE")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.against and not args.quick:
        parser.error("--against goes with --quick")
    if args.against and not (Path(args.against) / ".venv" / "bin" / "vim-cluster").exists():
        parser.error(f"--against {args.against}: no .venv/bin/vim-cluster there (run scripts/test.sh in it)")
    if args.duration is None:
        args.duration = 5.0 if args.quick else 8.0
    known = {"vim-cluster", "python-socketio", "centrifugo", "postgresql", "sqlite", "group", "connections", "floor"}
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.systems) - known
    if unknown:
        parser.error(f"--systems: unknown {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    # the load generator's shape, the same for every system (as scripts/bench_peers.py)
    args.senders, args.window, args.size, args.messages = 4, 32, 100, 0
    return args


# --- running -----------------------------------------------------------------------------


def say(text: str) -> None:
    print(f"[targets] {text}", file=sys.stderr, flush=True)


def cross_node(rate: float, args: argparse.Namespace) -> list[str]:
    return ["--senders", str(args.senders), "--window", str(args.window), "--size", str(args.size),
            "--rate", str(rate)]


Run = Callable[[str], dict[str, Any]]  # kind -> result


def vim_runner(name: str, folder: Path, env: dict[str, str], args: argparse.Namespace) -> Run:
    def run(kind: str) -> dict[str, Any]:
        if kind == GROUP:
            return bench_scenario(name, folder, env, "group", ["--members", str(args.members), "--senders", "2",
                                                               "--window", "16"], args.duration)
        rate = args.cores_rate if kind == FIXED else 0
        return bench_scenario(name, folder, env, "cross-node", cross_node(rate, args), args.duration)
    return run


def peer_runner(name: str, dialect: Any, src: str, dst: str, pids: list[int], args: argparse.Namespace) -> Run:
    def run(kind: str) -> dict[str, Any]:
        at = copy.copy(args)
        at.rate = args.cores_rate if kind == FIXED else 0
        say(f"{name}: cross-node, rate {at.rate or 'max'}")
        senders, recipients = peer_accounts(args.senders)
        try:
            return trio.run(bench.run_pair, src, dst, senders, recipients, at, dialect, pids)  # type: ignore[no-any-return]
        except Exception as exc:  # noqa: BLE001 - one failed run is a row, not the end of the table
            say(f"{name}: the run failed: {exc!r}")
            return {"failed": type(exc).__name__}
    return run


def with_stores_cpu(run: Run, pids: list[int]) -> Run:
    """The run, its record gaining the CPU the stores' processes (MariaDB, FerretDB, PostgreSQL,
    with their live children) used per delivered message, from the run's start until the
    machine is quiet again: a run's `received` confirms are still committed after it ends."""
    def measured(kind: str) -> dict[str, Any]:
        before = tree_cpu_seconds(pids)
        result = run(kind)
        settle()
        delivered = result.get("delivered")
        if isinstance(delivered, int) and delivered:
            result["stores_cpu_us_per_delivered"] = round((tree_cpu_seconds(pids) - before) / delivered * 1e6, 1)
        return result
    return measured


@contextlib.contextmanager
def started(args: argparse.Namespace, base: Path) -> Iterator[dict[str, tuple[Run, list[str]]]]:
    """Every system the run needs, started once: name -> (its runner, the kinds it runs each round)."""
    systems: dict[str, tuple[Run, list[str]]] = {}
    with contextlib.ExitStack() as stack:
        if "vim-cluster" in args.systems or "group" in args.systems:
            folder = base / "vim-cluster"
            env = stack.enter_context(cluster("vim-cluster", folder, SQLITE))
            kinds = ([MAX] if args.quick else [MAX, FIXED]) if "vim-cluster" in args.systems else []
            systems["vim-cluster"] = (with_disk_probe(vim_runner("vim-cluster", folder, env, args), folder),
                                      kinds + ([GROUP] if "group" in args.systems else []))
        if args.against:
            folder = base / "against"
            vim = [str(Path(args.against).resolve() / ".venv" / "bin" / "vim-cluster")]
            env = stack.enter_context(cluster("against", folder, SQLITE, vim))
            systems[f"vim-cluster ({args.against})"] = (vim_runner("against", folder, env, args), [quick_kind(args)])
        if "python-socketio" in args.systems:
            if not (ROOT / ".venv-peers" / "bin" / "uvicorn").exists():
                raise SystemExit("python-socketio: no .venv-peers (scripts/bench.sh makes it)")
            processes = stack.enter_context(Processes(base / "python-socketio"))
            (base / "python-socketio").mkdir()
            src, dst, pids = socketio_servers(processes, base / "python-socketio")
            systems["python-socketio"] = (peer_runner("python-socketio", SocketIODialect(), src, dst, pids, args),
                                          [MAX, FIXED])
        if "centrifugo" in args.systems:
            if args.centrifugo:
                (base / "centrifugo").mkdir()
                processes = stack.enter_context(Processes(base / "centrifugo"))
                src, dst, pids = centrifugo_servers(args.centrifugo, processes, base / "centrifugo")
                systems["centrifugo"] = (peer_runner("centrifugo", CentrifugoDialect(), src, dst, pids, args),
                                         [MAX, FIXED])
            else:
                say("centrifugo: no binary (Go missing or the build failed): skipped")
        for backend, name in PROFILES.items():
            if backend in args.systems and servers_missing(backend) is None:
                folder = base / f"servers-{backend}"
                mariadb, ferret, pids = stack.enter_context(private_servers(folder, "vimbench", backend))
                stores = {"directory": mariadb.url("vimbench"), "messages": ferret.url("vimbench")}
                env = stack.enter_context(cluster(name, folder / "cluster", stores))
                systems[name] = (with_stores_cpu(vim_runner(name, folder / "cluster", env, args), pids), [MAX])
        yield systems


class Records(list[dict[str, Any]]):
    """The runs so far; with a path, rewritten there as JSON after each run (a crash or a
    timeout loses nothing measured)."""

    def __init__(self, path: str | None) -> None:
        super().__init__()
        self.path = Path(path) if path else None

    def append(self, record: dict[str, Any]) -> None:
        super().append(record)
        if self.path is not None:
            self.path.write_text(json.dumps(self, indent=1))


def servers_missing(backend: str) -> str | None:
    """Why the MySQL + MongoDB profile on FerretDB's `backend` cannot run here (said once),
    or None."""
    from tests.servers import find_ferretdb, find_mariadb, find_postgresql

    try:
        find_mariadb()
        find_ferretdb()
        if backend == "postgresql":
            find_postgresql()
    except BaseException as exc:  # noqa: BLE001 - pytest's Skipped and SystemExit are BaseExceptions
        say(f"{PROFILES[backend]}: skipped: {exc}")
        return str(exc)
    return None


def cpu_sample(window_s: float) -> tuple[float, float]:
    """The machine's CPU over `window_s`, as fractions of all cores: (busy, steal); busy
    includes steal (time the host gave to others)."""
    def counters() -> list[int]:
        with open("/proc/stat") as stat:
            return [int(x) for x in stat.readline().split()[1:9]]  # user ... steal

    before = counters()
    time.sleep(window_s)
    delta = [b - a for a, b in zip(before, counters(), strict=True)]
    total = max(1, sum(delta))
    return 1 - (delta[3] + delta[4]) / total, delta[7] / total  # idle and iowait are not busy


def dirty_kb(path: str = "/proc/meminfo") -> int | None:
    """What the page cache holds that the kernel has yet to write to disk (/proc/meminfo's
    Dirty + Writeback, KiB); None where there is no /proc/meminfo."""
    try:
        with open(path) as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return sum(int(fields[key].split()[0]) for key in ("Dirty", "Writeback"))
    except (OSError, KeyError, ValueError):
        return None


def settle() -> dict[str, Any]:
    """Waits until the machine is quiet (see SETTLE_BUSY), then until the disk is: `sync`
    writes back what the page cache still holds dirty, which the kernel would otherwise write
    back during the run, where a commit's `fdatasync` can wait behind it. The servers' start
    (MariaDB's and PostgreSQL's new databases) left 24.8 MB dirty before the first run; between
    runs it was under 0.3 MB (session 24). Returns what the run's record says of it: the wait,
    the last sample's busy and steal shares (%), the dirty KiB and the sync's time (s)."""
    start = time.monotonic()
    while True:
        busy, steal = cpu_sample(SETTLE_WINDOW_S)
        waited = time.monotonic() - start
        if busy < SETTLE_BUSY or waited >= SETTLE_MAX_S:
            break
    dirty, synced = dirty_kb(), time.monotonic()
    os.sync()
    return {"settle_s": round(waited, 1), "busy_before": round(100 * busy), "steal_before": round(100 * steal),
            "dirty_kb_before": dirty, "sync_s": round(time.monotonic() - synced, 2)}


@contextlib.contextmanager
def disk_probe(folder: Path, every_s: float = DISK_PROBE_EVERY_S) -> Iterator[list[float]]:
    """While the block runs, a thread writes 4 KiB to a file in `folder` and `fdatasync`s it
    every `every_s`; yields the list of sync times (seconds), filled as it goes. A group
    commit's ack waits for the same kind of sync on the same disk: a sync the host holds up
    for 50 ms holds up every message committed meanwhile (session 21)."""
    path = folder / "disk-probe.bin"
    times: list[float] = []
    stop = threading.Event()

    def loop() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while not stop.is_set():
                os.pwrite(fd, b"\0" * 4096, 0)
                started = time.perf_counter()
                os.fdatasync(fd)
                times.append(time.perf_counter() - started)
                stop.wait(every_s)
        finally:
            os.close(fd)

    thread = threading.Thread(target=loop, name="disk-probe", daemon=True)
    thread.start()
    try:
        yield times
    finally:
        stop.set()
        thread.join()
        path.unlink(missing_ok=True)


def disk_figures(times: list[float]) -> dict[str, Any]:
    """What a run's record says of the disk probe's syncs: p99 and max (ms), and how many
    took over 10 ms (the p99 goal)."""
    if not times:
        return {}
    return {"disk_sync_p99_ms": round(bench.percentile(times, 99) * 1000, 2),
            "disk_sync_max_ms": round(max(times) * 1000, 1),
            "disk_syncs_over_10ms": sum(t > 0.010 for t in times)}


def with_disk_probe(run: Run, folder: Path, kinds: tuple[str, ...] = (FIXED,)) -> Run:
    """The run, its record gaining the disk probe's figures for the runs of `kinds`."""
    def measured(kind: str) -> dict[str, Any]:
        if kind not in kinds:
            return run(kind)
        with disk_probe(folder) as times:
            result = run(kind)
        return {**result, **disk_figures(times)}
    return measured


def run_all(args: argparse.Namespace, base: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with started(args, base) as systems:
        for round_ in range(args.repeat):
            for name, (run, kinds) in systems.items():
                for kind in kinds:
                    quiet = settle()
                    say(f"round {round_ + 1}/{args.repeat}: {name} {kind} (waited {quiet['settle_s']:g} s for a "
                        f"quiet machine: {quiet['busy_before']} % busy, {quiet['steal_before']} % steal)")
                    records.append({"system": name, "kind": kind, "round": round_, **quiet, **run(kind)})
    if "connections" in args.systems:  # once, on a fresh cluster with nothing else running
        folder = base / "connections"
        with cluster("connections", folder, SQLITE) as env:
            result = bench_scenario("connections", folder, env, "connections",
                                    ["--connections", str(args.connections)], args.duration,
                                    timeout=CONNECTIONS_TIMEOUT_S)
        records.append({"system": "vim-cluster", "kind": CONNECTIONS, **result})
    if "floor" in args.systems:
        records.append({"system": "trio-websocket", "kind": FLOOR, **floor(args.connections)})
    return records


def floor(connections: int) -> dict[str, Any]:
    say(f"bare trio-websocket server, {connections} connections")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_floor.py"), str(connections)],
                          capture_output=True, text=True, timeout=600)
    found = re.search(r"([\d.]+) KB RSS per idle connection", done.stdout)
    if done.returncode != 0 or not found:
        print(done.stderr[-2000:], file=sys.stderr)
        return {"failed": done.returncode}
    return {"rss_per_connection_kb": float(found.group(1)), "connections": connections}


# --- the table ---------------------------------------------------------------------------


def figure(records: list[dict[str, Any]], system: str, kind: str, key: str) -> float | None:
    """The median of `key` over the runs of `system` of `kind` that have it."""
    values = [r[key] for r in records if r["system"] == system and r["kind"] == kind
              and isinstance(r.get(key), int | float) and r.get(key) == r.get(key)]  # not NaN
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return text + unit


def verdict(value: float | None, limit: float, at_least: bool = False) -> str:
    if value is None:
        return "not measured"
    return "reached" if (value >= limit if at_least else value <= limit) else "not reached"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def round_ratios(records: list[dict[str, Any]], system: str, peer: str, kind: str, key: str) -> list[float]:
    """`system`'s figure over `peer`'s, round by round (the rounds where both runs have it)."""
    rounds: dict[int, dict[str, float]] = {}
    for r in records:
        value = r.get(key)
        if r["kind"] == kind and isinstance(r.get("round"), int) and isinstance(value, int | float) and value == value:
            rounds.setdefault(r["round"], {})[r["system"]] = value
    return [by[system] / by[peer] for _, by in sorted(rounds.items()) if system in by and by.get(peer)]


def round_values(records: list[dict[str, Any]], system: str, kind: str, key: str) -> list[float]:
    """`system`'s figure round by round (the rounds that have it)."""
    return [r[key] for r in sorted((r for r in records if r["system"] == system and r["kind"] == kind
                                    and isinstance(r.get("round"), int)), key=lambda r: r["round"])
            if isinstance(r.get(key), int | float) and r[key] == r[key]]


def ratio_cells(to: float | None, ours: float | None, rounds: list[float], goal: float) -> tuple[str, str]:
    """The ratio's cell and verdict: the medians' ratio, and each round's, since the median
    alone hides how far the rounds spread (on a shared host they do, by tens of percent)."""
    cell, judged = f"{fmt(to, '×')} ({fmt(ours, ' µs')})", verdict(to, goal)
    if rounds:
        cell = f"{fmt(to, '×')} ({fmt(ours, ' µs')}; by round {', '.join(f'{x:.2f}' for x in rounds)})"
        judged += f" ({sum(x <= goal for x in rounds)} of {len(rounds)} rounds)"
    return cell, judged


def target_rows(records: list[dict[str, Any]], cores_rate: float = 1000.0) -> list[list[str]]:
    """target | goal | vim-cluster | beside it | reached?"""
    def f(system: str, kind: str, key: str) -> float | None:
        return figure(records, system, kind, key)

    cpu = "server_cpu_us_per_delivered"
    ours, sio, cfg = f("vim-cluster", MAX, cpu), f("python-socketio", MAX, cpu), f("centrifugo", MAX, cpu)
    sio_cell, sio_verdict = ratio_cells(ratio(ours, sio), ours,
                                        round_ratios(records, "vim-cluster", "python-socketio", MAX, cpu), 0.5)
    cfg_cell, cfg_verdict = ratio_cells(ratio(ours, cfg), ours,
                                        round_ratios(records, "vim-cluster", "centrifugo", MAX, cpu), 1.5)
    rate = f"{cores_rate:,.0f} msg/s"
    rows = [
        ["server CPU per delivered message, cross-node, vs python-socketio", "≤ 0.5×", sio_cell,
         f"python-socketio {fmt(sio, ' µs')}", sio_verdict],
        ["server CPU per delivered message, cross-node, vs Centrifugo", "≤ 1.5×", cfg_cell,
         f"Centrifugo {fmt(cfg, ' µs')}", cfg_verdict],
    ]
    peers = ("python-socketio", "centrifugo")

    def beside(kind: str, key: str, unit: str) -> str:
        return ", ".join(f"{p} {fmt(f(p, kind, key), unit)}" for p in peers)

    rows += [
        ["load generator CPU per delivered message, cross-node", "(context)",
         fmt(f("vim-cluster", MAX, "generator_cpu_us_per_delivered"), " µs"),
         beside(MAX, "generator_cpu_us_per_delivered", " µs"), "-"],
        ["cross-node delivered msg/s at full rate", "(context)", fmt(f("vim-cluster", MAX, "delivered_per_s")),
         beside(MAX, "delivered_per_s", ""), "-"],
        [f"server cores used at {rate}", "(context)", fmt(f("vim-cluster", FIXED, "server_cores")),
         beside(FIXED, "server_cores", ""), "-"],
        [f"delivered msg/s in the runs at {rate} (below it: the machine could not keep the rate)", "(context)",
         fmt(f("vim-cluster", FIXED, "delivered_per_s")), beside(FIXED, "delivered_per_s", ""), "-"],
    ]
    p99 = f("vim-cluster", FIXED, "p99_ms")
    p99_rounds = round_values(records, "vim-cluster", FIXED, "p99_ms")
    p99_cell = fmt(p99, " ms") + (f" (by round {', '.join(fmt(x) for x in p99_rounds)})" if p99_rounds else "")
    p99_verdict = verdict(p99, 10) + (f" ({sum(x <= 10 for x in p99_rounds)} of {len(p99_rounds)} rounds)"
                                       if p99_rounds else "")
    rows.append([f"p99 latency at {rate}, cross-node", "≤ 10 ms", p99_cell, beside(FIXED, "p99_ms", " ms"),
                 p99_verdict])
    slow = round_values(records, "vim-cluster", FIXED, "disk_sync_max_ms")
    rows.append([f"the disk during vim-cluster's runs at {rate}: a 4 KiB write and fdatasync every "
                 f"{DISK_PROBE_EVERY_S * 1000:.0f} ms beside the cluster (a commit's ack waits for such a sync)",
                 "(context)", f"p99 {fmt(f('vim-cluster', FIXED, 'disk_sync_p99_ms'), ' ms')}, "
                 f"max {fmt(f('vim-cluster', FIXED, 'disk_sync_max_ms'), ' ms')}"
                 + (f" (max by round {', '.join(fmt(x) for x in slow)})" if slow else ""),
                 "the peers write nothing to disk", "-"])
    rss = f("vim-cluster", CONNECTIONS, "rss_per_connection_kb")
    count = f("vim-cluster", CONNECTIONS, "connections")
    rows.append([f"RSS per idle authenticated connection at {fmt(count)} connections", "≤ 15 KB", fmt(rss, " KB"),
                 f"bare trio-websocket server {fmt(f('trio-websocket', FLOOR, 'rss_per_connection_kb'), ' KB')}",
                 verdict(rss, 15)])
    copy_cpu = f("vim-cluster", GROUP, cpu)
    members = f("vim-cluster", GROUP, "members")
    rows.append([f"group fan-out ({fmt(members)} members over 3 nodes): server CPU per delivered copy", "≤ 20 µs",
                 fmt(copy_cpu, " µs"),
                 f"{fmt(f('vim-cluster', GROUP, 'delivered_per_s'))} copies/s", verdict(copy_cpu, 20)])
    sqlite_rate = f("vim-cluster", MAX, "delivered_per_s")
    pg, lite = PROFILES["postgresql"], PROFILES["sqlite"]
    share = {b: ratio(f(p, MAX, "delivered_per_s"), sqlite_rate) for b, p in PROFILES.items()}
    percent = {b: None if v is None else v * 100 for b, v in share.items()}
    rows.append(["MySQL + MongoDB profile cross-node msg/s, % of SQLite's (FerretDB on PostgreSQL)", "≥ 50 %",
                 f"{fmt(percent['postgresql'], ' %')} ({fmt(f(pg, MAX, 'delivered_per_s'))} vs "
                 f"{fmt(sqlite_rate)} msg/s)",
                 f"FerretDB on SQLite: {fmt(percent['sqlite'], ' %')} ({fmt(f(lite, MAX, 'delivered_per_s'))} msg/s)",
                 verdict(percent["postgresql"], 50, at_least=True)])
    rows.append(["MySQL + MongoDB profile: server CPU per delivered message (FerretDB on PostgreSQL)", "(context)",
                 fmt(f(pg, MAX, cpu), " µs"), f"FerretDB on SQLite {fmt(f(lite, MAX, cpu), ' µs')} "
                 "(the vim-cluster nodes only, not MariaDB/FerretDB/PostgreSQL)", "-"])
    stores = "stores_cpu_us_per_delivered"
    rows.append(["MySQL + MongoDB profile: the stores' CPU per delivered message (MariaDB, FerretDB, PostgreSQL)",
                 "(context)", fmt(f(pg, MAX, stores), " µs"),
                 f"FerretDB on SQLite: {fmt(f(lite, MAX, stores), ' µs')} (MariaDB, FerretDB)", "-"])
    return rows


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


RUN_COLUMNS = ["system", "kind", "round", "delivered_per_s", "p50_ms", "p99_ms", "lost", "errors",
               "server_cpu_us_per_delivered", "server_cores", "generator_cpu_us_per_delivered",
               "stores_cpu_us_per_delivered", "rss_per_connection_kb", "disk_sync_max_ms", "settle_s", "busy_before",
               "steal_before", "dirty_kb_before", "sync_s", "failed"]


def runs_table(records: list[dict[str, Any]]) -> str:
    return markdown(RUN_COLUMNS, [[str(r.get(c, "-")) for c in RUN_COLUMNS] for r in records])


QUICK_COLUMNS = ["system", "server CPU µs/delivered (median)", "every run", "delivered/s (median)",
                 "generator CPU µs/delivered", "server ÷ generator CPU (median)", "lower than the first system's"]


def with_per_generator(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's server CPU over its load generator's, per delivered message: the generator
    does the same work whatever the server's code, so the ratio follows the server's code
    more than the host's speed (which moves both; on this host by ±20 % between runs)."""
    out = []
    for r in records:
        server, generator = r.get("server_cpu_us_per_delivered"), r.get("generator_cpu_us_per_delivered")
        if isinstance(server, int | float) and isinstance(generator, int | float) and generator:
            r = {**r, "server_per_generator": server / generator}
        out.append(r)
    return out


def quick_kind(args: argparse.Namespace) -> str:
    """What --quick runs: the group fan-out with --systems group, else cross-node at full rate."""
    return GROUP if args.systems == ["group"] else MAX


def quick_rows(records: list[dict[str, Any]], kind: str = MAX) -> list[list[str]]:
    """One row per tree: its medians, and against the first tree the rounds whose figure is
    lower, by server CPU and by server ÷ generator CPU ("k of n")."""
    records = with_per_generator(records)
    systems = list(dict.fromkeys(r["system"] for r in records if r["kind"] == kind))
    rows = []
    for system in systems:
        runs = [r for r in records if r["system"] == system and r["kind"] == kind]
        every = ", ".join(str(r.get("server_cpu_us_per_delivered", "-")) for r in runs)
        lower = "-"
        if system != systems[0]:
            counts = [round_ratios(records, system, systems[0], kind, key)
                      for key in ("server_cpu_us_per_delivered", "server_per_generator")]
            lower = " / ".join(f"{sum(x < 1 for x in ratios)} of {len(ratios)}" for ratios in counts)
        per_generator = figure(records, system, kind, "server_per_generator")
        rows.append([system, fmt(figure(records, system, kind, "server_cpu_us_per_delivered"), " µs"), every,
                     fmt(figure(records, system, kind, "delivered_per_s")),
                     fmt(figure(records, system, kind, "generator_cpu_us_per_delivered"), " µs"),
                     "-" if per_generator is None else f"{per_generator:.3f}", lower])
    return rows


def interpreter(venv: Path) -> str:
    """The Python a virtual environment was made from, as its pyvenv.cfg names it: the build
    counts (session 24: the same 3.11 cost 18 % more CPU per message built by pyenv without
    profile-guided and link-time optimisation than built by Debian)."""
    try:
        cfg = dict(line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines() if " = " in line)
    except OSError:
        return f"unknown (no {venv / 'pyvenv.cfg'})"
    return f"Python {cfg.get('version', '?')}, {cfg.get('executable') or cfg.get('home', '?')}"


def report(records: list[dict[str, Any]], args: argparse.Namespace, load: tuple[str, str], seconds: float) -> str:
    out = [f"{'quick A/B' if args.quick else 'targets'}: {args.repeat} interleaved round(s), {args.duration:g} s "
           f"per run, {seconds / 60:.1f} min; load average {load[0]} at the start, {load[1]} at the end",
           f"interpreter (the nodes, the load generator{'' if args.quick else ', python-socketio'}): "
           f"{interpreter(ROOT / '.venv')}"]
    if args.against:
        out.append(f"interpreter of {args.against}: {interpreter(Path(args.against) / '.venv')}")
    out.append("")
    if args.quick:
        out.append(markdown(QUICK_COLUMNS, quick_rows(records, quick_kind(args))))
        out += ["", "The last column: in how many rounds the tree's server CPU per message, and its "
                "server ÷ generator CPU, were lower than the first tree's (the second figure is less "
                "moved by the host's speed)."]
    else:
        out.append(markdown(["target", "goal", "vim-cluster", "beside it", "reached?"],
                            target_rows(records, args.cores_rate)))
    out += ["", "every run:", "", runs_table(records)]
    return "\n".join(out)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: stop the servers, print the table
    raise_fd_limit()
    gc.freeze()  # as `vim-cluster bench` does: the load generator's full collections are not latency
    if args.quick and quick_kind(args) == MAX:
        args.systems = ["vim-cluster"]
    if not (Path(VIM[0])).exists():
        raise SystemExit("no .venv/bin/vim-cluster: run scripts/test.sh first")
    begin, started_at = loadavg(), time.monotonic()
    records = Records(args.json_out)
    try:
        with tempfile.TemporaryDirectory(prefix="vim-targets-") as tmp:
            run_all(args, Path(tmp), records)
    finally:  # what was measured is printed, also after an interrupt or a failure
        print(report(records, args, (begin, loadavg()), time.monotonic() - started_at), flush=True)


if __name__ == "__main__":
    main()
