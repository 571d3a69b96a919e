"""PRDC: reports.metrics.prdc (exact, blocked) against the prdc package, side by side in one run.

Each implementation runs in its own child process on the same seeded features (non-negative, like a CNN's
pooled activations), so each peak RSS (getrusage max RSS of the child) is its own. BLAS threads = 2
(prdc also starts sklearn's n_jobs=8 threads). Wall time and CPU time (all threads) are both printed: on a
shared, loaded machine a process with more threads gets a bigger share of the cores, so the CPU-time
ratio is the steadier measure of work.

    python benchmarks/bench_prdc.py [--repeat 3]        # 10,000 x 10,000, D = 2048: both, ratios of medians
    python benchmarks/bench_prdc.py --n 50000 --only ours   # the 2 GiB check
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

THREADS = "2"


def _features(n: int, d: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 4096):  # in chunks: no float64 (n, d) temporary to inflate the peak
        out[s : s + 4096] = np.maximum(rng.standard_normal((min(4096, n - s), d), np.float32) + 0.3, 0)
    return out


def child(impl: str, n: int, d: int, k: int) -> None:
    import resource

    import numpy as np

    real = _features(n, d, 0)
    fake = _features(n, d, 1) * np.float32(1.05)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    c0 = time.process_time()  # CPU seconds of all threads: the work done, whatever the machine's load
    t0 = time.perf_counter()
    if impl == "ours":
        from reports.metrics import prdc

        res = prdc(real=real, fake=fake, k=k)
    else:
        import contextlib
        import io

        from prdc import compute_prdc

        with contextlib.redirect_stdout(io.StringIO()):
            res = {key: float(v) for key, v in compute_prdc(real, fake, k).items()}
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": impl, "seconds": secs, "cpu_seconds": cpu, "peak_rss_mib": peak, "data_rss_mib": base, "result": res}))


def run_child(impl: str, n: int, d: int, k: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, OPENBLAS_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS)
    out = subprocess.run([sys.executable, __file__, "--child", impl, "--n", str(n), "--d", str(d), "--k", str(k)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--only", choices=["ours", "prdc"], default=None)
    ap.add_argument("--child", choices=["ours", "prdc"], default=None)
    ap.add_argument("--repeat", type=int, default=1, help="alternate the runs this many times; report the medians")
    a = ap.parse_args()
    if a.child:
        child(a.child, a.n, a.d, a.k)
        return
    print(f"PRDC {a.n} x {a.n}, D={a.d}, k={a.k}, threads={THREADS}, load average {os.getloadavg()[0]:.1f}")
    impls = ["ours", "prdc"] if a.only is None else [a.only]
    all_runs: dict[str, list[dict]] = {impl: [] for impl in impls}
    for _ in range(a.repeat):  # alternate, so a change in the machine's load hits both
        for impl in impls:
            r = run_child(impl, a.n, a.d, a.k)
            print(f"  run {impl}: {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} CPU s, peak RSS {r['peak_rss_mib']:.0f} MiB; "
                  f"load average {os.getloadavg()[0]:.1f})", flush=True)
            all_runs[impl].append(r)
    # medians of the wall times and of the CPU times, each taken separately; the peak RSS is the largest seen
    runs = []
    for impl in impls:
        rs = all_runs[impl]
        runs.append(dict(rs[0], seconds=statistics.median(r["seconds"] for r in rs),
                         cpu_seconds=statistics.median(r["cpu_seconds"] for r in rs),
                         peak_rss_mib=max(r["peak_rss_mib"] for r in rs),
                         same_results=all(r["result"] == rs[0]["result"] for r in rs)))
    for r in runs:
        extra = r["peak_rss_mib"] - r["data_rss_mib"]
        print(f"{r['impl']:>5}: {r['seconds']:8.1f} s ({r['cpu_seconds']:.1f} CPU s)  peak RSS {r['peak_rss_mib']:7.0f} MiB "
              f"(data alone {r['data_rss_mib']:.0f} MiB, +{extra:.0f} MiB)  {r['result']}")
    if len(runs) == 2:
        o, p = runs
        print(f"speed-up {p['seconds'] / o['seconds']:.2f}x wall, {p['cpu_seconds'] / o['cpu_seconds']:.2f}x CPU time; peak RSS ratio ours/prdc {o['peak_rss_mib'] / p['peak_rss_mib']:.2f} "
              f"(above the data: {(o['peak_rss_mib'] - o['data_rss_mib']) / (p['peak_rss_mib'] - p['data_rss_mib']):.2f}); "
              f"identical results: {o['result'] == p['result'] and o['same_results'] and p['same_results']}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
