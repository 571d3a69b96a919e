"""The data factors that change a training set's size, duplication, labels, images or class mix
(registered in `reports.factors`; what each level means is in `reports.factors.base`)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError

from .base import _count, _fraction, _register, conditional


# ---------------------------------------------------------------------------- size
def stratified_take(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``k`` items drawn without replacement so each class keeps its share
    (largest-remainder rounding; unlabeled items form their own stratum). Sorted."""
    n = len(labels)
    if k >= n:
        return np.arange(n)
    strata = np.unique(labels)
    members = [np.flatnonzero(labels == s) for s in strata]
    quota = np.array([len(m) * k / n for m in members])
    take = np.floor(quota).astype(int)
    rest = k - take.sum()
    # remainders broken by a seeded random tie-break, so the result does not depend on class order
    order = np.lexsort((rng.random(len(strata)), -(quota - take)))
    take[order[:rest]] += 1
    picked = [rng.choice(m, size=t, replace=False) for m, t in zip(members, take) if t]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


@_register("size", 1.0, "fraction of items kept (a number > 1 is a count), stratified by class",
           levels=(lambda lv: lv > 0 and (lv <= 1 or lv == int(lv)), "a fraction in (0, 1] or a whole count"),
           default_levels=(0.5, 0.25, 0.1), axis="fraction of the training set kept",
           phrase="Keeping {pct} of the training data", metrics=("fid", "recall", "ct_score"), panels=("ct_score",),
           log_scale=True)
def _size(ds: Dataset, level: float, rng: np.random.Generator) -> tuple[Dataset, dict[str, Any]]:
    n = len(ds)
    if level <= 0:
        raise UserError(f"level for factor 'size' must be > 0 (a fraction <= 1 or a count), got {level}")
    k = _count(level, n) if level <= 1.0 else int(level)
    if level > 1.0 and (level != int(level) or k > n):
        raise UserError(f"a count for factor 'size' must be a whole number <= {n}, got {level}")
    k = max(k, 1)
    keep = stratified_take(ds.labels, k, rng)
    dropped = np.setdiff1d(np.arange(n), keep)
    new = ds.subset(keep)
    return new, {
        "changed": int(len(dropped)),
        "kept": int(len(keep)),
        "removed_ids": [ds.ids[i] for i in dropped],
        "class_counts": new.class_counts(),
    }


