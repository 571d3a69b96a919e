"""FID trace term tr sqrt(S1 S2) at D = 2048: reports.metrics (symmetric eigen-decomposition, and the
Gram route when N < D) against scipy.linalg.sqrtm, side by side in one run, threads = 2.

    python benchmarks/bench_fid.py             # D = 2048, covariances of 4096 samples each
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before numpy loads its BLAS
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.linalg  # noqa: E402

from reports import metrics as M  # noqa: E402


def _timed(fn, repeat: int):
    best, val = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        val = fn()
        best = min(best, time.perf_counter() - t0)
    return best, val


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--n", type=int, default=4096, help="samples behind each covariance")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(a.d, a.d)) / np.sqrt(a.d)
    x1 = np.maximum(rng.normal(size=(a.n, a.d)) @ mix, 0)  # correlated, non-negative: like CNN features
    x2 = np.maximum((rng.normal(size=(a.n, a.d)) * 1.1 + 0.1) @ mix, 0)
    _, s1 = M.feature_stats(x1)
    _, s2 = M.feature_stats(x2)
    print(f"FID trace term, D={a.d}, covariances of {a.n} samples, scipy {scipy.__version__}, "
          f"threads=2, load average {os.getloadavg()[0]:.1f}")

    def ref() -> float:
        c = scipy.linalg.sqrtm(s1 @ s2)
        c = c[0] if isinstance(c, tuple) else c
        return float(np.trace(np.real(c)))

    t_ours, v_ours = _timed(lambda: M.trace_sqrt_product(s1, s2), a.repeat)
    t_ref, v_ref = _timed(ref, a.repeat)
    print(f"  ours (eigvalsh of L' S2 L, S1 = LL') : {t_ours:7.2f} s  tr = {v_ours:.10g}")
    print(f"  scipy.linalg.sqrtm(S1 S2)          : {t_ref:7.2f} s  tr = {v_ref:.10g}")
    print(f"  speed-up {t_ref / t_ours:.2f}x, relative difference {abs(v_ours - v_ref) / abs(v_ref):.2e}")
    # the Gram route when a set has fewer samples than dimensions (e.g. 1,000 samples of 2048-d features)
    n_small = a.d // 2
    y1, y2 = x1[:n_small], x2[:n_small]
    t_gram, fid_gram = _timed(lambda: M.frechet_distance(real=y1, fake=y2), a.repeat)

    def ref_small() -> float:
        m1, m2 = y1.mean(0), y2.mean(0)
        c1, c2 = np.cov(y1, rowvar=False), np.cov(y2, rowvar=False)
        c = scipy.linalg.sqrtm(c1 @ c2)
        c = c[0] if isinstance(c, tuple) else c
        return float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(np.real(c)))

    t_small, fid_small = _timed(ref_small, 1)
    print(f"  N={n_small} < D: ours (Gram route, whole FID) {t_gram:.2f} s vs sqrtm FID {t_small:.2f} s: "
          f"{t_small / t_gram:.1f}x, FID {fid_gram:.8g} vs {fid_small:.8g}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
