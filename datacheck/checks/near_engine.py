"""The near-duplicate engine (see `datacheck.checks.duplicates` for the pipeline): per-item inputs,
calibration, candidate search and verification, groups. `near_duplicate_pairs` is its entry point;
`datacheck.near_store` runs it incrementally over an audit's store."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .. import hashing
from ..dataset import Dataset
from .near_verify import EDITS, GridRows, _normed, apply_edit, hash_queries, pair_scores, verifier_grid

log = logging.getLogger(__name__)

NEAR_DEFAULTS: dict[str, Any] = {
    "threshold": None,  # None = calibrate on the dataset; a float in (0, 1] fixes the verifier threshold
    "radius": 11,  # pHash Hamming radius for candidates (exact search)
    "bands": 4,  # multi-index hashing bands (64 / bands bits each)
    "grid": 32,  # verifier grid: images are compared at most at grid x grid
    "shift_queries_below": 64,  # also query one-pixel-shifted hashes when min(H, W) <= this
    "shift_radius": 7,  # Hamming radius for the shifted queries (smaller = cheaper: 17 probes a band, not 137)
    "uniform_std": 2.0,  # gray std (0..255 levels) below which an image is near-uniform
    "uniform_tol": 2.0,  # near-uniform images pair only if every channel mean is within this
    "min_threshold": 0.9,  # the calibrated threshold never goes below this
    "max_fpr": 0.005,  # quantile of calibration negatives the threshold must clear
    "negative_rank": 3,  # negatives: each sampled item's k-th most similar other item
    "calibration_items": 300,  # items sampled for calibration
    # the run's shared neighbour graph (`CheckContext.neighbor_graph`, the outlier check's feature
    # space) also proposes candidates: each item's first graph_neighbors neighbours that are closer
    # than graph_ratio x the median nearest-neighbour distance. 0 (default) = hash candidates only:
    # 2 found 2 more near-identical pairs of clean digits (verified) on the planted-digits test, so
    # it is opt-in to keep the findings as they were
    "graph_neighbors": 0,
    "graph_ratio": 0.5,
}


# ----------------------------------------------------------------------------- helpers
def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component labels (N,) of the graph with edges ``pairs`` (P, 2)."""
    if len(pairs) == 0:
        return np.arange(n)
    g = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(g, directed=False)[1]


def group_ids(labels: np.ndarray) -> np.ndarray:
    """Turn component labels into group ids: -1 for singletons, 0.. numbered by first member."""
    _, first, inv, counts = np.unique(labels, return_index=True, return_inverse=True, return_counts=True)
    out = np.full(len(labels), -1, np.int64)
    multi = counts[inv] > 1
    order = np.argsort(first)  # number groups in order of their first member
    rank = np.full(len(first), -1, np.int64)
    big = order[counts[order] > 1]
    rank[big] = np.arange(len(big))
    out[multi] = rank[inv[multi]]
    return out


def exact_groups(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rep, group): rep (N,) index of the first item with the same pixels; group (N,) ids (-1 unique)."""
    return groups_from_keys(hashing.exact_keys(images))


def groups_from_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`exact_groups` from per-item digests (N,) (the streaming audit hashes each file's full pixels)."""
    _, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    rep = first[inv]
    return rep, group_ids(rep)



# ----------------------------------------------------------------------------- engine
@dataclass
class NearDuplicates:
    """Output of `near_duplicate_pairs` (indices are dataset item indices).

    pairs: int64 (P, 2) verified near-duplicate pairs among exact-group representatives.
    scores: float32 (P,) verifier scores of those pairs (uniform pairs score 1).
    rep: int64 (N,) index of each item's exact-duplicate representative.
    exact_group / near_group / group: int64 (N,) group ids (-1 = none): identical pixels only;
        near-duplicates (with the exact copies of their members); both combined.
    reason: (N,) "exact", "near" or "" for the combined groups.
    uniform: bool (N,) near-uniform items (handled outside the hash).
    operating_point: threshold, recall (overall and per edit), precision, fpr, sample sizes.
    """

    pairs: np.ndarray
    scores: np.ndarray
    rep: np.ndarray
    exact_group: np.ndarray
    near_group: np.ndarray
    group: np.ndarray
    reason: np.ndarray
    uniform: np.ndarray
    operating_point: dict[str, Any] = field(default_factory=dict)
    n_candidates: int = 0


def _uniform_pairs(means: np.ndarray, idx: np.ndarray, tol: float) -> np.ndarray:
    """Pairs among near-uniform items: greedy clusters by channel means (no chaining)."""
    if len(idx) < 2:
        return np.zeros((0, 2), np.int64)
    order = idx[np.lexsort(means[idx].T[::-1])]
    pairs = []
    remaining = order
    while len(remaining):
        # one vectorised pass per cluster (a per-item Python loop took ~20 s on 50k photo crops)
        head, rest = remaining[0], remaining[1:]
        close = np.all(np.abs(means[rest] - means[head]) <= tol, axis=1)
        pairs += [(head, j) for j in rest[close]]
        remaining = rest[~close]
    return np.array(pairs, np.int64).reshape(-1, 2)


