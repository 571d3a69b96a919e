"""Duplicate-aware, label-stratified train/val/test splits.

Near-duplicate groups (connected components of the near-duplicate graph) are assigned whole, so
no image leaks across splits through a copy of itself. scikit-learn's ``GroupShuffleSplit`` is not
used because its ``test_size`` counts groups, not samples, and ``StratifiedGroupKFold`` balances
classes only approximately; instead a greedy quota assignment meets per-class sample targets:

1. every group and every singleton is a *unit* with a class-count vector;
2. units are shuffled with the seed, then multi-item groups go first, largest first (they are
   the hard part), singletons last (they fill the remaining quotas exactly);
3. each group goes to the split with the largest size-weighted relative deficit for its classes,
   among the splits it still fits into; then each class's singletons are dealt out to the splits by
   largest remainder over what each split still lacks of that class.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .dataset import Dataset
from .errors import UserError
from .sources import as_dataset

if TYPE_CHECKING:  # pandas is imported lazily: ``import datacheck`` stays fast
    import pandas as pd

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def split(source_or_dataset: str | os.PathLike | Dataset, val: float = 0.1, test: float = 0.1,
          seed: int = 0, stratify: str | None = "label", groups: Any = None) -> "pd.DataFrame":
    """Assign every item to ``train``, ``val`` or ``test``.

    Args:
        source_or_dataset: a `Dataset` or anything `datacheck.load` accepts.
        val: sample fraction of the validation split.
        test: sample fraction of the test split (train gets the rest).
        seed: the only source of randomness; the same seed gives the same assignment.
        stratify: ``"label"`` keeps each class's share in every split; ``"none"``/None ignores labels.
        groups: items that must stay together: None computes near-duplicate groups with
            `datacheck.deduplication.find_duplicate_groups`; otherwise int group ids (N,) with -1 for
            "no group", or a sequence of index lists; ``False`` disables grouping.

    Returns:
        DataFrame with one row per item in dataset order: ``id``, ``path``, ``label`` (class name,
        empty when unknown), ``split``. ``df.attrs`` holds ``fractions`` (achieved), ``n_groups``
        and ``warnings`` (also logged).
    """
    import pandas as pd

    ds = as_dataset(source_or_dataset)
    val, test = float(val), float(test)
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise UserError(f"--val and --test must be fractions >= 0 with val + test < 1, got val={val}, test={test}")
    if stratify in (None, "none"):
        stratified = False
    elif stratify == "label":
        stratified = True
    else:
        raise UserError(f"unknown stratify {stratify!r}; expected one of: label, none")
    n = len(ds)
    if groups is None:
        from .deduplication import find_duplicate_groups

        group_ids = _group_ids(find_duplicate_groups(ds, seed=seed), n)
    elif groups is False:
        group_ids = np.full(n, -1, np.int64)
    else:
        group_ids = _group_ids(groups, n)

    assign, warnings = assign_splits(ds.labels if stratified else np.zeros(n, np.int64), group_ids,
                                     (1.0 - val - test, val, test), seed=seed)
    for w in warnings:
        log.warning(w)
    labels = [ds.label_name(lab) for lab in ds.labels.tolist()]
    df = pd.DataFrame({
        "id": list(ds.ids),
        "path": [ds.path_of(i) for i in range(n)],
        "label": labels,
        "split": [SPLITS[a] for a in assign.tolist()],
    })
    counts = np.bincount(assign, minlength=3)
    df.attrs["fractions"] = {s: (float(counts[k]) / n if n else 0.0) for k, s in enumerate(SPLITS)}
    df.attrs["n_groups"] = int(len(np.unique(group_ids[group_ids >= 0])))
    df.attrs["warnings"] = warnings
    return df


def assign_splits(labels: np.ndarray, group_ids: np.ndarray, fractions: Sequence[float],
                  seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Group-aware stratified assignment.

    Args:
        labels: int64 (N,) class per item (-1 = unknown, treated as its own stratum).
        group_ids: int64 (N,) group per item, -1 = alone; items of one group share a split.
        fractions: (train, val, test) sample fractions summing to 1.
        seed: shuffles the units before the greedy pass.

    Returns:
        (assignment int64 (N,) indexing ``SPLITS``, warnings about groups that distort a split).
    """
    labels = np.asarray(labels, np.int64)
    group_ids = np.asarray(group_ids, np.int64)
    n = len(labels)
    frac = np.asarray(fractions, np.float64)
    if n == 0:
        return np.zeros(0, np.int64), []
    # strata: the label values present, unknown (-1) included as one more stratum
    strata, stratum = np.unique(labels, return_inverse=True)
    k = len(strata)
    # units: each multi-item group, then each remaining item alone
    gid = group_ids.copy()
    loose = gid < 0
    gid[loose] = gid.max(initial=-1) + 1 + np.arange(int(loose.sum()))
    _, unit_of = np.unique(gid, return_inverse=True)
    n_units = int(unit_of.max()) + 1
    vec = np.zeros((n_units, k), np.float64)  # class counts per unit
    np.add.at(vec, (unit_of, stratum), 1.0)
    size = vec.sum(axis=1)

    rng = np.random.default_rng(seed)
    order = rng.permutation(n_units)
    # big groups first (stable sort keeps the seeded order among equal sizes), singletons last
    order = order[np.argsort(-size[order], kind="stable")]

    per_class = vec.sum(axis=0)  # (k,)
    target = frac[:, None] * per_class[None, :]  # (3, k) sample targets per split and class
    got = np.zeros_like(target)
    unit_split = np.empty(n_units, np.int64)
    active = frac > 0
    single = size == 1
    for u in order[~single[order]]:  # groups, one at a time
        v = vec[u]
        deficit = target - got  # (3, k)
        # relative deficit, weighted by how many of the unit's items are of each class
        rel = (deficit * v).sum(axis=1) / np.maximum((target * v).sum(axis=1), 1e-12)
        fits = active & np.all(deficit[:, v > 0] >= v[v > 0] - 0.5, axis=1)
        if not fits.any():  # no split has room for every class: fall back to total room
            fits = active & (deficit.sum(axis=1) >= v.sum() - 0.5)
        if not fits.any():
            fits = active
        s = int(np.argmax(np.where(fits, rel, -np.inf)))
        unit_split[u] = s
        got[s] += v
    # singletons fill what is left of each class's quotas: largest remainder over the positive
    # deficits (they sum to at least the number of singletons left), in the seeded order
    loose_units = order[single[order]]
    loose_cls = np.argmax(vec[loose_units], axis=1)
    for c in range(k):
        us = loose_units[loose_cls == c]
        m = len(us)
        if m == 0:
            continue
        d = np.where(active, np.maximum(target[:, c] - got[:, c], 0.0), 0.0)
        share = d * (m / d.sum()) if d.sum() > 0 else frac * m
        q = np.floor(share + 1e-9).astype(np.int64)
        rest = m - int(q.sum())
        if rest > 0:
            q[np.argsort(-(share - q), kind="stable")[:rest]] += 1
        unit_split[us] = np.repeat(np.arange(3), q)
        got[:, c] += q
    assign = unit_split[unit_of]

    warnings: list[str] = []
    counts = np.bincount(assign, minlength=3)
    achieved = counts / n
    # A group distorts a split when it is a visible share of the data *and* of the smallest split it
    # could land in: on 121 images (val 12) a pair of copies is normal, a group of 4 is a third of val.
    targets = [f * n for f in frac if f > 0]
    big = np.flatnonzero(size > max(1.0, 0.01 * n, 0.25 * min(targets, default=n)))  # groups only: size > 1
    for u in big[np.argsort(-size[big], kind="stable")][:5]:
        warnings.append(
            f"a duplicate group of {int(size[u])} items ({100.0 * size[u] / n:.1f}% of the data) was kept whole in "
            f"{SPLITS[unit_split[u]]}; a group this large skews that split (inspect it with 'datacheck audit')"
        )
    off = [f"{s} {100 * achieved[i]:.1f}% (asked {100 * frac[i]:.1f}%)"
           for i, s in enumerate(SPLITS) if abs(achieved[i] - frac[i]) > 0.01]
    if off:
        warnings.append("duplicate groups too large to place exactly: " + ", ".join(off))
    return assign, warnings


