# Sourced by run.sh and test.sh: makes .venv with Python >= 3.11 and installs the project.
# Usage: . scripts/venv.sh [EXTRAS]   (EXTRAS e.g. "test")
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The Pythons >= 3.11 to make .venv from, best first: $PYTHON alone if it is set; else the
# operating system's own, then python3.13 ... python3 on PATH. Distributions build their
# Python with profile-guided and link-time optimisation, pyenv by default with neither, and on
# the same 3.11 that costs the server 18 % more CPU per message (docs/performance.md, session 24).
_pythons() {
  local candidates=(/usr/bin/python3 python3.13 python3.12 python3.11 python3)
  [ -z "${PYTHON:-}" ] || candidates=("$PYTHON")
  for candidate in "${candidates[@]}"; do
    command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null &&
      echo "$candidate"
  done
  return 0
}
# .venv from $1. Debian and Ubuntu ship venv separately: as root, python3-venv is installed
# (once) and $1 tried again.
_make_venv() {
  "$1" -m venv "$_root/.venv" 2>/dev/null && return 0
  rm -rf "$_root/.venv"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ -z "${_apt_tried:-}" ]; then
    _apt_tried=1
    echo "installing python3-venv with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$1" -m venv "$_root/.venv" 2>/dev/null && return 0
    rm -rf "$_root/.venv"
  fi
  return 1
}
if [ ! -x "$_root/.venv/bin/python" ]; then
  _found="$(_pythons)"
  if [ -z "$_found" ]; then
    echo "vim-cluster needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
    return 1
  fi
  _made=""
  while IFS= read -r _py; do
    if _make_venv "$_py"; then _made=1; break; fi
    echo "cannot make .venv with $_py (its venv module is missing)" >&2
  done <<< "$_found"
  if [ -z "$_made" ]; then
    echo "cannot create .venv: install python3-venv (sudo apt-get install python3-venv)" >&2
    return 1
  fi
fi
_extras="${1:-}"
_stamp="$_root/.venv/.installed-${_extras:-base}"
if [ ! -f "$_stamp" ] || [ "$_root/pyproject.toml" -nt "$_stamp" ]; then
  "$_root/.venv/bin/python" -m pip install -q --upgrade pip
  if [ -n "$_extras" ]; then
    "$_root/.venv/bin/python" -m pip install -q -e "$_root[$_extras]"
  else
    "$_root/.venv/bin/python" -m pip install -q -e "$_root"
  fi
  touch "$_stamp"
fi
