"""Data factors (a registry): seeded, deterministic transforms of a training `Dataset`.

Each factor is called as ``apply_factor(name, ds, level, seed=..., **options)`` and returns
``(new_dataset, manifest)``; the manifest is a JSON-able dict saying exactly what changed
(indices and ids affected, old and new labels, kinds of corruption, counts per class ...).

``level`` means, per factor (this is the ``level`` column of a study's results.csv):

- ``size``: the fraction of items kept (a number > 1 is a count), stratified by class. Baseline 1.0.
- ``duplicates``: the fraction of items replaced by copies (exact and near) of a few items. Baseline 0.
- ``label_noise``: the fraction of labels flipped (symmetric, or class-pair with ``mode="pair"``). Baseline 0.
- ``corruption``: the fraction of images corrupted (Gaussian noise, blur, blanking, pure noise). Baseline 0.
- ``imbalance``: the largest/smallest class-count ratio of an exponential long tail. Baseline 1.
- ``dirty``: the fraction affected by corruption and duplicates together (half each by default),
  i.e. ``cleaned``'s input before cleaning, so a study can compare the two directly. Baseline 0.
- ``cleaned``: ``dirty`` at the level, then everything datacheck's audit and dedupe flagged removed;
  the manifest records how many planted items were removed (recall) and how many clean ones were lost.
  Baseline 0.

The negative control (``kind="control"``), run beside the others under the same analysis plan:

- ``placebo``: 1 trains on the very same images and labels in another order (a seeded permutation of the
  training set), which changes the batches and so the trajectory, but nothing a data fix would change.
  Baseline 0. It must come out not significant; if it does, the study's other findings are suspect.

At its baseline level every factor returns the dataset unchanged. The same seed gives the same
result, byte for byte; ``dirty`` and ``cleaned`` at one level and seed plant the very same items.

Model tweaks (``kind="model"``) sit in the same registry, grid, shared baseline and report, so a
study puts changes of the model next to changes of its data at equal cost and on the same seeds; they
leave the data alone and change how the arm trains (`Factor.tweak_training`):

- ``capacity``: a width multiplier of both networks (0.5 halves the channels). Baseline 1.
- ``steps``: a training-length multiplier. Baseline 1.
- ``augment``: 1 turns DiffAugment on (color, translation, cutout; GANs only). Baseline 0.
- ``ema``: 1 samples from the raw generator instead of its EMA (models that keep one). Baseline 0.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError
from datacheck.registry import Registry

log = logging.getLogger(__name__)

FactorFn = Callable[..., "tuple[Dataset, dict[str, Any]]"]
LevelRule = tuple[Callable[[float], bool], str]  # (is this level valid, what a valid level is)

FRACTION: LevelRule = (lambda lv: 0 <= lv <= 1, "a fraction in [0, 1]")


# (model name, the arm's model options) -> does the factor apply to that model's arms
Applies = Callable[[str, "dict[str, Any]"], bool]
# (level, the arm's model options, image shape (C, H, W)) -> (new model options, steps multiplier)
Tweak = Callable[[float, "dict[str, Any]", "tuple[int, int, int]"], "tuple[dict[str, Any], float]"]


@dataclass(frozen=True)
class Factor:
    """A registered factor: its transform, its baseline level and what ``level`` means. ``kind`` is
    ``data`` (the transform changes the training set), ``model`` (the data stays; ``tweak`` changes
    the arm's model options and training length) or ``control`` (a change that should do nothing: the
    negative control). ``applies`` limits it to some models (``scope`` says
    which, for people)."""

    name: str
    fn: FactorFn
    baseline: float
    level_meaning: str
    needs_labels: bool = False
    levels: LevelRule = FRACTION
    kind: str = "data"
    applies: Applies | None = None
    tweak: Tweak | None = None
    scope: str = ""

    def applies_to(self, model: str, options: dict[str, Any]) -> bool:
        """Whether an arm of ``model`` (with these options) would differ from its baseline."""
        return self.applies is None or bool(self.applies(model, options))

    def tweak_training(self, level: float, options: dict[str, Any], shape: tuple[int, int, int],
                       steps: int) -> tuple[dict[str, Any], int]:
        """The arm's model options and steps at ``level`` (unchanged for data factors and baselines)."""
        if self.tweak is None or self.is_baseline(level):
            return dict(options), int(steps)
        new, mult = self.tweak(float(level), dict(options), tuple(shape))
        return new, max(1, int(round(steps * mult)))

    def check_level(self, level: float) -> None:
        """Raise UserError unless ``level`` is a valid level of this factor."""
        valid, want = self.levels
        if not valid(float(level)):
            raise UserError(f"level {level:g} of factor {self.name!r} is invalid; expected {want}")

    def is_baseline(self, level: float) -> bool:
        return math.isclose(float(level), self.baseline, rel_tol=0, abs_tol=1e-12)