def _group_ids(groups: Any, n: int) -> np.ndarray:
    """int64 (N,) group ids (-1 = alone) from ids per item or from a sequence of index lists."""
    if not isinstance(groups, (np.ndarray, list, tuple)):
        for attr in ("group", "groups"):  # NearDuplicates (.group) or a CheckResult (.groups)
            if isinstance(getattr(groups, attr, None), np.ndarray):
                groups = getattr(groups, attr)
                break
    if isinstance(groups, np.ndarray) and groups.ndim == 1 and len(groups) == n and groups.dtype != object:
        arr = groups
    else:
        seq = list(groups)
        if seq and all(isinstance(g, (list, tuple, np.ndarray, set, frozenset)) for g in seq):
            out = np.full(n, -1, np.int64)
            for gi, members in enumerate(seq):
                idx = np.asarray(sorted(members), np.int64)
                if idx.size and (idx.min() < 0 or idx.max() >= n):
                    raise UserError(f"group {gi} has item indices outside [0, {n})")
                if (out[idx] >= 0).any():
                    raise UserError(f"group {gi} shares items with an earlier group; merge them first")
                if idx.size > 1:
                    out[idx] = gi
            return out
        arr = np.asarray(seq)
    if arr.shape != (n,):
        raise UserError(f"groups must give one group id per item ({n}), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        # arbitrary hashable labels (strings, say): empty / None / NaN mean "alone"
        keys = ["" if (x is None or (isinstance(x, float) and np.isnan(x))) else str(x) for x in arr.tolist()]
        uniq = {k: i for i, k in enumerate(sorted(set(keys) - {""}))}
        return np.array([uniq[k] if k else -1 for k in keys], np.int64)
    return arr.astype(np.int64)
