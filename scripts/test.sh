#!/usr/bin/env bash
# Set everything up (once) and run the whole test suite. Extra arguments go to pytest.
# The suite runs on one pytest-xdist worker per CPU this process may use (at most 4: each worker holds
# torch and its models, about 1-2 GB); DATAMATTERS_TEST_WORKERS overrides (0 or 1: one process). Each worker's
# torch gets one thread: two workers of two threads on two cores spin-wait on each other (measured on 2 cores:
# 683 s with two threads a worker, 409 s with one; the suite run in one process took 613-648 s). The docs'
# trained numbers hold under any thread count (their tolerances; test_readme_examples_hold_on_other_cpu_kernels).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$here/scripts/setup.sh" | tail -n 1)
cd "$here"
workers=${DATAMATTERS_TEST_WORKERS:-$("$venv/bin/python" -c 'import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))')}
if [ "$workers" -gt 1 ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
  exec "$venv/bin/python" -m pytest -n "$workers" --dist worksteal "$@"
fi
exec "$venv/bin/python" -m pytest "$@"
