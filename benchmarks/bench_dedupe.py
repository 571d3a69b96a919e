"""Near-duplicate search at scale: pHash + multi-index hashing vs a plain all-pairs numpy search.

Run: ``python benchmarks/bench_dedupe.py [--n 100000] [--size 32]``

Makes N synthetic RGB images (smooth random patterns) with 1% planted near-duplicates (JPEG,
brightness/contrast, noise, one-pixel shift), then times, in the same run:

* hashing (pHash of every image, plus the four one-pixel-shifted copies that small images query);
* candidate search within Hamming radius 11 by multi-index hashing (4 bands of 16 bits), with and
  without the shifted queries (radius 7, the engine's default);
* the reference: blocked all-pairs XOR + ``np.bitwise_count`` on the same hashes and radius (its
  pair set must equal the multi-index one -- checked);
* the full ``near_duplicate_pairs`` engine (calibration + verification + groups) and its recall on
  the planted pairs;
* ``run_checks`` on digits (every registered check);
* light, blurry and grayscale-stored-as-RGB-JPEG images planted 200 each among 1,000 drawn 64x64
  RGB images (where CleanVision found 0/200, 16/200 and 0/200): found and precision.
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np

from datacheck import Dataset, hashing, load
from datacheck.checks import run_checks
from datacheck.checks.duplicates import hash_queries, near_duplicate_pairs


def make_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (n, 3, size, size): random 6x6 color fields upsampled (smooth blobs) plus fine texture."""
    out = np.empty((n, 3, size, size), np.uint8)
    for s in range(0, n, 8192):
        m = min(8192, n - s)
        coarse = rng.uniform(0, 255, (m, 3, 6, 6)).astype(np.float32)
        fine = rng.normal(0, 12, (m, 1, size, size)).astype(np.float32)
        out[s : s + m] = np.clip(hashing.resize(coarse, (size, size)) + fine, 0, 255).astype(np.uint8)
    return out


