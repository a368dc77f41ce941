#!/usr/bin/env python3
"""One quick `vim-cluster bench cross-node` across hosts: the multi-host test's deployment
(tests/deploy/multihost.py: network namespaces on a bridge, Debian redis-server, MariaDB,
FerretDB, the nodes running docker/node-configs/) with TLS on and/or off.

The load generator runs on the clients host; senders on dept-1, recipients on dept-2, so every
message crosses dept-1 -> master -> dept-2 over the bridge. Server CPU is the three node
processes' (server_cpu_*); the db host's redis-server, MariaDB and FerretDB are counted apart
(db_host_cpu_*). Prints one JSON object per mode.

Usage (as root, with the test servers installed: scripts/install-test-servers.sh):
    .venv/bin/python scripts/bench_multihost.py [--tls both|on|off] [--duration 10] [--senders 4]
        [--window 32] [--rate 0] [--dir /dev/shm] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.deploy import netns  # noqa: E402 - after the path set-up
from tests.deploy.multihost import NODES, Deployment, host_env, missing_requirement  # noqa: E402
from vim_cluster.sysinfo import cpu_seconds  # noqa: E402


def bench(tls: bool, args: argparse.Namespace) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix="vim-bench-multihost-", dir=args.dir))
    deployment = Deployment(folder, netns.run_prefix(), tls=tls)
    try:
        deployment.start()
        command = [sys.executable, "-m", "vim_cluster.cli", "bench", "cross-node", "--json",
                   "--duration", str(args.duration), "--senders", str(args.senders),
                   "--window", str(args.window), "--rate", str(args.rate)]
        for node in NODES:  # master first: cross-node sends from the second-last to the last
            command += ["--url", deployment.client_url(node), "--pid", str(deployment.nodes[node].process.pid)]
        if tls:
            command += ["--ca-file", str(deployment.ca_file)]
        db_pids = {server.name: server.process.pid for server in deployment.servers if server.process is not None}
        db_cpu = {name: cpu_seconds([pid]) for name, pid in db_pids.items()}
        result = subprocess.run([*deployment.network.exec_prefix("clients"), *command], capture_output=True,
                                text=True, cwd=REPO, env=host_env(None), timeout=args.duration + 180)
        if result.returncode != 0:
            raise SystemExit(f"bench failed ({result.returncode}):\n{result.stderr[-3000:]}")
        summary: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
        db_cpu = {name: cpu_seconds([pid]) - db_cpu[name] for name, pid in db_pids.items()}
        delivered = summary.get("delivered") or 0
        total = sum(db_cpu.values())
        return {"tls": tls, **summary, "db_host_cpu_s": round(total, 2),
                "db_host_cpu_us_per_delivered": round(total / delivered * 1e6, 1) if delivered else None,
                "db_host_cpu_s_by_server": {name: round(cpu, 2) for name, cpu in db_cpu.items()}}
    finally:
        deployment.stop()
        if args.keep:
            print(f"bench_multihost: logs kept in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tls", choices=["both", "on", "off"], default="both")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sending per mode")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--window", type=int, default=32, help="unacked messages per sender")
    parser.add_argument("--rate", type=float, default=0, help="messages/s in all, paced (0: as fast as acks allow)")
    parser.add_argument("--dir", help="where the deployment's servers keep their data (default: the temp folder; "
                        "/dev/shm takes the disk out of the measure)")
    parser.add_argument("--keep", action="store_true", help="keep the deployment's folder (node logs)")
    args = parser.parse_args()
    why = missing_requirement()
    if why:
        print(f"bench_multihost: {why}", file=sys.stderr)
        return 2
    netns.remove_stale()
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.tls]
    for tls in modes:
        print(json.dumps(bench(tls, args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
