"""The local executor's worker processes must not outlive a study driver killed with SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DRIVER = r"""
import concurrent.futures as cf, multiprocessing as mp, os, sys, time
from reports import executors

if __name__ == "__main__":
    with_parent = sys.argv[1] == "1"
    args = (None, None, 1, os.getpid()) if with_parent else (None, None, 1)
    ex = cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"), initializer=executors._init_worker,
                                initargs=args)
    pids = {f.result() for f in [ex.submit(os.getpid) for _ in range(6)]}
    print(" ".join(map(str, sorted(pids))), flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaps counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _start_and_kill_driver(tmp_path: Path, with_parent: bool) -> list[int]:
    """Run a driver with a 2-process spawn pool, SIGKILL it once its workers are up; their pids."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script), "1" if with_parent else "0"], stdout=subprocess.PIPE,
                              text=True)
    try:
        return [int(p) for p in driver.stdout.readline().split()]
    finally:
        driver.kill()  # SIGKILL: the driver's own clean-up never runs
        driver.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_workers_exit_when_the_driver_is_killed(tmp_path: Path) -> None:
    pids = _start_and_kill_driver(tmp_path, with_parent=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert pids and not [p for p in pids if _alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_without_the_parent_link_workers_would_be_orphaned(tmp_path: Path) -> None:
    """The control: the same pool without the parent-death request leaves its workers running."""
    pids = _start_and_kill_driver(tmp_path, with_parent=False)
    try:
        time.sleep(2)
        assert pids and all(_alive(p) for p in pids)
    finally:
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_worker_init_limits_torch_and_blas_threads() -> None:
    """Run in a fresh interpreter: the initializer sets both thread pools for the worker's life."""
    code = ("import torch; from threadpoolctl import threadpool_info; from reports import executors; "
            "executors._init_worker(None, None, 1); "
            "print(torch.get_num_threads(), sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")[-2]
    assert out == "1 [1]"
