"""Exact and near-duplicate detection: the ``exact_duplicate`` and ``near_duplicate`` checks and the
engine `near_duplicate_pairs` that `datacheck.deduplication` and splitting build on.

Pipeline for near duplicates (perceptual hashes alone are weak, so they only propose candidates):

1. Exact copies are collapsed first (one representative per identical-pixel group).
2. Near-uniform images (gray std below ``uniform_std`` levels) collide under every hash, so they
   skip the hash and are grouped only with images whose per-channel mean levels are within
   ``uniform_tol`` of the group's first member (greedy, no chaining), never into one big group.
3. Every other representative gets a 64-bit pHash (`datacheck.hashing`). Candidates are pairs
   within ``radius`` bits, found exactly by multi-index hashing (not all pairs). For small images
   (min side <= ``shift_queries_below``) the hashes of the four one-pixel-shifted copies are also
   queried (within ``shift_radius``), because at 8x8 a one-pixel shift moves a pHash as far as a
   different image does.
4. A verifier scores each candidate: the Pearson correlation of the two images on a grid of at most
   32x32 (all channels), maximised over the one-pixel shifts (computed on the overlapping window).
   Correlation ignores brightness/contrast changes; the shift search covers one-pixel shifts.
5. The verifier threshold is calibrated on the dataset itself: positives are sampled items and copies
   of them with each edit (JPEG re-encoding, brightness/contrast, noise, small rescale, one-pixel
   shift), pushed through both stages; negatives are each sampled item's ``negative_rank``-th most
   similar other item (a realistic confuser that is almost never a duplicate) -- the threshold is
   placed above nearly all negatives (quantile ``1 - max_fpr``, then a quarter of the remaining gap
   to 1), and never below ``min_threshold``. The operating point (threshold, recall per edit,
   precision and false-positive rate on the calibration set) is reported in the summary.
6. Groups are connected components (union-find) of verified pairs; exact copies of a member join it.

In a streamed audit with a store (``--out``), `datacheck.near_store` keeps the per-thumbnail
measurements, the operating point and the verified pairs in ``OUT/store/near``: a re-audit measures
and searches only the new or changed images and reuses the operating point while the textured images
changed by at most 10% since its calibration (the summary's operating point says so).
"""
from __future__ import annotations
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..dataset import Dataset
from .base import CheckContext, CheckResult, register_check
# the engine and the verifier live in near_engine / near_verify; their names are importable from here
from .near_engine import (NEAR_DEFAULTS, NearDuplicates, NearInputs, _calibrate, _near_duplicates,  # noqa: F401
                          _scatter, _uniform_pairs, channel_means, components, exact_groups, finish_near,
                          graph_candidates, gray_std, group_ids, groups_from_keys, near_duplicate_pairs, near_inputs,
                          near_params, shift_queries)
from .near_verify import (EDITS, _SHIFTS, GridRows, _crop, _normed, _shift_copies, apply_edit,  # noqa: F401
                          best_shift_correlation, hash_queries, pair_scores, verifier_grid)

log = logging.getLogger(__name__)


def cached_near_duplicates(ds: Dataset, ctx: CheckContext, params: dict[str, Any]) -> NearDuplicates:
    """`near_duplicate_pairs` computed once per context and parameter set."""
    key = "near_duplicates:" + repr(sorted(params.items()))
    if ctx.feature_store is not None:  # a streamed audit's store: incremental over the previous audit's work
        from ..near_store import store_near_duplicates

        return ctx.cache(key, lambda: store_near_duplicates(ds, ctx, params, lambda: _cached_exact_groups(ds, ctx),
                                                            lambda: _shared_graph(ds, ctx)))
    # the exact groups are the exact_duplicate check's, cached in ctx: hashed once per run
    return ctx.cache(key, lambda: _near_duplicates(ds, ctx.seed, params, lambda: _cached_exact_groups(ds, ctx),
                                                   lambda: _shared_graph(ds, ctx)))


