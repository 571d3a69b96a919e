#!/usr/bin/env bash
# Set everything up (once) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$here/scripts/setup.sh" | tail -n 1)
cd "$here"
exec "$venv/bin/python" -m pytest "$@"
