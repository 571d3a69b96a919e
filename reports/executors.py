"""Where a study's arms run: in this process, in a process pool, or on a Ray cluster.

An executor has one method, ``run(tasks, pool, reference, on_result)``: it runs every task (an arm
alone, `reports.arms.ArmTask`, or a fused group of arms, `reports.fusion.GroupTask`;
``task.run(pool, reference)`` returns a list of arm results) and calls ``on_result(result)`` in the
calling process for each arm result as its task finishes (in completion order), so the caller can
save it at once. Workers get the
datasets as values (once per worker, or once in Ray's object store) and return bytes, so no shared
filesystem is needed.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any, Callable, Mapping, Sequence

from datacheck.dataset import Dataset
from datacheck.errors import UserError

log = logging.getLogger(__name__)

OnResult = Callable[[Mapping[str, Any]], None]
MAX_TASK_RETRIES = 2  # times a task whose worker died is run again (local pool) or retried by Ray


class LocalExecutor:
    """In-process (``workers=1``, the default) or a pool of ``workers`` spawned processes, each
    limited to cpu_count / workers torch threads so they do not fight over the cores. A worker that
    dies (SIGKILL, out of memory) breaks the pool: a new pool runs every unfinished task again, each at
    most ``MAX_TASK_RETRIES`` more times."""

    name = "local"
    shared_filesystem = True  # its workers see the study folder: fused groups keep their checkpoints there

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise UserError(f"--workers must be >= 1, got {workers}")
        self.workers = workers

    def run(self, tasks: Sequence[Any], pool: Dataset, reference: Dataset, on_result: OnResult) -> None:
        if self.workers == 1 or len(tasks) <= 1:
            for t in tasks:
                for res in t.run(pool, reference):
                    on_result(res)
            return
        import concurrent.futures as cf
        import multiprocessing as mp
        from concurrent.futures.process import BrokenProcessPool

        threads = max(1, (os.cpu_count() or 1) // self.workers)
        # spawn, not fork: a forked child of a process that already used torch's thread pool can hang
        ctx = mp.get_context("spawn")
        todo = list(tasks)
        tries = [0] * len(todo)
        while todo:
            ex = cf.ProcessPoolExecutor(min(self.workers, len(todo)), mp_context=ctx, initializer=_init_worker,
                                        initargs=(pool, reference, threads, os.getpid()))
            futs = {ex.submit(_run_in_worker, t): k for k, t in enumerate(todo)}
            done: set[int] = set()
            try:
                for f in cf.as_completed(futs):
                    try:
                        results = f.result()
                    except BrokenProcessPool:
                        # a worker died (killed, out of memory): the pool is gone; every task that had not
                        # finished runs again in a fresh pool, each at most MAX_TASK_RETRIES more times
                        break
                    done.add(futs[f])
                    for res in results:
                        on_result(res)
            except BaseException:
                # interrupted or an arm raised: stop the workers now instead of waiting for their arms
                for proc in list(getattr(ex, "_processes", {}).values()):
                    proc.terminate()
                ex.shutdown(wait=False, cancel_futures=True)
                raise
            for f, k in futs.items():  # tasks that finished before the pool broke keep their results
                if k not in done and f.done() and not f.cancelled() and f.exception() is None:
                    done.add(k)
                    for res in f.result():
                        on_result(res)
            left = [k for k in range(len(todo)) if k not in done]
            if left:
                for proc in list(getattr(ex, "_processes", {}).values()):
                    proc.terminate()
                ex.shutdown(wait=False, cancel_futures=True)
                for k in left:
                    tries[k] += 1
                    if tries[k] > MAX_TASK_RETRIES:
                        raise UserError(f"a worker process died {tries[k]} times while running "
                                        f"{', '.join(a.arm_id for a in todo[k].arms)}; giving up on it "
                                        "(finished arms are saved; re-run to resume)")
                log.warning("a worker process died; running %d unfinished task(s) again in a new pool", len(left))
            else:
                ex.shutdown()
            todo, tries = [todo[k] for k in left], [tries[k] for k in left]


_WORKER: dict[str, Any] = {}


def _die_with_parent(parent: int) -> None:
    """Make this worker go when the study driver does, even when the driver is killed with SIGKILL
    (which skips its own clean-up of the pool): on Linux the kernel sends the worker SIGTERM when the
    driver exits. If the driver is already gone, exit now."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    if os.getppid() != parent:
        os._exit(1)


