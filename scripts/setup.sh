#!/usr/bin/env bash
# Create (once) the virtual environment for this pyproject.toml, outside the checkout, keyed by a
# hash of pyproject.toml, and point it at this checkout. Prints the venv path on its last line.
# Idempotent: a second run only re-runs `pip install --no-deps -e .` (a few seconds).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=${DATAMATTERS_VENV_ROOT:-$HOME/.cache/datamatters}
key=$(sha256sum "$here/pyproject.toml" | cut -c1-16)
venv="$root/venv-$key"
py=$(command -v python3.11 || command -v python3)
log="$root/setup.log"
# pip is chatty (and this machine's pip config adds warnings): keep its output in a log, show it on failure.
quiet() { "$@" >>"$log" 2>&1 || { tail -n 40 "$log" >&2; echo "setup: failed: $*" >&2; exit 1; }; }
export PYTHONWARNINGS=ignore
mkdir -p "$root"
: >"$log"
if [ ! -f "$venv/.complete" ]; then
  echo "setup: creating $venv (torch and friends, about 2-3 minutes the first time)" >&2
  rm -rf "$venv"
  quiet "$py" -m venv "$venv"
  quiet "$venv/bin/python" -m pip install -q --upgrade pip
  quiet "$venv/bin/python" -m pip install -q -e "$here[test,ray,docs]"
  touch "$venv/.complete"
fi
# Always point the venv at *this* checkout (CI clones to a new folder each run).
quiet "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$here"
echo "$venv"
