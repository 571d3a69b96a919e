#!/usr/bin/env bash
# Set everything up (once) and run the whole test suite. Extra arguments go to pytest.
# The suite runs on one pytest-xdist worker per CPU this process may use (at most 4: each worker holds
# torch and its models, about 1-2 GB); DATAMATTERS_TEST_WORKERS overrides (0: no workers, one process).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$here/scripts/setup.sh" | tail -n 1)
cd "$here"
workers=${DATAMATTERS_TEST_WORKERS:-$("$venv/bin/python" -c 'import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))')}
if [ "$workers" -gt 1 ]; then
  exec "$venv/bin/python" -m pytest -n "$workers" --dist worksteal "$@"
fi
exec "$venv/bin/python" -m pytest "$@"