def _init_worker(pool: Dataset | None, reference: Dataset | None, threads: int, parent: int | None = None) -> None:
    import torch

    if parent is not None:
        _die_with_parent(parent)
    torch.set_num_threads(threads)
    try:  # numpy's BLAS too (the metrics' matrix products start one worker per BLAS thread)
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")  # applies on construction, for the worker's life
    except ImportError:  # pragma: no cover - scikit-learn brings it
        pass
    _WORKER["pool"], _WORKER["reference"] = pool, reference


def _run_in_worker(task: Any) -> list[Mapping[str, Any]]:
    return task.run(_WORKER["pool"], _WORKER["reference"])


def _ray_run_task(task: Any, pool: Dataset, reference: Dataset) -> list[Mapping[str, Any]]:
    return task.run(pool, reference)


class RayExecutor:
    """Runs each task (an arm, or a fused group of arms) as a Ray task (1 CPU each). ``address=None`` starts a local Ray instance with
    ``num_cpus`` CPUs; an address (``ray://host:10001`` or ``auto``) joins an existing cluster, whose
    workers must have datamatters installed. Needs the optional extra ``datamatters[ray]``."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 cpus_per_arm: float = 1.0) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'datamatters[ray]'") from None
        self.address, self.num_cpus, self.cpus_per_arm = address, num_cpus, cpus_per_arm

    @property
    def shared_filesystem(self) -> bool:
        """A local instance's workers run on this machine and see the study folder (fused groups keep
        their checkpoints there and resume after a kill); a cluster's may not."""
        return self.address is None

    def run(self, tasks: Sequence[Any], pool: Dataset, reference: Dataset, on_result: OnResult) -> None:
        import ray

        started_here = False
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False,
                         log_to_driver=False)
            started_here = True
        try:
            # a worker that dies mid-task (node lost, killed) has the task retried on another worker
            remote = ray.remote(num_cpus=self.cpus_per_arm, max_retries=MAX_TASK_RETRIES)(_ray_run_task)
            pool_ref, ref_ref = ray.put(pool), ray.put(reference)
            pending = [remote.remote(t, pool_ref, ref_ref) for t in tasks]
            try:
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1)
                    for r in ready:
                        for res in ray.get(r):
                            on_result(res)
            except BaseException:
                # the driver failed or was interrupted: on a shared cluster the remaining tasks would
                # otherwise go on using its CPUs for results nobody collects
                _cancel_all(pending)
                raise
        finally:
            if started_here:
                ray.shutdown()


def _cancel_all(refs: list[Any], rounds: int = 3) -> None:
    """Force-cancel Ray tasks, again for any still running a moment later (a cancel that races with a
    task being handed to a starting worker can miss it)."""
    import ray

    for _ in range(rounds):
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
        _, refs = ray.wait(refs, num_returns=len(refs), timeout=2.0)
        if not refs:
            return


def make_executor(name: str, *, workers: int | None = None, address: str | None = None) -> Any:
    """The executor called ``name`` (``local`` or ``ray``). ``workers``: local processes (default: one
    per CPU core; 1 runs in-process), or the CPUs of a local Ray instance (default all). ``address``: a Ray
    cluster to join (default ``RAY_ADDRESS`` when set)."""
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if name == "local":
        if address:
            raise UserError("--address only applies to --executor ray")
        return LocalExecutor(workers or os.cpu_count() or 1)
    if name == "ray":
        address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own convention, as datacheck audit's
        if address and workers:
            raise UserError("--workers sizes a local Ray instance; a cluster (--address) brings its own CPUs")
        return RayExecutor(address=address, num_cpus=workers)
    raise UserError(f"unknown executor {name!r}; expected one of: local, ray")
