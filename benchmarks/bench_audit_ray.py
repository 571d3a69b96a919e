"""Throughput of the streaming audit's per-image stage (decode + measure + thumbnail), local process pool
vs Ray tasks (``datacheck audit --executor ray``), on the same folder, in one run.

    python benchmarks/bench_audit_ray.py --n 5000 --side 32 --format png [--side 256 --format jpg]

Ray's start-up (``ray.init`` of a local instance) is timed apart from the measuring. With RAY_ADDRESS
set, the Ray side runs on that cluster.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import bench_audit_scale as bas  # noqa: E402

from datacheck import stream  # noqa: E402
from datacheck.listing import list_files  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--side", type=int, default=32)
    ap.add_argument("--format", default="png", choices=("png", "jpg"))
    ap.add_argument("--dir")
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    bas.EXT = "." + a.format
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(a.dir) if a.dir else Path(tmp) / "images"
        bas.make_folder(d, a.n, a.side, 0)
        paths = list_files(str(d), "folder").paths
        th = min(a.side, 64)
        kw = {"max_pixels": 10**8, "listed": False, "thumb_hw": (th, th), "resample": "bilinear", "chunk_bytes": 384 << 20}
        res = {}
        for ex in ("local", "ray"):
            if ex == "ray":
                import ray

                t = time.perf_counter()
                ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False)
                res["ray_init_s"] = time.perf_counter() - t
            t = time.perf_counter()
            n = sum(1 for _ in stream.measure_all(paths, kw, stream.StreamOptions(executor=ex, progress=False), ex))
            res[ex] = n / (time.perf_counter() - t)
        print(f"{len(paths)} files {a.side}px {a.format}: local pool {res['local']:.0f} files/s, Ray tasks "
              f"{res['ray']:.0f} files/s (ray.init {res['ray_init_s']:.1f} s apart) on {len(os.sched_getaffinity(0))} CPUs")


if __name__ == "__main__":
    main()
