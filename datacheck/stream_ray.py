"""The streaming audit's per-image stage on Ray (``datacheck audit --executor ray``).

The files are cut into shards of `SHARD_FILES` paths; each shard is one Ray task that decodes and
measures its files (`datacheck.stream.measure_file`, exactly as the local pool does) and returns the
small per-file results. Plain lists of paths, not ``ray.data.read_images``: listing and path
resolution stay with the driver, which already has the listing. At most `WINDOW_PER_CPU` shards per
cluster CPU are in flight and results are consumed in order, so the driver holds a bounded window and
writes the same store, in the same order, as a local run.

``RAY_ADDRESS`` (e.g. ``ray://head:10001`` or ``auto``) joins a running cluster, whose workers must have
datamatters installed and see the files at the same paths (a shared filesystem); unset, a local Ray
instance is started with the CPUs this process may use (``--workers``).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterator, Sequence

from .errors import UserError
from .stream_cache import Measured

log = logging.getLogger(__name__)

#: files per Ray task (a task's overhead is milliseconds; a shard of small images takes about a second)
SHARD_FILES = 256
#: shards in flight per cluster CPU
WINDOW_PER_CPU = 2
#: a task whose worker died is retried this many times
MAX_RETRIES = 3


def measure_all_ray(paths: Sequence[str], kw: dict[str, Any], workers: int | None, measure: Callable[..., list[Measured]],
                    bar: Any = None, *, address: str | None = None) -> Iterator[Measured]:
    """``measure(jobs)`` (`datacheck.stream._measure_batch`: each path's `Measured`) of every path, in
    order, as Ray tasks of `SHARD_FILES` files."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'datamatters[ray]'") from None
    started_here = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            from .sources import _cpu_count

            ray.init(num_cpus=workers or _cpu_count(), include_dashboard=False, log_to_driver=False)
        started_here = True
    pending: list[Any] = []
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(measure)
        shards = iter(range(0, len(paths), SHARD_FILES))
        window = cpus * WINDOW_PER_CPU
        for s in shards:
            pending.append(remote.remote([(p, kw) for p in paths[s : s + SHARD_FILES]]))
            if len(pending) >= window:
                break
        log.info("measuring %d files as Ray tasks of %d on %d CPUs", len(paths), SHARD_FILES, cpus)
        while pending:
            res = ray.get(pending.pop(0))  # in order: the store is written in listing order
            nxt = next(shards, None)
            if nxt is not None:
                pending.append(remote.remote([(p, kw) for p in paths[nxt : nxt + SHARD_FILES]]))
            yield from res
            if bar is not None:
                bar.update(len(res))
    finally:
        for ref in pending:  # stopped early (an error, an interrupt): free the cluster's CPUs
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
        if started_here:
            ray.shutdown()
