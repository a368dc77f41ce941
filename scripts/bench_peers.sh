#!/usr/bin/env bash
# The peer comparison alone (issue 5): the cross-node shape against vim-cluster, python-socketio
# (two uvicorn processes + AsyncRedisManager on a real Redis) and, where Go is installed,
# Centrifugo v5 (two nodes, Redis engine); prints a markdown table and the ratios
# vim-cluster / peer. scripts/bench.sh prints the whole target table (issue 12), this included.
# Run scripts/test.sh once first (it creates .venv). Makes .venv-peers and builds Centrifugo the
# first time (scripts/bench_peers_setup.sh).
# Options go to scripts/bench_peers.py (--duration S, --senders N, --window W, --rate R,
# --systems vim-cluster,python-socketio,centrifugo).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/vim-cluster ] || { echo "run scripts/test.sh first (it creates .venv)" >&2; exit 2; }
. scripts/bench_peers_setup.sh
exec timeout 900 .venv/bin/python scripts/bench_peers.py --centrifugo "$centrifugo" "$@"
