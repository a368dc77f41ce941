# Sourced by scripts/bench.sh and scripts/bench_peers.sh (from the repository root): makes
# .venv-peers (python-socketio, uvicorn) and builds Centrifugo into
# $(go env GOPATH)/bin/centrifugo the first time (a couple of minutes); sets $centrifugo to
# its path, or to "" when Go is missing or the build failed (Centrifugo is then skipped).

CENTRIFUGO_MODULE=github.com/centrifugal/centrifugo/v5
CENTRIFUGO_VERSION=v5.4.9

# python-socketio runs on the interpreter vim-cluster runs on: .venv-peers is made again when
# .venv was (its pyvenv.cfg names another Python).
_home() { grep -s '^home = ' "$1/pyvenv.cfg"; }
if [ ! -x .venv-peers/bin/uvicorn ] || [ "$(_home .venv-peers)" != "$(_home .venv)" ]; then
  echo "bench: creating .venv-peers (python-socketio, uvicorn) with $(_home .venv)" >&2
  rm -rf .venv-peers
  .venv/bin/python -m venv .venv-peers
  .venv-peers/bin/pip install -q -r scripts/peers/requirements.txt
fi

# `go install module@version` fails where the module proxy refuses the @v/list lookup, so the
# module is fetched into a scratch module and built there.
centrifugo=""
if command -v go >/dev/null 2>&1; then
  bin="$(go env GOPATH | cut -d: -f1)/bin/centrifugo"
  if ! "$bin" version 2>/dev/null | grep -q "${CENTRIFUGO_VERSION#v}"; then
    echo "bench: building Centrifugo $CENTRIFUGO_VERSION (a couple of minutes the first time)" >&2
    scratch="$(mktemp -d)"
    (
      cd "$scratch"
      go mod init centrifugo-build >/dev/null 2>&1
      go get "$CENTRIFUGO_MODULE@$CENTRIFUGO_VERSION" >/dev/null 2>&1
      mkdir -p "$(dirname "$bin")"
      go build -buildvcs=false -ldflags "-X $CENTRIFUGO_MODULE/internal/build.Version=${CENTRIFUGO_VERSION#v}" \
        -o "$bin" "$CENTRIFUGO_MODULE"
    ) || echo "bench: the Centrifugo build failed: Centrifugo is skipped" >&2
    chmod -R u+w "$scratch" 2>/dev/null; rm -rf "$scratch"
  fi
  "$bin" version >/dev/null 2>&1 && centrifugo="$bin"
else
  echo "bench: Go is not installed: Centrifugo is skipped" >&2
fi
