# Sourced by run.sh and test.sh: makes .venv with Python >= 3.11 and installs the project.
# Usage: . scripts/venv.sh [EXTRAS]   (EXTRAS e.g. "test")
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The operating system's own Python comes before one found on PATH: distributions build it with
# profile-guided and link-time optimisation, a pyenv install by default with neither, and on
# the same 3.11 that costs the server 18 % more CPU per message (docs/performance.md, session 24).
_find_python() {
  for candidate in "${PYTHON:-}" /usr/bin/python3 python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "vim-cluster needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  return 1
}
if [ ! -x "$_root/.venv/bin/python" ]; then
  _py="$(_find_python)"
  if ! "$_py" -m venv "$_root/.venv" 2>/dev/null; then
    # Debian and Ubuntu ship venv separately.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing python3-venv with apt-get" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      rm -rf "$_root/.venv"; "$_py" -m venv "$_root/.venv"
    else
      echo "cannot create .venv: install python3-venv (sudo apt-get install python3-venv)" >&2
      return 1
    fi
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
