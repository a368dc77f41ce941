#!/usr/bin/env bash
# Benchmarks: a master + two department nodes on loopback, every `vim-cluster bench`
# scenario, with embedded Redis + SQLite and (when MariaDB and FerretDB exist) MySQL + MongoDB;
# prints a markdown table. Run scripts/test.sh once first (it makes .venv and the servers).
# Options go to scripts/bench_run.py (--duration S, --connections K, --profiles sqlite,servers).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/vim-cluster ] || { echo "run scripts/test.sh first (it creates .venv)" >&2; exit 2; }
export PATH="$PATH:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"
exec timeout 900 .venv/bin/python scripts/bench_run.py "$@"
