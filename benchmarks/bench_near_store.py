"""The ``near_duplicate`` check of a streamed audit with a store (`datacheck.near_store`): seconds and
peak traced memory on a first audit and on a re-audit after adding 1% new files, against the in-memory
engine (no store, what every streamed audit ran before).

Usage: python benchmarks/bench_near_store.py [--n 30000] [--side 32] [--add 0.01] [--memory] [--shared-digests]

Calls the check's engine directly on a Dataset of N synthetic textured thumbnails (smooth random colour
fields plus texture, 2% planted near copies) with a store folder and the exact groups in the context, as
`run_audit` does after streaming (the thumbnail digests are computed inside the timed call).
The new files are half near copies of old ones, half new images. With ``--memory`` each phase runs
again under tracemalloc and its peak is printed (slower; the seconds are from the untraced runs).
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from datacheck import Dataset, hashing
from datacheck.checks import CheckContext
from datacheck.checks.duplicates import cached_near_duplicates, groups_from_keys

log = logging.getLogger("bench_near_store")


def textured(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    """uint8 (n, 3, side, side): random 6x6 colour fields upsampled (bilinear) plus +-8 levels of texture."""
    small = rng.random((n, 3, 6, 6), dtype=np.float32) * 255
    out = np.empty((n, 3, side, side), np.uint8)
    for s in range(0, n, 4096):
        big = hashing.resize(small[s : s + 4096], (side, side))
        big += rng.integers(-8, 9, (len(big), 1, side, side)).astype(np.float32)
        out[s : s + 4096] = np.clip(np.rint(big), 0, 255)
    return out


def near(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.rint(x * 1.05 - 6 + rng.normal(0, 2.0, x.shape)), 0, 255).astype(np.uint8)


def make(rng: np.random.Generator, n: int, side: int, start: int, pool: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """n items: 2% (half, when ``pool`` is given) near copies of earlier items, ids numbered from ``start``."""
    imgs = textured(rng, n, side)
    frac = 0.5 if pool is not None else 0.02
    k = int(n * frac)
    src = pool if pool is not None else imgs[: n - k]
    imgs[n - k :] = near(src[rng.integers(0, len(src), k)], rng)
    return imgs, [f"{start + i:08d}.png" for i in range(n)]


def run(ds: Dataset, store: Path | None, memory: bool, shared: bool = False) -> tuple[float, float | None, dict]:
    # the streaming audit hands the checks its exact groups (full-pixel digests measured while streaming)
    exact = groups_from_keys(hashing.exact_keys(ds.images))
    digests = hashing.exact_keys(ds.images)

    def once():
        ctx = CheckContext(ds)
        ctx.feature_store = store
        ctx.cache("exact_groups", lambda: exact)
        if shared:  # the thumbnail digests already computed by the feature store (outlier, label_issue)
            ctx.cache("thumb_digests", lambda: digests)
        return cached_near_duplicates(ds, ctx, {})

    if memory:
        tracemalloc.start()
        once()
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        return 0.0, peak, {}
    t = time.perf_counter()
    nd = once()
    return time.perf_counter() - t, None, nd.operating_point


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--side", type=int, default=32)
    ap.add_argument("--add", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--shared-digests", action="store_true",
                    help="the thumbnail digests are in the context already (an audit whose features are stored)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(a.seed)
    old, old_ids = make(rng, a.n, a.side, 0, None)
    add, add_ids = make(rng, max(1, int(a.n * a.add)), a.side, a.n, old)
    lab = lambda m: np.full(m, -1)  # noqa: E731
    ds1 = Dataset(images=old, labels=lab(len(old)), ids=tuple(old_ids))
    ds2 = Dataset(images=np.concatenate([old, add]), labels=lab(len(old) + len(add)), ids=tuple(old_ids + add_ids))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, ds, store in (("in-memory engine, first set", ds1, None),
                                ("in-memory engine, grown set", ds2, None),
                                ("store: first audit", ds1, Path(tmp) / "s"),
                                ("store: re-audit +%g%%" % (100 * a.add), ds2, Path(tmp) / "s")):
            sec, _, op = run(ds, store, False, a.shared_digests)
            rows.append((name, len(ds), sec, op))
        if a.memory:
            with tempfile.TemporaryDirectory() as tmp2:
                peaks = [run(ds1, None, True)[1], run(ds2, None, True)[1], run(ds1, Path(tmp2) / "s", True)[1],
                         run(ds2, Path(tmp2) / "s", True)[1]]
        else:
            peaks = [None] * 4
    for (name, n, sec, op), peak in zip(rows, peaks):
        inc = op.get("incremental")
        mem = f", peak traced {peak:.0f} MiB" if peak is not None else ""
        log.info("%-32s N=%-7d %7.2f s%s; threshold %s%s", name, n, sec, mem, op.get("threshold"),
                 f"; {inc}" if inc else "")


if __name__ == "__main__":
    main()