def _calibrate(images: np.ndarray, g: "np.ndarray | GridRows", h: np.ndarray, hq: np.ndarray | None, pool: np.ndarray,
               p: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Verifier threshold and operating point from synthetic positives and hard negatives."""
    m = min(len(pool), int(p["calibration_items"]))
    if m < 2:
        t = float(p["threshold"] if p["threshold"] is not None else max(p["min_threshold"], 0.97))
        return {"threshold": t, "calibrated": False, "note": "too few distinct images to calibrate"}
    sample = np.sort(rng.choice(pool, m, replace=False))
    shift = hq is not None
    pos_scores, pos_hash_ok, pos_edit = [], [], []
    for e in EDITS:
        edited = np.stack([apply_edit(images[i], e, rng) for i in sample])
        eh, ehq = hash_queries(edited, shift)
        ok = hashing.popcount64(eh ^ h[sample]) <= p["radius"]
        if shift:
            ds_ = np.minimum(hashing.popcount64(ehq ^ h[sample][None]).min(0),
                             hashing.popcount64(hq[:, sample] ^ eh[None]).min(0))
            ok |= ds_ <= p["shift_radius"]
        ge = verifier_grid(edited, int(p["grid"]))
        pos_scores.append(pair_scores(g, None, sample, ga=ge))
        pos_hash_ok.append(ok)
        pos_edit += [e] * m
    ps, pok, pedit = np.concatenate(pos_scores), np.concatenate(pos_hash_ok), np.array(pos_edit)

    # hard negatives: the k-th most similar other item, found with a coarse 8x8 gray correlation over
    # the pool, then re-scored with the full verifier
    k = int(p["negative_rank"])
    coarse = _normed(_small_gray_rows(images, pool, (8, 8)))
    cs = coarse[np.searchsorted(pool, sample)]
    top = min(len(pool) - 1, k + 7)
    negs = []
    # sampled rows per block: a (block, len(pool)) similarity matrix stays near 64 MB (256 rows x 1M pool
    # items was 1 GB, and argpartition copied it: 3.9 GB resident on a 1M-image audit)
    blk = int(max(1, min(256, (64 << 20) // max(1, 4 * len(pool)))))
    for s in range(0, m, blk):
        sim = cs[s : s + blk] @ coarse.T
        sim[np.arange(len(sim)), np.searchsorted(pool, sample[s : s + blk])] = -np.inf
        cand = np.argpartition(-sim, top - 1, axis=1)[:, :top]
        a = np.repeat(sample[s : s + blk], top)
        b = pool[cand.ravel()]
        sc = pair_scores(g, a, b).reshape(-1, top)
        negs.append(-np.sort(-sc, 1)[:, min(k, top) - 1])
    ns = np.concatenate(negs)

    if p["threshold"] is None:
        t_neg = float(np.quantile(ns, 1 - float(p["max_fpr"])))
        t = max(float(p["min_threshold"]), t_neg + 0.25 * (1 - t_neg))
        t = min(t, 0.999)
    else:
        t = float(p["threshold"])
    found = pok & (ps >= t)
    fp = int((ns >= t).sum())
    tp = int(found.sum())
    return {
        "threshold": round(t, 4),
        "calibrated": p["threshold"] is None,
        "recall": round(tp / len(ps), 4),
        "recall_by_edit": {e: round(float(found[pedit == e].mean()), 4) for e in EDITS},
        "hash_recall_by_edit": {e: round(float(pok[pedit == e].mean()), 4) for e in EDITS},
        "precision": round(tp / max(tp + fp, 1), 4),
        "fpr": round(fp / len(ns), 4),
        "n_positives": int(len(ps)),
        "n_negatives": int(len(ns)),
        "negatives": f"each sampled item's {k}-th most similar other item",
        "hash_radius": int(p["radius"]),
    }


def _small_gray_rows(images: np.ndarray, rows: np.ndarray, size: tuple[int, int], chunk: int = 4096) -> np.ndarray:
    """`hashing.small_gray` (float32 (len(rows), *size)) of ``images[rows]``, gathered ``chunk`` rows at
    a time: ``images[pool]`` whole would copy every textured image (12 KB each at 64x64x3: 12 GB at 1M)."""
    out = np.empty((len(rows), *size), np.float32)
    for s in range(0, len(rows), chunk):
        out[s : s + chunk] = hashing.small_gray(np.asarray(images[rows[s : s + chunk]]), size)
    return out


def near_duplicate_pairs(ds: Dataset, *, seed: int = 0, **params: Any) -> NearDuplicates:
    """Find exact and near-duplicate pairs and groups of ``ds`` (see the module docstring).

    ``params`` override `NEAR_DEFAULTS`.
    """
    return _near_duplicates(ds, seed, params, lambda: exact_groups(ds.images))


@dataclass
class NearInputs:
    """Per-item measurements of the pipeline (N items, T textured representatives).

    std: float32 (N,) gray standard deviation (0..255 levels).
    means: float64 (N, C) channel means, filled for the near-uniform items only (zeros elsewhere).
    textured: int64 (T,) sorted indices of the representatives that are not near-uniform.
    h: uint64 (T,) their pHashes; hq: uint64 (4, T) their one-pixel-shifted pHashes, or None.
    """

    std: np.ndarray
    means: np.ndarray
    textured: np.ndarray
    h: np.ndarray
    hq: np.ndarray | None


def near_params(params: dict[str, Any]) -> dict[str, Any]:
    """`NEAR_DEFAULTS` overridden by ``params``; a `UserError` for an unknown name."""
    unknown = set(params) - set(NEAR_DEFAULTS)
    if unknown:
        from ..errors import UserError

        raise UserError(f"unknown near-duplicate option(s) {sorted(unknown)}; expected: {', '.join(NEAR_DEFAULTS)}")
    return {**NEAR_DEFAULTS, **params}


def gray_std(images: np.ndarray) -> np.ndarray:
    """float32 (N,) gray standard deviation of uint8 (N, C, H, W), in chunks (row-wise: a subset's
    values equal the full set's)."""
    n, _, hh, ww = images.shape
    per = max(1, (1 << 22) // max(1, hh * ww))
    return (np.concatenate([hashing.gray(images, s, s + per).reshape(-1, hh * ww).std(1) for s in range(0, n, per)])
            if n else np.zeros(0, np.float32))


def channel_means(images: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out[idx]`` (float64 (N, C)) with the channel means of ``images[idx]``, in chunks."""
    n, c, hh, ww = images.shape
    per = max(1, (1 << 22) // max(1, hh * ww))
    for s in range(0, len(idx), per):
        rows = idx[s : s + per]
        out[rows] = np.asarray(images[rows]).reshape(len(rows), c, -1).mean(2)


def hash_rows(images: np.ndarray, rows: np.ndarray, shift: bool, chunk: int = 4096
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """`hash_queries` of ``images[rows]`` (uint64 (R,) and (4, R) or None), gathered ``chunk`` rows at a
    time: ``images[rows]`` whole would copy every textured image (row-wise: equal to hashing all at once)."""
    h = np.zeros(len(rows), np.uint64)
    hq = np.zeros((4, len(rows)), np.uint64) if shift else None
    for s in range(0, len(rows), chunk):
        x, xq = hash_queries(np.asarray(images[rows[s : s + chunk]]), shift)
        h[s : s + len(x)] = x
        if hq is not None:
            hq[:, s : s + len(x)] = xq
    return h, hq


def shift_queries(images: np.ndarray, p: dict[str, Any]) -> bool:
    """Whether the shifted pHashes are queried too (small images, see the module docstring)."""
    return min(images.shape[2], images.shape[3]) <= int(p["shift_queries_below"])


def near_inputs(images: np.ndarray, reps: np.ndarray, p: dict[str, Any]) -> NearInputs:
    """`NearInputs` of every item of ``images``, ``reps`` the exact-group representatives."""
    n, c = images.shape[:2]
    std = gray_std(images)
    uniform = std < float(p["uniform_std"])
    means = np.zeros((n, c))
    channel_means(images, np.flatnonzero(uniform), means)  # needed only for the near-uniform items
    textured = reps[~uniform[reps]]
    h_t, hq_t = hash_rows(images, textured, shift_queries(images, p))
    return NearInputs(std=std, means=means, textured=textured, h=h_t, hq=hq_t)


def _near_duplicates(ds: Dataset, seed: int, params: dict[str, Any],
                     exact: Callable[[], tuple[np.ndarray, np.ndarray]],
                     graph: Callable[[], Any] | None = None,
                     inputs: Callable[[np.ndarray, np.ndarray, dict[str, Any]], NearInputs] = near_inputs
                     ) -> NearDuplicates:
    """`near_duplicate_pairs`, taking the `exact_groups` of ``ds.images`` from ``exact()``, the per-item
    measurements from ``inputs(images, reps, p)`` (`near_inputs`; `datacheck.near_store` reads them
    from an audit's store) and, when ``graph`` is given, more candidates from the `NeighborGraph` it returns."""
    p = near_params(params)
    images = ds.images
    n = len(images)
    rng = np.random.default_rng(seed)
    rep, exact_group = exact()
    reps = np.flatnonzero(rep == np.arange(n))
    inp = inputs(images, reps, p)
    textured, h_t, hq_t = inp.textured, inp.h, inp.hq
    g = GridRows(images, int(p["grid"]))  # grids of the calibration samples and candidates only

    if len(textured):
        op = _calibrate(images, g, _scatter(h_t, textured, n), None if hq_t is None else _scatter(hq_t, textured, n),
                        textured, p, rng)
    else:
        op = {"threshold": float(p["threshold"] or max(p["min_threshold"], 0.97)), "calibrated": False,
              "note": "no textured images"}
    t = float(op["threshold"])

    cand = hashing.hamming_pairs(h_t, int(p["radius"]), bands=int(p["bands"]), queries=hq_t,
                                 query_radius=int(p["shift_radius"]))
    a, b = textured[cand[:, 0]], textured[cand[:, 1]]
    n_graph = 0
    if graph is not None and int(p["graph_neighbors"]) > 0 and len(textured) > 1:
        ga, gb = graph_candidates(graph(), textured, int(p["graph_neighbors"]), float(p["graph_ratio"]))
        hashed = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], 1), axis=0)
        both = np.unique(np.concatenate([hashed, np.stack([ga, gb], 1)]), axis=0)
        n_graph = len(both) - len(hashed)
        a, b = both[:, 0], both[:, 1]
    sc = pair_scores(g, a, b) if len(a) else np.zeros(0, np.float32)
    ok = sc >= t
    op["n_candidates"] = int(len(cand))
    op["n_graph_candidates"] = int(n_graph)
    return finish_near(rep, exact_group, a[ok], b[ok], sc[ok], inp, p, op)


def finish_near(rep: np.ndarray, exact_group: np.ndarray, a: np.ndarray, b: np.ndarray, sc: np.ndarray,
                inp: NearInputs, p: dict[str, Any], op: dict[str, Any]) -> NearDuplicates:
    """`NearDuplicates` from the verified textured pairs (a, b) int64 (P,) sorted by (a, b), a < b,
    with scores float32 (P,): adds the near-uniform pairs and forms the groups."""
    n = len(rep)
    reps = np.flatnonzero(rep == np.arange(n))
    uniform = inp.std < float(p["uniform_std"])
    upairs = _uniform_pairs(inp.means, reps[uniform[reps]], float(p["uniform_tol"]))
    pairs = np.concatenate([np.stack([a, b], 1), upairs]).astype(np.int64)
    scores = np.concatenate([sc, np.ones(len(upairs), np.float32)]).astype(np.float32)

    # near groups: components over representatives, then exact copies inherit their rep's component
    comp = components(n, pairs)[rep]
    in_pair = np.zeros(n, bool)
    in_pair[pairs.ravel()] = True
    near_comp = np.where(in_pair[rep], comp, -1 - np.arange(n))  # items not touched by a pair: alone
    near_group = group_ids(near_comp)
    # combined: near components plus exact-only groups
    combined = group_ids(np.where(in_pair[rep], comp, rep + n))
    reason = np.full(n, "", dtype=object)
    for gid in np.unique(combined[combined >= 0]):
        members = np.flatnonzero(combined == gid)
        reason[members] = "exact" if len(np.unique(rep[members])) == 1 else "near"
    op["n_verified_pairs"] = int(len(a))
    op["n_uniform"] = int(uniform.sum())
    return NearDuplicates(pairs=pairs, scores=scores, rep=rep, exact_group=exact_group, near_group=near_group,
                          group=combined, reason=reason.astype(str), uniform=uniform, operating_point=op,
                          n_candidates=int(op.get("n_candidates", 0)))


def graph_candidates(graph: Any, textured: np.ndarray, m: int, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) int64 item pairs, a < b, both in ``textured``: each textured item's first ``m`` graph
    neighbours that lie closer than ``ratio`` x the median nearest-neighbour distance (a copy sits far
    closer to its original than a typical neighbour does; the verifier decides)."""
    idx, dist = graph.idx[:, :m], graph.dist[:, :m]
    if idx.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cut = ratio * float(np.median(graph.dist[:, 0]))
    is_t = np.zeros(len(graph.idx), bool)
    is_t[textured] = True
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    cols, d = idx.ravel(), dist.ravel()
    ok = is_t[rows] & is_t[cols] & (d <= cut) & (rows != cols)
    a, b = np.minimum(rows[ok], cols[ok]), np.maximum(rows[ok], cols[ok])
    return a.astype(np.int64), b.astype(np.int64)


def _scatter(values: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    """Place per-subset values (..., len(idx)) into an (..., n) zero array at ``idx``."""
    out = np.zeros(values.shape[:-1] + (n,), values.dtype)
    out[..., idx] = values
    return out

