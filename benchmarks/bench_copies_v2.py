"""Copy detection per edit kind, on a redundant and a non-redundant training set of real photo crops.

Planting: ``--per-kind`` copies (default 25) of random training items for each of nine edits (exact, JPEG
q75, brightness +8, one-pixel shift, Gaussian noise sigma 4 and sigma 8, Gaussian blur sigma 0.6, hue
rotated by 20 degrees, a 4% re-crop resized back) plus two colour edits (desaturated to gray, gray
original made colour), mixed among real held-out crops the detector never saw; a further set of real
held-out crops is the ``heldout`` argument. Printed per training set: recall per kind (the planted copy
reported with its own training item or a member of its duplicate group), the share of real crops in the
fake set flagged, the held-out rate, the seconds and the kinds the rows carry.

Training sets (scikit-learn's two sample photos, `make_patches.py`):

* redundant: 32x32 crops on a 16-px stride (neighbours overlap by half; sky and blurred backgrounds make
  many crops look alike), 70% training, the rest real held-out crops;
* non-redundant: the crops on a 32-px stride are the training set; crops on the same stride offset by
  (16, 16) px are the real held-out crops.

    python benchmarks/bench_copies_v2.py [--per-kind 25] [--seed 0]

Run it with ``PYTHONPATH`` pointing at another checkout to measure that checkout's ``find_copies``.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

EXPECTED = {"exact": "exact", "jpeg75": "re-encoded", "brightness+8": "brightness/contrast", "shift1": "shifted/re-cropped",
            "noise4": "noisy", "noise8": "noisy", "blur0.6": "blurred", "hue20": "recoloured", "recrop4": "shifted/re-cropped",
            "gray": "grayscale", "colourised": "colourised"}  # the kind a row should name
KINDS = ("exact", "jpeg75", "brightness+8", "shift1", "noise4", "noise8", "blur0.6", "hue20", "recrop4",
         "gray", "colourised")


def edit(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One planted edit of a uint8 (3, H, W) image (same shape out)."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    hwc = img.transpose(1, 2, 0)
    back = lambda a: np.asarray(a, np.uint8).transpose(2, 0, 1).copy()  # noqa: E731
    clip = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)  # noqa: E731
    if kind == "exact":
        return img.copy()
    if kind == "jpeg75":
        buf = io.BytesIO()
        Image.fromarray(hwc).save(buf, "JPEG", quality=75)
        return back(Image.open(buf).convert("RGB"))
    if kind == "brightness+8":
        return clip(img.astype(np.float32) + 8)
    if kind == "shift1":
        axis, d = int(rng.integers(1, 3)), int(rng.choice([-1, 1]))
        out = np.roll(img, d, axis)
        sl = [slice(None)] * 3
        sl[axis] = 0 if d > 0 else -1  # edge replicated, not wrapped
        src = [slice(None)] * 3
        src[axis] = 1 if d > 0 else -2
        out[tuple(sl)] = out[tuple(src)]
        return out
    if kind in ("noise4", "noise8"):
        return clip(img + rng.normal(0, float(kind[5:]), img.shape))
    if kind == "blur0.6":
        return clip(gaussian_filter(img.astype(np.float32), (0, 0.6, 0.6), mode="nearest"))
    if kind == "hue20":
        hsv = np.asarray(Image.fromarray(hwc).convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(int) + int(rng.choice([-1, 1])) * 14) % 256  # 20 of 360 degrees
        return back(Image.fromarray(hsv, "HSV").convert("RGB"))
    if kind == "recrop4":
        h, w = img.shape[1:]
        s = 0.96
        x, y = rng.uniform(0, w * (1 - s)), rng.uniform(0, h * (1 - s))
        return back(Image.fromarray(hwc).resize((w, h), Image.BILINEAR, box=(x, y, x + w * s, y + h * s)))
    if kind == "gray":
        g = np.asarray(Image.fromarray(hwc).convert("L"))
        return np.repeat(g[None], 3, 0)
    if kind == "colourised":  # the training item is gray (see `planted`); the copy is tinted sepia
        g = img[0].astype(np.float32)
        return clip(np.stack([g * 1.07 + 10, g * 0.95 + 4, g * 0.78]))
    raise ValueError(kind)


def training_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (train (N, 3, 32, 32), real held-out crops (M, 3, 32, 32))."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_patches import patches
    from sklearn.datasets import load_sample_images

    x16 = patches(stride=16)[0].transpose(0, 3, 1, 2)
    perm = np.random.default_rng(1).permutation(len(x16))
    n_tr = int(0.7 * len(x16))
    x32 = patches(stride=32)[0].transpose(0, 3, 1, 2)
    off = np.stack([p[y : y + 32, x : x + 32] for p in load_sample_images().images
                    for y in range(16, p.shape[0] - 31, 32) for x in range(16, p.shape[1] - 31, 32)]).transpose(0, 3, 1, 2)
    return {"redundant (stride 16)": (x16[perm[:n_tr]].copy(), x16[perm[n_tr:]].copy()),
            "non-redundant (stride 32)": (x32.copy(), off.copy())}


def planted(train: np.ndarray, real: np.ndarray, per_kind: int, rng: np.random.Generator):
    """(train, fake, heldout, sources (K,), kinds (K,)): the copies come first in ``fake``, then as many
    real crops as copies (at most half of ``real``); ``heldout`` is the rest of ``real``. Sources of the
    colourised copies are turned gray in the training set first (a gray original)."""
    train = train.copy()
    kinds = [k for k in KINDS for _ in range(per_kind)]
    src = rng.choice(len(train), len(kinds), replace=False)
    for j, k in zip(src, kinds):
        if k == "colourised":
            train[j] = edit(train[j], "gray", rng)
    copies = np.stack([edit(train[j], k, rng) for j, k in zip(src, kinds)])
    n_real = min(len(kinds), len(real) // 2)
    order = rng.permutation(len(real))
    fake = np.concatenate([copies, real[order[:n_real]]])
    return train, fake, real[order[n_real:]], src, np.array(kinds)


def run(name: str, train: np.ndarray, real: np.ndarray, per_kind: int, seed: int) -> dict:
    import datacheck
    from datacheck.checks.duplicates import near_duplicate_pairs

    rng = np.random.default_rng(seed)
    train, fake, held, src, kinds = planted(train, real, per_kind, rng)
    ds = lambda x, p: datacheck.Dataset(x, np.full(len(x), -1), [f"{p}{i}" for i in range(len(x))])  # noqa: E731
    t = time.perf_counter()
    df = datacheck.find_copies(ds(fake, "f"), ds(train, "t"), ds(held, "h"), seed=seed)
    secs = time.perf_counter() - t
    s = df.attrs["summary"]
    group = near_duplicate_pairs(ds(train, "t")).group
    tpos = {f"t{i}": i for i in range(len(train))}
    rows = {r.fake_id: r for r in df.itertuples(index=False)}
    hit = np.zeros(len(src), bool)
    got_kind = []
    for i, j in enumerate(src):
        r = rows.get(f"f{i}")
        if r is not None:
            k = tpos[r.train_id]
            hit[i] = k == j or (group[j] >= 0 and group[k] == group[j])
            got_kind.append(r.kind)
        else:
            got_kind.append("-")
    n_real = len(fake) - len(src)
    real_flagged = sum(1 for f in df.fake_id if int(f[1:]) >= len(src)) / max(n_real, 1)
    recall = {k: float(hit[kinds == k].mean()) for k in KINDS}
    shown = {k: max(set(v := [g for g, kk in zip(got_kind, kinds) if kk == k]), key=v.count) for k in KINDS}
    named = {k: np.mean([g == EXPECTED[k] for g, kk, h in zip(got_kind, kinds, hit) if kk == k and h] or [0.0]) for k in KINDS}
    print(f"{name}: {len(train)} training, {len(src)} planted + {n_real} real crops in the fake set, "
          f"{len(held)} held-out; {secs:.1f} s")
    print("  recall  " + ", ".join(f"{k} {v:.2f}" for k, v in recall.items()))
    print(f"  nine-edit recall {np.mean([recall[k] for k in KINDS[:9]]):.3f}; real crops in the fake set flagged "
          f"{real_flagged:.4f} ({round(real_flagged * n_real)} of {n_real}); held-out flagged "
          f"{s.get('heldout_rate', float('nan')):.4f} of {s.get('n_heldout')}")
    print("  most common kind shown  " + ", ".join(f"{k}: {v}" for k, v in shown.items()))
    print("  share of found copies naming the planted kind  " + ", ".join(f"{k} {v:.2f}" for k, v in named.items()))
    return {"recall": recall, "named": named, "real_flagged": real_flagged, "heldout_rate": s.get("heldout_rate"), "seconds": secs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-kind", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=("redundant", "non-redundant"), default=None)
    args = ap.parse_args(argv)
    import datacheck

    print(f"datacheck from {Path(datacheck.__file__).parent}")
    for name, (train, real) in training_sets().items():
        if args.only is None or name.split(" ")[0] == args.only:
            run(name, train, real, args.per_kind, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
