#!/usr/bin/env bash
# Makes sure the servers the contract tests start privately are installed:
#   - MariaDB (mariadbd, mariadb-install-db): apt-get install mariadb-server (as root).
#   - FerretDB v1.24.2 (the MongoDB-wire server): built from source with Go into
#     $(go env GOPATH)/bin/ferretdb when no working binary is found ($VIM_FERRETDB, PATH,
#     $(go env GOPATH)/bin).
#   - redis-server and iproute2 (Debian packages) for the multi-host test (tests/deploy/).
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

apt_lists_present() {
  compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null
}

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_mariadb() {
  have_mariadb && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "mariadbd is missing: run 'sudo apt-get install mariadb-server' (or set VIM_TEST_MYSQL_URL)"
    return 0
  fi
  say "installing mariadb-server with apt-get"
  if ! apt_lists_present || ! apt_install mariadb-server 2>/dev/null; then
    apt-get update -qq >/dev/null
    apt_install mariadb-server
  fi
  have_mariadb && say "mariadb-server installed ($(mariadbd --version 2>/dev/null || /usr/sbin/mariadbd --version))"
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
install_debian_packages() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "${missing[*]} missing: run 'sudo apt-get install ${missing[*]}' (the multi-host test needs them)"
    return 0
  fi
  say "installing ${missing[*]} with apt-get"
  if ! apt_lists_present || ! apt_install "${missing[@]}" 2>/dev/null; then
    apt-get update -qq >/dev/null
    apt_install "${missing[@]}"
  fi
}

install_mariadb
install_ferretdb
install_debian_packages
