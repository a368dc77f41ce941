#!/usr/bin/env bash
# Benchmarks. Run scripts/test.sh once first (it makes .venv and the test servers).
#   scripts/bench.sh            issue 12's target table from one run (about 15 minutes):
#                               vim-cluster vs python-socketio and Centrifugo, p99 at 1,000 msg/s,
#                               RSS per idle connection, group fan-out, MySQL + MongoDB vs SQLite;
#                               medians of 3 interleaved rounds (scripts/bench_targets.py).
#   scripts/bench.sh --quick [--against DIR]
#                               vim-cluster's server CPU per delivered cross-node message only
#                               (about 2 minutes; with DIR, that checkout too, interleaved: A/B).
#   scripts/bench.sh --scenarios [--duration S --connections K --profiles sqlite,servers]
#                               every `vim-cluster bench` scenario, one row each (scripts/bench_run.py).
# Other options go to scripts/bench_targets.py (--help). The first full run makes .venv-peers and
# builds Centrifugo with Go (scripts/bench_peers_setup.sh, a couple of minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/vim-cluster ] || { echo "run scripts/test.sh first (it creates .venv)" >&2; exit 2; }
export PATH="$PATH:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"
if [ "${1:-}" = "--scenarios" ]; then
  shift
  exec timeout 900 .venv/bin/python scripts/bench_run.py "$@"
fi
quick=""
for arg in "$@"; do
  case "$arg" in --quick) quick=1 ;; -h|--help) exec .venv/bin/python scripts/bench_targets.py --help ;; esac
done
centrifugo=""
[ -n "$quick" ] || . scripts/bench_peers_setup.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true  # 10,000 connections, both ends in this machine
exec timeout 1800 .venv/bin/python scripts/bench_targets.py --centrifugo "$centrifugo" "$@"
