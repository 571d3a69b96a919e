"""Copy detection at scale: ``datacheck.find_copies`` on 10,000 generated-like items against 50,000
training items (32x32 RGB), beside an exhaustive reference measured in the same run.

Data: random 32x32 crops (random position, scale 0.5-1.5, horizontal flips) of scikit-learn's two
sample photos: ``--train`` training crops, and a fake set of ``--copies`` planted copies of training
crops (a quarter each identical, JPEG q75, brightness +8, shifted one pixel) plus other, fresh crops;
``--heldout`` fresh crops are the held-out set. Crops of two photos overlap and resemble each other a
lot: a hard case for any copy detector.

Reference: exhaustive nearest neighbour by correlation of the 32x32 gray images (one GEMM per block
over all pairs), flagging a copy at the same threshold find_copies calibrated. It shows what an
all-pairs search costs and finds on the same data.

    python benchmarks/bench_copies.py [--train 50000] [--fake 10000] [--copies 1000] [--heldout 2000]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np


def crops(n: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """uint8 (n, 3, size, size) random crops of the two sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    out = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        im = photos[int(rng.integers(len(photos)))]
        s = size * float(rng.uniform(0.5, 1.5))
        x, y = rng.uniform(0, im.width - s), rng.uniform(0, im.height - s)
        c = im.resize((size, size), Image.BILINEAR, box=(x, y, x + s, y + s))
        if rng.random() < 0.5:
            c = c.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(c).transpose(2, 0, 1)
    return out


def edit(img: np.ndarray, kind: int) -> np.ndarray:
    from PIL import Image

    if kind == 0:
        return img.copy()
    if kind == 1:
        buf = io.BytesIO()
        Image.fromarray(img.transpose(1, 2, 0)).save(buf, "JPEG", quality=75)
        return np.asarray(Image.open(buf).convert("RGB")).transpose(2, 0, 1)
    if kind == 2:
        return np.clip(img.astype(int) + 8, 0, 255).astype(np.uint8)
    return np.concatenate([img[:, :, :1], img[:, :, :-1]], 2)


def exhaustive(fake: np.ndarray, train: np.ndarray, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Nearest training item of each fake by correlation of 32x32 gray images, over all pairs."""
    from datacheck import hashing
    from datacheck.checks.duplicates import _normed

    t = _normed(hashing.gray(train))
    best, score = np.empty(len(fake), np.int64), np.empty(len(fake), np.float32)
    for s in range(0, len(fake), block):
        sim = _normed(hashing.gray(fake[s : s + block])) @ t.T
        best[s : s + block] = sim.argmax(1)
        score[s : s + block] = sim.max(1)
    return best, score


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--fake", type=int, default=10_000)
    ap.add_argument("--copies", type=int, default=1_000)
    ap.add_argument("--heldout", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import datacheck

    rng = np.random.default_rng(args.seed)
    t = time.perf_counter()
    train = crops(args.train, rng)
    src = rng.choice(args.train, args.copies, replace=False)
    planted = np.stack([edit(train[j], k % 4) for k, j in enumerate(src)])
    fake = np.concatenate([planted, crops(args.fake - args.copies, rng)])
    held = crops(args.heldout, rng)
    print(f"data: {args.train} training, {args.fake} fake ({args.copies} planted copies), {args.heldout} held-out "
          f"32x32 RGB crops ({time.perf_counter() - t:.0f} s to make); {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    ds = lambda x, p: datacheck.Dataset(x, np.full(len(x), -1), [f"{p}{i}" for i in range(len(x))])  # noqa: E731
    t = time.perf_counter()
    df = datacheck.find_copies(ds(fake, "f"), ds(train, "t"), ds(held, "h"))
    ours = time.perf_counter() - t
    s = df.attrs["summary"]
    found = dict(zip(df.fake_id, df.train_id))
    hit = np.array([found.get(f"f{k}") == f"t{j}" for k, j in enumerate(src)])
    fresh = sum(1 for f in df.fake_id if int(f[1:]) >= args.copies) / (args.fake - args.copies)
    print(f"find_copies: {ours:.1f} s; planted copies found with their own training item {hit.mean():.3f} "
          f"(identical {hit[0::4].mean():.3f}, JPEG q75 {hit[1::4].mean():.3f}, brightness +8 {hit[2::4].mean():.3f}, "
          f"shift {hit[3::4].mean():.3f}); fresh crops flagged {fresh:.4f}; held-out flagged {s['heldout_rate']:.4f}; "
          f"threshold {s['operating_point']['threshold']}", flush=True)
    t = time.perf_counter()
    best, score = exhaustive(fake, train)
    ref = time.perf_counter() - t
    thr = s["operating_point"]["threshold"]
    rhit = (best[: args.copies] == src) & (score[: args.copies] >= thr)
    rfresh = float((score[args.copies:] >= thr).mean())
    print(f"exhaustive gray-correlation NN: {ref:.1f} s; planted found {rhit.mean():.3f} "
          f"(JPEG {rhit[1::4].mean():.3f}, shift {rhit[3::4].mean():.3f}); fresh crops flagged {rfresh:.4f}")
    print(f"time ratio exhaustive / find_copies: {ref / ours:.2f} (find_copies includes grouping the training "
          "set, calibration and the held-out search)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