def plant(images: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Overwrite the last k images with edited copies of k distinct earlier ones; return (k, 2) pairs."""
    from PIL import Image

    n = len(images)
    src = rng.choice(n - k, k, replace=False)
    dst = np.arange(n - k, n)
    for j, (a, b) in enumerate(zip(src, dst)):
        im = images[a]
        kind = j % 4
        if kind == 0:
            buf = io.BytesIO()
            Image.fromarray(im.transpose(1, 2, 0)).save(buf, "JPEG", quality=80)
            im = np.asarray(Image.open(buf)).transpose(2, 0, 1)
        elif kind == 1:
            im = np.clip(im * 0.85 + 20, 0, 255)
        elif kind == 2:
            im = np.clip(im + rng.normal(0, 4, im.shape), 0, 255)
        else:
            im = np.concatenate([im[:, :, :1], im[:, :, :-1]], 2)
        images[b] = np.asarray(im).astype(np.uint8)
    return np.stack([src, dst], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--radius", type=int, default=11)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-reference", action="store_true", help="skip the O(N^2) all-pairs search")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    t = time.perf_counter()
    images = make_images(args.n, args.size, rng)
    planted = plant(images, args.n // 100, rng)
    print(f"made {args.n} images {images.shape[1:]} with {len(planted)} planted near-duplicates in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    h, hq = hash_queries(images, shift=True)
    t_hash = time.perf_counter() - t
    t = time.perf_counter()
    h_only = hashing.phash(images)
    t_hash_plain = time.perf_counter() - t
    assert np.array_equal(h, h_only)

    t = time.perf_counter()
    mih = hashing.hamming_pairs(h, args.radius)
    t_mih = time.perf_counter() - t
    t = time.perf_counter()
    mih_shift = hashing.hamming_pairs(h, args.radius, queries=hq, query_radius=7)
    t_mih_shift = time.perf_counter() - t
    print(f"pHash of {args.n} images: {t_hash_plain:.1f} s (with 4 shifted copies: {t_hash:.1f} s)")
    print(f"multi-index search, radius {args.radius}: {t_mih:.1f} s, {len(mih)} pairs; "
          f"with shifted queries (radius 7, as the engine): {t_mih_shift:.1f} s, {len(mih_shift)} pairs")
    print(f"hashing + candidate search (plain): {t_hash_plain + t_mih:.1f} s; with shifts: {t_hash + t_mih_shift:.1f} s")

    if not args.skip_reference:
        t = time.perf_counter()
        ref = hashing.hamming_pairs_bruteforce(h, args.radius, block=256)
        t_ref = time.perf_counter() - t
        same = np.array_equal(ref, mih)
        print(f"all-pairs numpy search (XOR + bitwise_count, blocked): {t_ref:.1f} s, {len(ref)} pairs, identical: {same}")
        print(f"ratio all-pairs / multi-index: {t_ref / t_mih:.1f}x (search only); "
              f"{(t_hash_plain + t_ref) / (t_hash_plain + t_mih):.1f}x including hashing")
        assert same, "multi-index search must return exactly the all-pairs result"

    ds = Dataset(images=images, labels=np.full(args.n, -1), ids=tuple(f"b{i}" for i in range(args.n)))
    t = time.perf_counter()
    nd = near_duplicate_pairs(ds, seed=args.seed)
    t_full = time.perf_counter() - t
    g = nd.group
    found = np.mean([g[a] >= 0 and g[a] == g[b] for a, b in planted])
    op = nd.operating_point
    print(f"full near-duplicate engine (exact keys, uniform split, calibration, shifted search, verification, groups): "
          f"{t_full:.1f} s; {op['n_candidates']} candidates, {op['n_verified_pairs']} verified pairs; "
          f"threshold {op['threshold']}, calibrated recall {op['recall']}, precision {op['precision']}; "
          f"planted pairs found: {found:.3f}; items in groups: {(g >= 0).sum()}")

    digits = load("digits")
    run_checks(digits.subset(range(50)))  # warm imports (sklearn, torch)
    t = time.perf_counter()
    res = run_checks(digits)
    print(f"run_checks on digits ({len(digits)} images, {len(res)} checks): {time.perf_counter() - t:.1f} s; "
          + ", ".join(f"{k}={v.summary['n_flagged']}" for k, v in res.items()))
    planted_quality(args.seed)


def planted_quality(seed: int) -> None:
    """200 each of light, blurry (Gaussian sigma 1.5) and gray-as-RGB JPEG among 1,600 drawings."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    n, size = 1600, 64
    yy, xx = np.mgrid[0:size, 0:size]
    imgs = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):  # colored rectangles and discs on a colored background
        img = np.ones((3, size, size)) * rng.uniform(30, 225, (3, 1, 1))
        for _ in range(rng.integers(3, 7)):
            cy, cx = rng.uniform(0, size, 2)
            r = rng.uniform(size / 10, size / 3)
            m = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r) if rng.random() < 0.5 else (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            img = np.where(m, rng.uniform(0, 255, (3, 1, 1)), img)
        imgs[i] = np.clip(img + rng.normal(0, 3, img.shape), 0, 255)
    f = imgs.astype(np.float64)
    pos = rng.choice(n, 600, replace=False)
    kinds = {"light": pos[:200], "blurry": pos[200:400], "grayscale": pos[400:]}
    imgs[kinds["light"]] = np.rint(190 + f[kinds["light"]] * 0.25)
    imgs[kinds["blurry"]] = np.rint(gaussian_filter(f[kinds["blurry"]], (0, 0, 1.5, 1.5), mode="nearest"))
    for i in kinds["grayscale"]:
        buf = io.BytesIO()
        Image.fromarray(np.rint(f[i].mean(0)).astype(np.uint8)).convert("RGB").save(buf, "JPEG", quality=85)
        imgs[i] = np.asarray(Image.open(buf)).transpose(2, 0, 1)
    ds = Dataset(images=imgs, labels=np.full(n, -1), ids=tuple(f"q{i}" for i in range(n)))
    res = run_checks(ds, list(kinds))
    for name, idx in kinds.items():
        flagged = np.flatnonzero(res[name].flags)
        tp = len(np.intersect1d(flagged, idx))
        print(f"planted {name}: found {tp}/200, precision {tp / max(len(flagged), 1):.3f}")


if __name__ == "__main__":
    main()