# ---------------------------------------------------------------------------- duplicates
def _near_copy(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A near duplicate of one uint8 (C, H, W) image: a one-pixel shift, mild noise or a brightness change."""
    x = img.astype(np.float32)
    if kind == "shift":
        dy, dx = [(0, 1), (1, 0), (0, -1), (-1, 0)][int(rng.integers(4))]
        x = np.roll(x, (dy, dx), axis=(1, 2))
        if dy:  # zero-fill the wrapped row/column instead of wrapping content around
            x[:, 0 if dy > 0 else -1, :] = 0
        if dx:
            x[:, :, 0 if dx > 0 else -1] = 0
    elif kind == "noise":
        x = x + rng.normal(0.0, 6.0, x.shape)
    elif kind == "brightness":
        x = x * float(rng.uniform(0.85, 1.15))
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


NEAR_KINDS = ("shift", "noise", "brightness")


def _plant_duplicates(ds: Dataset, slots: np.ndarray, rng: np.random.Generator, per_source: int,
                      exact_share: float, exclude: np.ndarray | None = None) -> tuple[Dataset, dict[str, Any]]:
    """Replace the items at ``slots`` by copies of a few source items (not in ``slots`` or ``exclude``)."""
    n = len(ds)
    k = len(slots)
    if k == 0:
        return ds, {"changed": 0, "sources": [], "copies": []}
    n_src = max(1, math.ceil(k / max(per_source, 1)))
    banned = np.zeros(n, bool)
    banned[slots] = True
    if exclude is not None:
        banned[exclude] = True
    pool = np.flatnonzero(~banned)
    if len(pool) < n_src:
        raise UserError(f"cannot plant {k} duplicates in {n} items: too few items left to copy from")
    sources = np.sort(rng.choice(pool, size=n_src, replace=False))
    images = ds.images.copy()
    labels = ds.labels.copy()
    ids = list(ds.ids)
    copies = []
    # each source gets an equal share of the slots (the first ones one more)
    assign = sources[np.arange(k) % n_src]
    rng.shuffle(assign)
    n_exact = int(round(exact_share * k))
    kinds = ["exact"] * n_exact + [NEAR_KINDS[i % len(NEAR_KINDS)] for i in range(k - n_exact)]
    kinds = [kinds[i] for i in rng.permutation(k)]
    for j, (slot, src, kind) in enumerate(zip(slots, assign, kinds)):
        src_img = ds.images[src]
        images[slot] = src_img if kind == "exact" else _near_copy(src_img, kind, rng)
        labels[slot] = ds.labels[src]
        copies.append({"index": int(slot), "old_id": ds.ids[slot], "old_label": int(ds.labels[slot]),
                       "source_index": int(src), "source_id": ds.ids[src], "kind": kind})
        ids[slot] = f"{ds.ids[src]}~dup{j}"  # ids stay unique and say what the item is a copy of
    new = ds.replace(images=images, labels=labels, ids=tuple(ids))
    return new, {"changed": k, "sources": [ds.ids[s] for s in sources], "copies": copies,
                 "exact": n_exact, "near": k - n_exact}


@_register("duplicates", 0.0, "fraction of items replaced by exact and near copies of a few items",
           default_levels=(0.2, 0.5), axis="fraction replaced by copies",
           phrase="Replacing {pct} of the training set by copies of a few images",
           metrics=("fid", "memorization", "ct_score"), panels=("ct_score",))
def _duplicates(ds: Dataset, level: float, rng: np.random.Generator, per_source: int = 25,
                exact_share: float = 0.5) -> tuple[Dataset, dict[str, Any]]:
    """Replace ``level`` of the items by copies of ceil(k / per_source) source items; half exact,
    half near (one-pixel shift, mild noise, brightness)."""
    k = _count(_fraction(level, "duplicates"), len(ds))
    slots = np.sort(rng.choice(len(ds), size=k, replace=False))
    return _plant_duplicates(ds, slots, rng, per_source, exact_share)


@_register("dup_dose", 1.0, "copies of each of m source images (the unique set stays fixed; m=5 by default)",
           levels=((lambda lv: lv >= 1 and lv == int(lv)), "a whole multiplicity >= 1"),
           default_levels=(8.0, 32.0, 128.0), axis="copies of each source (k)",
           phrase="Each duplicated source present {ratio} times (the unique set fixed)",
           metrics=("dup_source_share", "fid"), panels=("dup_source_share", "dup_excess"), log_scale=True,
           copy_test="dup_excess")
def _dup_dose(ds: Dataset, level: float, rng: np.random.Generator, m: int = 5,
              near: bool = False) -> tuple[Dataset, dict[str, Any]]:
    """Duplication as a dose: ``m`` source items (seeded) each present ``level`` times; every other item
    is untouched, so only the multiplicity changes between levels. Copies are exact, or near copies
    (one-pixel shift, mild noise, brightness) with ``near=True``."""
    k, m = int(level), int(m)
    if not 1 <= m <= len(ds):
        raise UserError(f"dup_dose needs 1 <= m <= {len(ds)} source images, got m={m}")
    src = np.sort(rng.choice(len(ds), size=m, replace=False))
    reps = np.repeat(src, k - 1)
    imgs = ds.images[reps].copy()
    if near:
        for j in range(len(imgs)):
            imgs[j] = _near_copy(imgs[j], NEAR_KINDS[j % len(NEAR_KINDS)], rng)
    ids = [f"{ds.ids[i]}#dose{j}" for j, i in enumerate(reps)]
    new = ds.replace(images=np.concatenate([ds.images, imgs]), labels=np.concatenate([ds.labels, ds.labels[reps]]),
                     ids=tuple(ds.ids) + tuple(ids),
                     orig_sizes=np.concatenate([ds.orig_sizes, ds.orig_sizes[reps]]),
                     orig_modes=tuple(ds.orig_modes) + tuple(ds.orig_modes[i] for i in reps))
    return new, {"changed": int(len(reps)), "dup_sources": [ds.ids[i] for i in src], "multiplicity": k,
                 "m": m, "near": bool(near)}


# ---------------------------------------------------------------------------- label noise
@_register("label_noise", 0.0, "fraction of labels flipped (symmetric, or class-pair with mode='pair')",
           needs_labels=True, applies=conditional, scope="cond. only", default_levels=(0.2, 0.5),
           axis="fraction of labels flipped", phrase="Flipping {pct} of the labels",
           metrics=("label_agreement", "fid"), panels=("label_agreement",))
def _label_noise(ds: Dataset, level: float, rng: np.random.Generator, mode: str = "symmetric",
                 pairs: dict[int, int] | None = None) -> tuple[Dataset, dict[str, Any]]:
    """Flip ``level`` of the labeled items' labels. ``symmetric``: to a uniformly drawn other class;
    ``pair``: class c -> pairs[c] (default c -> c+1 mod K), the asymmetric case."""
    if mode not in ("symmetric", "pair"):
        raise UserError(f"label_noise mode must be 'symmetric' or 'pair', got {mode!r}")
    labeled = np.flatnonzero(ds.labels >= 0)
    k_classes = max(ds.n_classes, int(ds.labels.max(initial=-1)) + 1)
    if k_classes < 2:
        raise UserError("label_noise needs at least two classes")
    k = _count(_fraction(level, "label_noise"), len(labeled))
    idx = np.sort(rng.choice(labeled, size=k, replace=False))
    old = ds.labels[idx]
    if mode == "symmetric":
        new_l = (old + rng.integers(1, k_classes, size=k)) % k_classes  # never the same class
    else:
        mapping = {c: (c + 1) % k_classes for c in range(k_classes)}
        mapping.update({int(a): int(b) for a, b in (pairs or {}).items()})
        new_l = np.array([mapping[int(c)] for c in old], np.int64)
    labels = ds.labels.copy()
    labels[idx] = new_l
    flips = [{"index": int(i), "id": ds.ids[i], "old": int(o), "new": int(nw)}
             for i, o, nw in zip(idx, old, new_l)]
    return ds.replace(labels=labels), {"changed": int((new_l != old).sum()), "mode": mode, "flips": flips}


# ---------------------------------------------------------------------------- corruption
CORRUPTIONS = ("noise", "blur", "blank", "pure_noise")


def corrupt_image(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One corrupted copy of a uint8 (C, H, W) image."""
    x = img.astype(np.float32)
    if kind == "noise":  # heavy Gaussian noise, sigma a quarter of the range
        x = x + rng.normal(0.0, 64.0, x.shape)
    elif kind == "blur":
        from scipy.ndimage import gaussian_filter

        sigma = max(1.0, x.shape[-1] / 8.0)  # 1 px on 8x8 digits: the strokes merge
        x = gaussian_filter(x, sigma=(0, sigma, sigma), mode="nearest")
    elif kind == "blank":  # a constant image at a random gray
        x = np.full_like(x, float(rng.integers(0, 256)))
    elif kind == "pure_noise":
        x = rng.integers(0, 256, x.shape).astype(np.float32)
    else:
        raise UserError(f"unknown corruption {kind!r}; expected one of: {', '.join(CORRUPTIONS)}")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _plant_corruption(ds: Dataset, idx: np.ndarray, rng: np.random.Generator,
                      kinds: tuple[str, ...]) -> tuple[Dataset, dict[str, Any]]:
    images = ds.images.copy()
    order = rng.permutation(len(idx))
    items = []
    for j, i in enumerate(idx):
        kind = kinds[order[j] % len(kinds)]  # kinds in equal shares, assigned at random
        images[i] = corrupt_image(ds.images[i], kind, rng)
        items.append({"index": int(i), "id": ds.ids[i], "kind": kind})
    counts = {k: sum(1 for it in items if it["kind"] == k) for k in kinds}
    return ds.replace(images=images), {"changed": len(idx), "corrupted": items, "kinds": counts}


@_register("corruption", 0.0, "fraction of images corrupted (Gaussian noise, blur, blanking, pure noise)",
           default_levels=(0.2, 0.4), axis="fraction of images corrupted", phrase="Corrupting {pct} of the images",
           metrics=("fid", "precision"))
def _corruption(ds: Dataset, level: float, rng: np.random.Generator,
                kinds: tuple[str, ...] | list[str] = CORRUPTIONS) -> tuple[Dataset, dict[str, Any]]:
    kinds = tuple(kinds)
    for k in kinds:
        if k not in CORRUPTIONS:
            raise UserError(f"unknown corruption {k!r}; expected one of: {', '.join(CORRUPTIONS)}")
    k = _count(_fraction(level, "corruption"), len(ds))
    idx = np.sort(rng.choice(len(ds), size=k, replace=False))
    return _plant_corruption(ds, idx, rng, kinds)


# ---------------------------------------------------------------------------- imbalance
def long_tail_counts(n_max: int, n_classes: int, ratio: float) -> np.ndarray:
    """Exponential profile n_max * ratio^(-i / (K - 1)) for ranks i = 0..K-1, rounded, at least 1."""
    i = np.arange(n_classes)
    return np.maximum(1, np.rint(n_max * ratio ** (-i / max(n_classes - 1, 1)))).astype(int)


@_register("imbalance", 1.0, "largest/smallest class-count ratio of an exponential long tail",
           needs_labels=True, levels=(lambda lv: math.isfinite(lv) and lv >= 1, "a largest/smallest ratio >= 1"),
           default_levels=(5.0, 20.0), axis="largest/smallest class ratio", phrase="A {ratio}:1 long-tailed class mix",
           metrics=("mode_kl", "fid"), panels=("mode_kl",), log_scale=True)
def _imbalance(ds: Dataset, level: float, rng: np.random.Generator) -> tuple[Dataset, dict[str, Any]]:
    """Subsample classes to an exponential long tail with largest/smallest ratio ``level``.

    The head class (chosen at random by the seed, as is the order of the rest) keeps as many items
    as the smallest class has, so every class can meet its target; the set therefore shrinks
    (recorded as ``n_after``)."""
    if level < 1:
        raise UserError(f"level for factor 'imbalance' is a largest/smallest ratio >= 1, got {level}")
    classes = np.unique(ds.labels[ds.labels >= 0])
    if len(classes) < 2:
        raise UserError("imbalance needs at least two classes")
    avail = np.array([(ds.labels == c).sum() for c in classes])
    n_max = int(avail.min())
    target = long_tail_counts(n_max, len(classes), level)
    order = rng.permutation(classes)  # order[rank] = class
    keep = []
    per_class = {}
    for rank, c in enumerate(order):
        members = np.flatnonzero(ds.labels == c)
        keep.append(rng.choice(members, size=int(target[rank]), replace=False))
        per_class[ds.class_names[c] if c < ds.n_classes else str(int(c))] = int(target[rank])
    keep.append(np.flatnonzero(ds.labels < 0))  # unlabeled items are left alone
    keep_idx = np.sort(np.concatenate(keep))
    new = ds.subset(keep_idx)
    achieved = float(target.max() / target.min())
    return new, {"changed": int(len(ds) - len(keep_idx)), "head_to_tail": [int(c) for c in order],
                 "class_counts": per_class, "ratio_achieved": achieved}