FACTORS: Registry[Factor] = Registry("data factor")


def _register(name: str, baseline: float, meaning: str, needs_labels: bool = False,
              levels: LevelRule = FRACTION, applies: Applies | None = None,
              scope: str = "") -> Callable[[FactorFn], FactorFn]:
    def deco(fn: FactorFn) -> FactorFn:
        FACTORS.add(name, Factor(name, fn, baseline, meaning, needs_labels, levels, applies=applies, scope=scope))
        return fn
    return deco


def _conditional(model: str, options: dict[str, Any]) -> bool:
    """Models that read labels (label noise cannot reach the others)."""
    import generative

    return bool(generative.MODELS.get(model).make_config(options).conditional)


def get_factor(name: str) -> Factor:
    return FACTORS.get(name)


def apply_factor(name: str, ds: Dataset, level: float, seed: int = 0, **options: Any) -> tuple[Dataset, dict[str, Any]]:
    """Apply factor ``name`` at ``level`` to ``ds`` with ``seed``; returns (dataset, manifest)."""
    f = FACTORS.get(name)
    level = float(level)
    if not math.isfinite(level):
        raise UserError(f"level for factor {name!r} must be a finite number, got {level}")
    if f.needs_labels and not f.is_baseline(level) and not ds.labeled:
        raise UserError(f"factor {name!r} needs labeled data; {ds.source!r} has no labels")
    base = {"factor": name, "level": level, "seed": int(seed), "n_before": len(ds)}
    if f.is_baseline(level):
        return ds, {**base, "n_after": len(ds), "changed": 0, "note": "baseline level: unchanged"}
    # 'cleaned' draws like 'dirty' so that, at one level and seed, both plant the very same items
    salt = _name_salt("dirty" if name == "cleaned" else name)
    new, man = f.fn(ds, level, np.random.default_rng([int(seed), salt]), **options)
    man = {**base, **man, "n_after": len(new)}
    return new, man


def _name_salt(name: str) -> int:
    # a stable per-factor salt so two factors with one seed do not pick the same items by accident
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2**31)


def _fraction(level: float, name: str) -> float:
    if not 0.0 <= level <= 1.0:
        raise UserError(f"level for factor {name!r} is a fraction in [0, 1], got {level}")
    return level


def _count(level: float, n: int) -> int:
    return int(round(level * n))


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
           levels=(lambda lv: lv > 0 and (lv <= 1 or lv == int(lv)), "a fraction in (0, 1] or a whole count"))
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


@_register("duplicates", 0.0, "fraction of items replaced by exact and near copies of a few items")
def _duplicates(ds: Dataset, level: float, rng: np.random.Generator, per_source: int = 25,
                exact_share: float = 0.5) -> tuple[Dataset, dict[str, Any]]:
    """Replace ``level`` of the items by copies of ceil(k / per_source) source items; half exact,
    half near (one-pixel shift, mild noise, brightness)."""
    k = _count(_fraction(level, "duplicates"), len(ds))
    slots = np.sort(rng.choice(len(ds), size=k, replace=False))
    return _plant_duplicates(ds, slots, rng, per_source, exact_share)


@_register("dup_dose", 1.0, "copies of each of m source images (the unique set stays fixed; m=5 by default)",
           levels=((lambda lv: lv >= 1 and lv == int(lv)), "a whole multiplicity >= 1"))
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
           needs_labels=True, applies=_conditional, scope="cond. only")
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


@_register("corruption", 0.0, "fraction of images corrupted (Gaussian noise, blur, blanking, pure noise)")
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
           needs_labels=True, levels=(lambda lv: math.isfinite(lv) and lv >= 1, "a largest/smallest ratio >= 1"))
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


