"""A/B of two trees of vim-cluster (issue 12, the lean client connection): interleaved rounds
of `raw-connections` (RSS per idle authenticated connection, scripts/bench_lean_cli.py) and `cross-node` (server CPU per
delivered message, at full rate and at 1,000 msg/s), medians per tree, the load average
beside each run.

Usage: .venv/bin/python scripts/bench_lean_ab.py --base /tmp/old-tree [--rounds 3]
       [--connections 10000] [--duration 8]
The base tree is another checkout's source (e.g. `git archive COMMIT | tar -x -C DIR`); it
runs with this checkout's .venv, by PYTHONPATH. "new" is this checkout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_run  # noqa: E402
from bench_run import run_profile  # noqa: E402

bench_run.VIM = [sys.executable, str(ROOT / "scripts" / "bench_lean_cli.py")]  # users one connection each

SQLITE = {"directory": "sqlite:data/directory.db", "messages": "sqlite:data/messages.db"}
FIGURES = [("raw-connections", "max", "rss_per_connection_kb"),
           ("cross-node", "max", "server_cpu_us_per_delivered"),
           ("cross-node", "max", "delivered_per_s"),
           ("cross-node", 1000.0, "server_cpu_us_per_delivered"),
           ("cross-node", 1000.0, "p99_ms")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the old tree's root (has vim_cluster/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections-only", action="store_true", help="skip the cross-node runs")
    parser.add_argument("--messages-only", action="store_true",
                        help="skip raw-connections (closing 10,000 sessions slows the node's next minute)")
    args = parser.parse_args()
    trees = {"base": str(Path(args.base).resolve()), "new": str(ROOT)}
    scenarios = [("raw-connections", ["--connections", str(args.connections)]),
                 ("cross-node", ["--senders", "4", "--window", "32"]),
                 ("cross-node", ["--senders", "4", "--window", "32", "--rate", "1000"])]
    if args.connections_only:
        scenarios = scenarios[:1]
    if args.messages_only:
        scenarios = scenarios[1:]
    runs: dict[str, list[list[dict[str, Any]]]] = {"base": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="vim-lean-ab-") as tmp:
        for n in range(args.rounds):
            order = ["base", "new"] if n % 2 == 0 else ["new", "base"]
            for name in order:
                os.environ["PYTHONPATH"] = trees[name]
                os.chdir(trees[name])  # `python -m vim_cluster.cli` (the launcher) puts the cwd first on sys.path
                load = os.getloadavg()[0]
                try:
                    results = run_profile("sqlite", Path(tmp) / f"{name}-{n}", SQLITE, args, scenarios)
                except subprocess.TimeoutExpired as exc:
                    print(f"{name} {n}: {exc}", file=sys.stderr, flush=True)
                    continue
                for r in results:
                    r["load"] = round(load, 2)
                runs[name].append(results)
                print(name, n, [{k: r.get(k) for k in ("scenario", "rate", "rss_per_connection_kb",
                                                        "server_cpu_us_per_delivered", "delivered_per_s", "p99_ms",
                                                        "load")} for r in results], file=sys.stderr, flush=True)
    print("| figure | base runs | base median | new runs | new median |")
    print("|---|---|---|---|---|")
    for scenario, rate, key in FIGURES:
        cells = []
        for name in ("base", "new"):
            values = [r[key] for results in runs[name] for r in results
                      if r.get("scenario") == scenario and r.get("rate") == rate and r.get(key) is not None]
            cells += [", ".join(str(v) for v in values), str(statistics.median(values)) if values else "-"]
        label = f"{scenario}{' @' + str(rate) if rate else ''} {key}"
        print(f"| {label} | " + " | ".join(cells) + " |")
    loads = [r["load"] for name in runs for results in runs[name] for r in results[:1]]
    print(f"\nload average (1 min) at the start of each run: {loads}")


if __name__ == "__main__":
    main()