def _shared_graph(ds: Dataset, ctx: CheckContext) -> Any:
    """The run's neighbour graph in the outlier check's default space (one graph for both)."""
    from .labels import resolve_features

    name, _x = resolve_features(ds, ctx, "auto")
    return ctx.neighbor_graph(name, name != "pixels")


def _cached_exact_groups(ds: Dataset, ctx: CheckContext) -> tuple[np.ndarray, np.ndarray]:
    return ctx.cache("exact_groups", lambda: exact_groups(ds.images))



# ----------------------------------------------------------------------------- checks
@register_check("exact_duplicate", defaults={},
                description="items whose decoded pixels are identical to another item's")
def check_exact_duplicate(ds: Dataset, ctx: CheckContext) -> CheckResult:
    """Identical decoded pixels (a hash of the uint8 array, not of file bytes).

    Every member of a group is flagged (score 0) and gets the group id, so a dedupe can keep one;
    ``details`` names the group's first item. Summary: number of groups and of redundant copies.
    """
    rep, grp = _cached_exact_groups(ds, ctx)
    flags = grp >= 0
    members = np.bincount(rep, minlength=len(ds))  # per representative: its group's size
    details = [f"identical to {ds.ids[rep[i]]}" if rep[i] != i else
               (f"has {int(members[i]) - 1} identical cop{'y' if members[i] == 2 else 'ies'}" if flags[i] else "")
               for i in range(len(ds))]
    n_groups = int(grp.max(initial=-1) + 1)
    return CheckResult(
        name="exact_duplicate", scores=np.where(flags, 0.0, 1.0), flags=flags,
        summary={"score": 1 - (flags.sum() - n_groups) / max(len(ds), 1), "threshold": "identical pixels",
                 "n_groups": n_groups, "n_redundant": int(flags.sum() - n_groups)},
        params={}, details=details, groups=grp)


@register_check("near_duplicate", defaults=NEAR_DEFAULTS,
                description="perceptually the same image (re-encoded, brightness/contrast, noise, rescale, 1-px shift)")
def check_near_duplicate(ds: Dataset, ctx: CheckContext, **params: Any) -> CheckResult:
    """Near duplicates that are not pixel-identical (see the module docstring for the pipeline).

    Flags every member of a group that contains at least two different images (exact copies of a
    member are included); pure exact-copy groups are left to ``exact_duplicate``. Scores: 1 - the
    best verifier score of the item's pairs for flagged items (so closer copies score lower), 1 for
    the rest. ``groups``: near-duplicate group ids (-1 = none). The summary carries the calibrated
    operating point. Default threshold: calibrated (never below 0.9 correlation).
    """
    nd = cached_near_duplicates(ds, ctx, params)
    n = len(ds)
    best = np.zeros(n, np.float32)
    partner = np.full(n, -1, np.int64)
    for (i, j), s in zip(nd.pairs, nd.scores):
        for x, y in ((i, j), (j, i)):
            if s > best[x]:
                best[x], partner[x] = s, y
    # exact copies inherit their representative's best match
    best, partner = best[nd.rep], partner[nd.rep]
    flags = nd.near_group >= 0
    scores = np.where(flags, np.clip(1.0 - best, 0.0, 0.5), 1.0).astype(np.float64)
    details = [(f"near duplicate of {ds.ids[partner[i]]} (similarity {best[i]:.3f})" if partner[i] >= 0
                else f"identical to {ds.ids[nd.rep[i]]}") if flags[i] else "" for i in range(n)]
    n_groups = int(nd.near_group.max(initial=-1) + 1)
    summary = {"score": 1 - (flags.sum() - n_groups) / max(n, 1), "threshold": nd.operating_point["threshold"],
               "n_groups": n_groups, "operating_point": nd.operating_point,
               "n_near_uniform": int(nd.uniform.sum())}
    return CheckResult(name="near_duplicate", scores=scores, flags=flags, summary=summary,
                       params=dict(params), details=details, groups=nd.near_group)
