#!/usr/bin/env bash
# Quick start: make .venv, install vim-cluster, start every node of node-configs/.
# Extra arguments go to `vim-cluster up` (e.g. another folder of node configs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
exec .venv/bin/vim-cluster up "${@:-node-configs}"
