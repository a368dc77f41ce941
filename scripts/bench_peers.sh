#!/usr/bin/env bash
# The peer comparison (issue 5): the cross-node shape against vim-cluster, python-socketio
# (two uvicorn processes + AsyncRedisManager on a real Redis) and, where Go is installed,
# Centrifugo v5 (two nodes, Redis engine); prints a markdown table and the ratios
# vim-cluster / peer. Run scripts/test.sh once first (it creates .venv).
# Makes .venv-peers (python-socketio, uvicorn) and builds Centrifugo into
# $(go env GOPATH)/bin/centrifugo the first time (a couple of minutes).
# Options go to scripts/bench_peers.py (--duration S, --senders N, --window W, --rate R,
# --systems vim-cluster,python-socketio,centrifugo).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/vim-cluster ] || { echo "run scripts/test.sh first (it creates .venv)" >&2; exit 2; }

CENTRIFUGO_MODULE=github.com/centrifugal/centrifugo/v5
CENTRIFUGO_VERSION=v5.4.9
say() { echo "bench_peers: $*" >&2; }

if [ ! -x .venv-peers/bin/uvicorn ]; then
  say "creating .venv-peers (python-socketio, uvicorn)"
  .venv/bin/python -m venv .venv-peers
  .venv-peers/bin/pip install -q -r scripts/peers/requirements.txt
fi

# `go install module@version` fails where the module proxy refuses the @v/list lookup, so the
# module is fetched into a scratch module and built there.
centrifugo=""
if command -v go >/dev/null 2>&1; then
  bin="$(go env GOPATH | cut -d: -f1)/bin/centrifugo"
  if ! "$bin" version 2>/dev/null | grep -q "${CENTRIFUGO_VERSION#v}"; then
    say "building Centrifugo $CENTRIFUGO_VERSION (a couple of minutes the first time)"
    scratch="$(mktemp -d)"
    trap 'chmod -R u+w "$scratch" 2>/dev/null; rm -rf "$scratch"' EXIT
    (
      cd "$scratch"
      go mod init centrifugo-build >/dev/null 2>&1
      go get "$CENTRIFUGO_MODULE@$CENTRIFUGO_VERSION" >/dev/null 2>&1
      mkdir -p "$(dirname "$bin")"
      go build -buildvcs=false -ldflags "-X $CENTRIFUGO_MODULE/internal/build.Version=${CENTRIFUGO_VERSION#v}" \
        -o "$bin" "$CENTRIFUGO_MODULE"
    ) || say "the Centrifugo build failed: Centrifugo is skipped"
  fi
  "$bin" version >/dev/null 2>&1 && centrifugo="$bin"
else
  say "Go is not installed: Centrifugo is skipped"
fi

exec timeout 900 .venv/bin/python scripts/bench_peers.py --centrifugo "$centrifugo" "$@"