# ---------------------------------------------------------------------------- dirty / cleaned
def _dirty(ds: Dataset, level: float, rng: np.random.Generator, corrupt_share: float = 0.5,
           kinds: tuple[str, ...] | list[str] = CORRUPTIONS, per_source: int = 25,
           exact_share: float = 0.5) -> tuple[Dataset, dict[str, Any]]:
    k = _count(_fraction(level, "dirty"), len(ds))
    k_c = int(round(k * corrupt_share))
    idx = rng.permutation(len(ds))[:k]
    c_idx, d_idx = np.sort(idx[:k_c]), np.sort(idx[k_c:])
    out, man_c = _plant_corruption(ds, c_idx, rng, tuple(kinds))
    # copy sources are never corrupted items, so each planted copy is a copy of a clean image
    out, man_d = _plant_duplicates(out, d_idx, rng, per_source, exact_share, exclude=c_idx)
    return out, {"changed": k, "corrupted": man_c["corrupted"], "kinds": man_c["kinds"],
                 "sources": man_d["sources"], "copies": man_d["copies"]}


_register("dirty", 0.0, "fraction affected by corruption and duplicates (half each), before any cleaning")(_dirty)

DEFAULT_CLEAN_CHECKS = ("exact_duplicate", "near_duplicate", "dark", "light", "blurry",
                        "low_information", "noisy", "outlier")


def audit_and_remove(ds: Dataset, checks: tuple[str, ...] = DEFAULT_CLEAN_CHECKS) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Run datacheck's audit and dedupe on ``ds``; returns (keep mask, {id: [reasons]} of removed items).

    Removed: every item flagged by a non-duplicate check, and every duplicate that dedupe does not
    keep as its group's representative (one copy of each group stays)."""
    from datacheck.auditing import audit
    from datacheck.deduplication import dedupe

    from datacheck.checks import CHECKS

    reasons: dict[str, list[str]] = {}
    unknown = [c for c in checks if c not in CHECKS and c not in ("exact_duplicate", "near_duplicate")]
    if unknown:
        raise UserError(f"the cleaned factor asks for check(s) datacheck does not have: {', '.join(unknown)}; "
                        f"expected some of: {', '.join(sorted(_registered_checks()))}")
    other = tuple(c for c in checks if c not in ("exact_duplicate", "near_duplicate"))
    if other:
        findings = audit(ds, checks=list(other))
        crashed = findings.attrs.get("summary", {}).get("errors", {})
        if crashed:  # cleaning with fewer checks than asked would pass off a partial clean as the factor
            raise UserError("the cleaned factor stopped: audit check(s) crashed ("
                            + "; ".join(f"{k}: {v}" for k, v in crashed.items()) + ")")
        for rid, chk in zip(findings["id"], findings["check"]):
            reasons.setdefault(str(rid), []).append(str(chk))
    if any(c in checks for c in ("exact_duplicate", "near_duplicate")):
        dd = dedupe(ds)
        for rid, keep, why in zip(dd["id"], dd["keep"], dd["reason"]):
            if not _truthy(keep):
                reasons.setdefault(str(rid), []).append(f"duplicate:{why}")
    pos = {i: j for j, i in enumerate(ds.ids)}
    mask = np.ones(len(ds), bool)
    for rid in reasons:
        if rid in pos:
            mask[pos[rid]] = False
    return mask, reasons


def _registered_checks() -> set[str]:
    from datacheck.checks import CHECKS

    return set(CHECKS.names()) | {"exact_duplicate", "near_duplicate"}


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


