"""Which worker pool decodes a folder of small PNGs fastest? (serial vs threads vs processes)

Usage: python benchmarks/bench_decode_pool.py [N [SIDE]]   (N random SIDExSIDE PNGs, defaults 3000 and 32)
Prints seconds for each and the ratio against serial decoding measured in the same run.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
from PIL import Image

from datacheck.decode import decode_job


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    side = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        jobs = []
        for i in range(n):
            p = os.path.join(d, f"{i:05d}.png")
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(p)
            jobs.append((p, 64_000_000, None, "bilinear", False))
        t = time.perf_counter(); [decode_job(j) for j in jobs]; serial = time.perf_counter() - t
        print(f"serial            {serial:6.2f} s  (1.00x)")
        with ThreadPoolExecutor(2) as ex:
            t = time.perf_counter(); list(ex.map(decode_job, jobs, chunksize=64)); s = time.perf_counter() - t
        print(f"threads x2        {s:6.2f} s  ({serial / s:.2f}x)")
        for method in ("fork", "forkserver", "spawn"):
            t = time.perf_counter()  # pool start-up included: the loader pays it too
            with ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as ex:
                list(ex.map(decode_job, jobs, chunksize=64))
            s = time.perf_counter() - t
            print(f"processes x2 {method:10s} {s:6.2f} s  ({serial / s:.2f}x)")


if __name__ == "__main__":
    main()
