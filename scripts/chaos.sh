#!/usr/bin/env bash
# The chaos suite's long run: a master + two department nodes on a private redis-server, steady
# cross-node, group and offline traffic, a seeded random schedule of faults (SIGKILL of masters
# and department nodes, Redis restarted empty, links cut at a proxy), then the accounting table.
#   scripts/chaos.sh --duration 600 --seed 42     (--help for every option)
# The seed is printed; the same seed replays the same schedule. Exit 1 if anything acked was
# lost, arrived out of order or under two ids. Run scripts/test.sh once first (it makes .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "run scripts/test.sh first (it creates .venv)" >&2; exit 2; }
exec .venv/bin/python -m tests.chaos.chaos "$@"
