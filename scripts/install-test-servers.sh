#!/usr/bin/env bash
# Makes sure the servers the contract tests start privately are installed:
#   - MariaDB (mariadbd, mariadb-install-db): apt-get install mariadb-server (as root).
#   - Chromium (/usr/bin/chromium) for the browser tests (tests/browser, Playwright from
#     PyPI drives it; `playwright install` is never used): apt-get install chromium (as root).
#   - Debian's redis-server and redis-sentinel (the Redis-loss and Sentinel failover tests start
#     them privately): apt-get install redis-server redis-sentinel (as root).
#   - FerretDB v1.24.2 (the MongoDB-wire server): built from source with Go into
#     $(go env GOPATH)/bin/ferretdb when no working binary is found ($VIM_FERRETDB, PATH,
#     $(go env GOPATH)/bin).
#   - PostgreSQL (Debian's postgresql: /usr/lib/postgresql/N/bin) for FerretDB's PostgreSQL
#     backend: a contract test and the benchmarks start a private cluster.
#   - iproute2 (ip) for the multi-host test (tests/deploy/), which also uses redis-server.
# Idempotent, and silent when everything is there. What it cannot install it reports, and
# exits 0: the tests then skip (or fail, with VIM_REQUIRE_TEST_SERVERS=1) with the reason.
# Usage: scripts/install-test-servers.sh
set -euo pipefail

FERRETDB_MODULE=github.com/FerretDB/FerretDB
FERRETDB_VERSION=v1.24.2

say() { echo "install-test-servers: $*"; }

have_mariadb() {
  { command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; } &&
    command -v mariadb-install-db >/dev/null 2>&1
}

have() {  # a command on PATH or in the sbin folders
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

apt_lists_present() {
  compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null
}

# Waits for another apt run's lock (up to 15 min) instead of failing.
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq \
    --no-install-recommends "$@" >/dev/null
}

# ensure_packages WHAT-FOR PKG... : installs the Debian packages not yet installed (as root),
# or says how to get them. The packages' own services are not wanted: the tests start private
# servers on free ports.
ensure_packages() {
  local purpose="$1"; shift
  [ $# -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "$* missing: run 'sudo apt-get install $*' ($purpose)"
    return 0
  fi
  say "installing $* with apt-get ($purpose)"
  if ! apt_lists_present || ! apt_install "$@" 2>/dev/null; then
    apt-get -o DPkg::Lock::Timeout=900 update -qq >/dev/null
    apt_install "$@"
  fi
}

install_debian_packages() {
  local missing=()
  have_mariadb || missing+=(mariadb-server)
  have redis-server || missing+=(redis-server)
  have redis-sentinel || missing+=(redis-sentinel)
  have ip || missing+=(iproute2)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
  ensure_packages "MariaDB for the contract tests, PostgreSQL for FerretDB's PostgreSQL backend (one contract test, and the benchmarks), redis-server/redis-sentinel for the Redis-loss, Sentinel and multi-host tests, iproute2 for the multi-host test, Chromium for tests/browser (Playwright drives it; 'playwright install' is never used)" "${missing[@]}"
}

go_bin() {
  command -v go 2>/dev/null || { [ -x /usr/local/go/bin/go ] && echo /usr/local/go/bin/go; } || true
}

# A ferretdb that runs: builds of FerretDB whose build/version/version.txt is empty panic at
# start, so existence alone is not enough.
ferretdb_works() {
  [ -n "$1" ] && [ -x "$1" ] && "$1" --version >/dev/null 2>&1
}

find_ferretdb() {
  local go candidate
  go="$(go_bin)"
  for candidate in "${VIM_FERRETDB:-}" "$(command -v ferretdb 2>/dev/null || true)" \
      "${go:+$("$go" env GOPATH | cut -d: -f1)/bin/ferretdb}" "$HOME/go/bin/ferretdb"; do
    if ferretdb_works "$candidate"; then echo "$candidate"; return 0; fi
  done
  return 1
}

# `go install ...@version` fails where the module proxy refuses the @v/list lookup, and a
# module-cache build has no version.txt (the binary panics). So: fetch the module into a
# scratch module, copy its source, write version.txt, and build that copy.
BUILD_DIR=""
cleanup() { if [ -n "$BUILD_DIR" ]; then chmod -R u+w "$BUILD_DIR" 2>/dev/null || true; rm -rf "$BUILD_DIR"; fi; }
trap cleanup EXIT

build_ferretdb() {
  local go="$1" gopath src
  gopath="$("$go" env GOPATH | cut -d: -f1)"
  BUILD_DIR="$(mktemp -d)"
  say "building FerretDB $FERRETDB_VERSION with $("$go" version | cut -d' ' -f3) (a few minutes the first time)"
  (
    cd "$BUILD_DIR"
    "$go" mod init fbbuild >/dev/null 2>&1
    "$go" get "$FERRETDB_MODULE/cmd/ferretdb@$FERRETDB_VERSION" >/dev/null 2>&1
    src="$("$go" list -m -f '{{.Dir}}' "$FERRETDB_MODULE")"
    cp -r "$src" ferretdb-src
    chmod -R u+w ferretdb-src
    echo "$FERRETDB_VERSION" > ferretdb-src/build/version/version.txt
    "$go" mod edit -replace "$FERRETDB_MODULE=./ferretdb-src"
    mkdir -p "$gopath/bin"
    "$go" build -buildvcs=false -o "$gopath/bin/ferretdb" "$FERRETDB_MODULE/cmd/ferretdb"
  )
  if ferretdb_works "$gopath/bin/ferretdb"; then
    say "ferretdb built: $gopath/bin/ferretdb (add $gopath/bin to PATH or set VIM_FERRETDB)"
  else
    say "ferretdb build failed: see the output above"
  fi
}

install_ferretdb() {
  find_ferretdb >/dev/null && return 0
  local go
  go="$(go_bin)"
  if [ -z "$go" ]; then
    say "ferretdb is missing and Go is not installed: install Go, then rerun this script" \
        "(or set VIM_FERRETDB=/path/to/ferretdb, or VIM_TEST_MONGO_URL)"
    return 0
  fi
  build_ferretdb "$go"
}

# The multi-host test (tests/deploy/): Debian's redis-server (a separate server, not the
# embedded one) and iproute2's `ip` (network namespaces).
install_debian_packages
install_ferretdb
