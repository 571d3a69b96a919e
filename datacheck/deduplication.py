"""Duplicate groups and a dedupe table: which item of each group of duplicates to keep.

``find_duplicate_groups`` merges exact copies (identical decoded pixels) and verified near
duplicates into connected components (see `datacheck.checks.duplicates` for the engine).
``dedupe`` turns them into one row per loaded item.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from .checks.base import CheckContext
from .checks.duplicates import NEAR_DEFAULTS, NearDuplicates, cached_near_duplicates
from .dataset import Dataset
from .sources import as_dataset


def find_duplicate_groups(ds: Dataset, *, ctx: CheckContext | None = None, seed: int = 0,
                          **options: Any) -> NearDuplicates:
    """Exact and near-duplicate groups of ``ds``.

    Args:
        ds: the dataset.
        ctx: a `CheckContext` to share work with ``run_checks`` (same options = computed once).
        seed: seed of the calibration sample when no ``ctx`` is given.
        **options: near-duplicate options, the ``near_duplicate`` check's parameters
            (`datacheck.checks.duplicates.NEAR_DEFAULTS`: ``threshold``, ``radius``, ...).

    Returns:
        `NearDuplicates`: ``group`` int64 (N,) combined group ids (-1 = unique), ``reason``
        (N,) ``"exact"`` (all members pixel-identical) / ``"near"`` / ``""``, plus the exact and
        near groups separately, the verified pairs and the calibrated operating point.
    """
    ctx = ctx or CheckContext(ds, seed=seed)
    return cached_near_duplicates(ds, ctx, dict(options))


def choose_representatives(ds: Dataset, group: np.ndarray) -> np.ndarray:
    """bool (N,) keep mask: every unique item, and one member per group -- the one with the largest
    original pixel area (the least downscaled copy), ties broken by dataset order (the first)."""
    keep = group < 0
    area = ds.orig_sizes[:, 0].astype(np.int64) * ds.orig_sizes[:, 1]
    idx = np.flatnonzero(group >= 0)
    if len(idx):
        # sort by group, then largest area, then index; the first row of each group wins
        order = idx[np.lexsort((idx, -area[idx], group[idx]))]
        first = np.r_[True, group[order][1:] != group[order][:-1]]
        keep[order[first]] = True
    return keep


def dedupe(source_or_dataset: Dataset | str | os.PathLike, *, ctx: CheckContext | None = None, seed: int = 0,
           **options: Any) -> pd.DataFrame:
    """One row per loaded item: which copies of duplicated images to keep.

    Args:
        source_or_dataset: a `Dataset` or anything `datacheck.load` accepts.
        ctx, seed, **options: as for `find_duplicate_groups` (near-duplicate options such as
            ``threshold=0.95``).

    Returns:
        DataFrame with columns ``id``, ``path`` (relative to the source, as typed), ``cluster``
        (nullable Int64 group id; <NA> for an item with no duplicate), ``keep`` (True for exactly one
        member of each group -- the largest original size, then the first in dataset order -- and
        for every unique item) and ``reason`` (``exact`` when the group's members are pixel-identical,
        ``near`` otherwise, empty for unique items).
    """
    ds = as_dataset(source_or_dataset)
    dup = find_duplicate_groups(ds, ctx=ctx, seed=seed, **options)
    keep = choose_representatives(ds, dup.group)
    return pd.DataFrame({
        "id": list(ds.ids),
        "path": [ds.path_of(i) for i in range(len(ds))],
        "cluster": pd.Series(dup.group, dtype="Int64").mask(dup.group < 0),
        "keep": keep.astype(bool),
        "reason": [str(r) for r in dup.reason],
    })


__all__ = ["NEAR_DEFAULTS", "choose_representatives", "dedupe", "find_duplicate_groups"]