@_register("cleaned", 0.0, "'dirty' at the level, then what datacheck's audit and dedupe flagged removed")
def _cleaned(ds: Dataset, level: float, rng: np.random.Generator, checks: tuple[str, ...] | list[str] = DEFAULT_CLEAN_CHECKS,
             **dirty_options: Any) -> tuple[Dataset, dict[str, Any]]:
    dirty, man = _dirty(ds, level, rng, **dirty_options)
    mask, reasons = audit_and_remove(dirty, tuple(checks))
    corrupted = {it["index"] for it in man["corrupted"]}
    copies = {it["index"] for it in man["copies"]}
    removed = set(np.flatnonzero(~mask).tolist())
    # A planted duplicate group is a source plus its copies; the ideal cleaning keeps exactly one of
    # them, and which one survives does not matter. So per group, removals up to the number of
    # copies count as copies removed, and only removals beyond that as clean items lost.
    groups: dict[int, set[int]] = {}
    for it in man["copies"]:
        groups.setdefault(it["source_index"], set()).add(it["index"])
    copies_removed = 0
    clean_lost = 0
    for src, members in groups.items():
        r = len(({src} | members) & removed)
        copies_removed += min(r, len(members))
        clean_lost += max(0, r - len(members))
    in_groups = set(groups) | copies
    clean = set(range(len(dirty))) - corrupted - copies
    clean_lost += len((clean - in_groups) & removed)
    planted = len(corrupted) + len(copies)
    by_kind: dict[str, list[int]] = {}
    for it in man["corrupted"]:
        by_kind.setdefault(it["kind"], []).append(it["index"])
    man.update({
        "checks": [c for c in checks if c in _registered_checks()],
        "removed": len(removed),
        "removed_ids": {dirty.ids[i]: reasons.get(dirty.ids[i], []) for i in sorted(removed)},
        "corrupted_planted": len(corrupted),
        "corrupted_removed": len(corrupted & removed),
        "copies_planted": len(copies),
        "copies_removed": copies_removed,
        "clean_items": len(clean),
        "clean_lost": clean_lost,
        "recall_corrupted": len(corrupted & removed) / len(corrupted) if corrupted else None,
        "recall_copies": copies_removed / len(copies) if copies else None,
        "recall": (len(corrupted & removed) + copies_removed) / planted if planted else None,
        "clean_lost_fraction": clean_lost / len(clean) if clean else 0.0,
        "recall_by_kind": {k: len(set(v) & removed) / len(v) for k, v in sorted(by_kind.items())},
    })
    return dirty.subset(mask), man


# ---------------------------------------------------------------------------- the negative control
def _placebo(ds: Dataset, level: float, rng: np.random.Generator) -> tuple[Dataset, dict[str, Any]]:
    if level not in (0.0, 1.0):
        raise UserError(f"level for factor 'placebo' is 0 or 1, got {level:g}")
    return ds.subset(rng.permutation(len(ds))), {
        "changed": 0, "kind": "control", "note": "the same images and labels in another order (negative control)"}


FACTORS.add("placebo", Factor("placebo", _placebo, 0.0, "1: the same training set in another order (negative control)",
                              levels=((lambda lv: lv in (0.0, 1.0)), "0 or 1"), kind="control"))


# ---------------------------------------------------------------------------- model tweaks
def _register_tweak(name: str, baseline: float, meaning: str, levels: LevelRule, tweak: Tweak,
                    applies: Applies | None = None, scope: str = "") -> None:
    def unchanged(ds: Dataset, level: float, rng: np.random.Generator) -> tuple[Dataset, dict[str, Any]]:
        return ds, {"changed": 0, "kind": "model", "note": f"data unchanged; the model is tweaked: {meaning}"}

    FACTORS.add(name, Factor(name, unchanged, baseline, meaning, levels=levels, kind="model", applies=applies,
                             tweak=tweak, scope=scope))


def _width(options: dict[str, Any], shape: tuple[int, int, int], key: str) -> int:
    from generative.models import auto_width

    return int(options.get(key) or auto_width(shape))


def _capacity(level: float, options: dict[str, Any], shape: tuple[int, int, int]) -> tuple[dict[str, Any], float]:
    for key in ("g_width", "d_width"):
        options[key] = max(2, int(round(_width(options, shape, key) * level)))
    return options, 1.0


def _gan(model: str, options: dict[str, Any]) -> bool:
    import generative

    return generative.MODELS.get(model).cls.family == "gan"


def _has_ema(model: str, options: dict[str, Any]) -> bool:
    import generative

    return generative.MODELS.get(model).make_config(options).ema > 0


_register_tweak("capacity", 1.0, "width multiplier of both networks (0.5 halves every layer's channels)",
                ((lambda lv: 0 < lv <= 8), "a multiplier in (0, 8]"), _capacity)
_register_tweak("steps", 1.0, "training-length multiplier", ((lambda lv: 0 < lv <= 10), "a multiplier in (0, 10]"),
                lambda lv, opts, shape: (opts, lv))
_register_tweak("augment", 0.0, "1: DiffAugment on (color, translation, cutout)",
                ((lambda lv: lv in (0.0, 1.0)), "0 or 1"),
                lambda lv, opts, shape: ({**opts, "augment": "color,translation,cutout"}, 1.0),
                applies=_gan, scope="GANs only")
_register_tweak("ema", 0.0, "1: sample from the raw generator, not its EMA", ((lambda lv: lv in (0.0, 1.0)), "0 or 1"),
                lambda lv, opts, shape: ({**opts, "ema": 0.0}, 1.0), applies=_has_ema, scope="models with an EMA")
