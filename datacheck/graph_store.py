"""The audit's neighbour spaces and graphs: fitted once, kept in a streamed audit's store, patched on a
re-audit.

A graph's space is the features mapped by a `SpaceMap`: centred and divided per dimension (the outlier
check's standardization of learned features), then, for large sets (more than `REDUCE_MIN_ITEMS`
items and more than `REDUCE_DIM` dimensions), projected on their first `REDUCE_DIM` principal axes
(fitted on a seeded sample): the graph's cost is N^2 D exact or about N D log N approximate, so
512 -> 128 dimensions cuts it about 4x where it dominates an audit. 128, not 64: on 30,000 photo-like
thumbnails the outlier check's flags in the 128-d space held 379 of the 460 of the full space (446
flagged, rank correlation of the scores 0.94), in the 64-d space only 121 (141 flagged, 0.83); the
variance kept is reported (benchmarks/RESULTS.md).

In a streamed audit with an ``--out`` the map and the graph are written to ``OUT/store/graphs``, rows
named by item id and a digest of the item's thumbnail. A re-audit of the same store, when at most
`PATCH_MAX_CHANGE` of the rows were added, removed or changed and the settings are the same, reuses
the map (frozen: the space does not move when items are added) and patches the graph instead of
building it again. An exact graph (`patch_graph`): rows that lost a neighbour and new rows are searched
exactly against all rows, and every other row merges the new rows into its list (screened in float32
against its k-th distance); the result is the graph a full exact build in the same space gives. An
approximate graph (`patch_with_index`): its faiss index is kept beside it (``.faiss``), the new rows
are added to it and searched there, old rows take a new row that found them, and the recall is sampled
again. Beyond that share of changes the map is fitted again and the graph built from scratch.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .hashing import item_keys, lookup_keys
from .neighbors import NeighborGraph, _rank, build_graph, ef_search, exact_knn, first_k_found, row_distances

log = logging.getLogger(__name__)

#: above this many items (and REDUCE_DIM dimensions) the graph's space is PCA-reduced
REDUCE_MIN_ITEMS = 100_000
#: dimensions kept by the reduction
REDUCE_DIM = 128
#: rows sampled to fit the reduction
REDUCE_SAMPLE = 65_536
#: a stored graph is patched when at most this share of its rows changed, else built again
PATCH_MAX_CHANGE = 0.10
GRAPH_STORE_VERSION = 3  # 3: rows keyed by `hashing.item_keys`, as the near-duplicate store


@dataclass(frozen=True)
class SpaceMap:
    """float32 (N, D) features -> float32 (N, R) space: ``(x - mu) / sd`` when standardized, then
    ``@ basis`` (D, R) when reduced (after centring, so the projection is a PCA)."""

    mu: np.ndarray | None = None  # float64 (D,)
    sd: np.ndarray | None = None  # float64 (D,)
    center: np.ndarray | None = None  # float64 (D,): the mean of the (standardized) features, reduced only
    basis: np.ndarray | None = None  # float32 (D, R)
    variance_kept: float | None = None

    @property
    def reduced(self) -> bool:
        return self.basis is not None

    def apply(self, x: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """The space of ``x`` (N, D), computed in row chunks (no float64 copy of the whole matrix)."""
        if self.mu is None and self.basis is None:
            return np.ascontiguousarray(x, np.float32)
        from .memory import release_pages

        dim = self.basis.shape[1] if self.basis is not None else x.shape[1]
        out = np.empty((len(x), dim), np.float32)
        for s in range(0, len(x), chunk):
            release_pages(x)  # a memory-mapped feature file: what was read need not stay resident
            v = np.asarray(x[s : s + chunk], np.float64)
            if self.mu is not None:
                v = (v - self.mu) / self.sd
            if self.basis is not None:
                out[s : s + chunk] = ((v - self.center).astype(np.float32)) @ self.basis
            else:
                out[s : s + chunk] = v
        return out

    def summary(self) -> dict[str, Any]:
        return {"standardized": self.mu is not None, "reduced_to": None if self.basis is None else int(self.basis.shape[1]),
                "variance_kept": None if self.variance_kept is None else round(self.variance_kept, 4)}


def needs_reduction(n: int, dim: int) -> bool:
    return n > REDUCE_MIN_ITEMS and dim > REDUCE_DIM


def fit_space(x: np.ndarray, standardize: bool, *, seed: int = 0) -> SpaceMap:
    """The `SpaceMap` of features ``x`` (N, D): per-dimension scaling when ``standardize``, and a
    PCA to `REDUCE_DIM` dimensions when `needs_reduction`."""
    mu = sd = None
    if not needs_reduction(len(x), x.shape[1]):
        if standardize:  # the statistics the outlier check always used
            mu, sd = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64) + 1e-6
        return SpaceMap(mu=mu, sd=sd)
    if standardize:  # two passes in row chunks: no float64 copy of a large x
        mu = np.zeros(x.shape[1])
        for s in range(0, len(x), 65536):
            mu += np.asarray(x[s : s + 65536], np.float64).sum(0)
        mu /= len(x)
        sq = np.zeros(x.shape[1])
        for s in range(0, len(x), 65536):
            v = np.asarray(x[s : s + 65536], np.float64) - mu
            sq += (v * v).sum(0)
        sd = np.sqrt(sq / len(x)) + 1e-6
    from .memory import release_pages

    release_pages(x)
    rows = np.sort(np.random.default_rng(seed).choice(len(x), min(len(x), REDUCE_SAMPLE), replace=False))
    v = np.asarray(x[rows], np.float64)
    release_pages(x)
    if mu is not None:
        v = (v - mu) / sd
    center = v.mean(0)
    v -= center
    w, vec = np.linalg.eigh(v.T @ v / max(len(v) - 1, 1))
    order = np.argsort(w)[::-1][:REDUCE_DIM]
    kept = float(w[order].sum() / max(w.sum(), 1e-12))
    return SpaceMap(mu=mu, sd=sd, center=center, basis=np.ascontiguousarray(vec[:, order], np.float32), variance_kept=kept)


# ---------------------------------------------------------------------------- patching
def _carry_over(old: NeighborGraph, old_of_new: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(kept rows, new rows, the kept rows' old neighbour lists in the new numbering (-1: removed),
    whether each kept row lost a neighbour) for a patch of ``old`` by ``old_of_new`` (N,)."""
    kept = np.flatnonzero(old_of_new >= 0)
    new_of_old = np.full(len(old.idx), -1, np.int64)
    new_of_old[old_of_new[kept]] = kept
    mapped = new_of_old[old.idx[old_of_new[kept]]]  # (len(kept), k)
    lost = (mapped < 0).any(1) if old.k else np.zeros(len(kept), bool)
    return kept, np.flatnonzero(old_of_new < 0), mapped, lost


def _merge_into(idx: np.ndarray, dist: np.ndarray, rows: np.ndarray, cand: np.ndarray, d: np.ndarray) -> None:
    """Merge candidates into the lists of ``idx``/``dist`` (M, k), in place: ``rows`` (P,) sorted, the
    list each candidate ``cand`` (P,) at distance ``d`` (P,) may enter; each list keeps its k nearest
    (ties by index, as a full build ranks them)."""
    if not len(rows):
        return
    at_rows, start, count = np.unique(rows, return_index=True, return_counts=True)
    pad_i = np.full((len(at_rows), int(count.max())), -1, np.int64)
    pad_d = np.full(pad_i.shape, np.inf)
    col = np.arange(len(rows)) - np.repeat(start, count)
    at = np.repeat(np.arange(len(at_rows)), count)
    pad_i[at, col], pad_d[at, col] = cand, d
    both_i = np.concatenate([idx[at_rows], pad_i], 1)
    both_d = np.concatenate([dist[at_rows], pad_d], 1)
    order = _rank(both_d, both_i)[:, : idx.shape[1]]
    idx[at_rows], dist[at_rows] = np.take_along_axis(both_i, order, 1), np.take_along_axis(both_d, order, 1)


def patch_graph(x: np.ndarray, old: NeighborGraph, old_of_new: np.ndarray) -> tuple[NeighborGraph, dict[str, int]]:
    """The graph of ``x`` (N, R) from ``old`` (over the previous rows, in the same space):
    ``old_of_new`` (N,) is each row's row in ``old`` (-1: new or changed). Rows that lost a neighbour
    and new rows are searched exactly; the other rows merge their nearest new rows into their lists."""
    t0 = time.perf_counter()
    n, k = len(x), old.k
    kk = min(k, n - 1)
    x = np.ascontiguousarray(x, np.float32)
    kept, fresh, mapped, lost = _carry_over(old, old_of_new)
    if kk > k:  # the old graph was capped by a smaller set: every row is searched again
        lost[:] = True
    clean, dirty = kept[~lost], kept[lost]
    idx = np.zeros((n, kk), np.int64)
    dist = np.zeros((n, kk), np.float64)
    if len(clean) and kk:
        ci = mapped[~lost][:, :kk]
        cd = old.dist[old_of_new[clean]][:, :kk]
        if len(fresh):  # the new rows each old row must now consider
            ci, cd = _merge_new(x, clean, ci, cd, fresh)
        idx[clean], dist[clean] = ci, cd
    redo = np.concatenate([dirty, fresh])
    if len(redo) and kk:
        ri = exact_knn(x[redo], x, kk, self_rows=redo)
        idx[redo], dist[redo] = ri, row_distances(x[redo], x, ri)
    g = replace(old, idx=idx, dist=dist, seconds=time.perf_counter() - t0)
    return g, {"n_new": int(len(fresh)), "n_searched_again": int(len(dirty)), "n_removed": int(len(old.idx) - len(kept))}


def _merge_new(x: np.ndarray, clean: np.ndarray, ci: np.ndarray, cd: np.ndarray, fresh: np.ndarray,
               block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(idx, dist) of rows ``clean`` after merging the rows ``fresh`` of ``x`` into their lists ``ci``,
    ``cd`` (len(clean), k). Float32 products screen every (old, new) pair against the row's k-th
    distance with a margin far above their rounding error; only the pairs that pass get an exact
    float64 distance and a place in the ranking (usually about k new pairs per new row)."""
    t = x[fresh]
    tn = np.einsum("nd,nd->n", t, t)
    tt = np.ascontiguousarray((-2 * t).T)
    ci, cd = ci.copy(), cd.copy()
    for s in range(0, len(clean), block):
        q = x[clean[s : s + block]]
        qn = np.einsum("nd,nd->n", q, q)
        d2 = q @ tt
        d2 += tn
        d2 += qn[:, None]
        lim = (cd[s : s + block, -1] ** 2).astype(np.float32)[:, None] + 1e-4 * (qn[:, None] + tn[None]) + 1e-12
        r, c = np.nonzero(d2 <= lim)
        if not len(r):
            continue
        diff = t[c].astype(np.float64) - q[r].astype(np.float64)
        _merge_into(ci, cd, s + r, fresh[c], np.sqrt(np.einsum("pd,pd->p", diff, diff)))  # r is sorted (row-major)
    return ci, cd


def patch_with_index(x: np.ndarray, old: NeighborGraph, old_of_new: np.ndarray, index: Any, index_map: np.ndarray,
                     *, seed: int = 0) -> tuple[NeighborGraph, dict[str, int], np.ndarray]:
    """An approximate graph of ``x`` (N, R) patched through the faiss index it was built with: new rows
    are added to the index; new rows and rows that lost a neighbour are searched in it; every other
    row takes a new row into its list when that row found it among its own neighbours (the reverse of
    a kNN search, as HNSW inserts do). ``index_map`` (len(index),): the current row of each index row
    (-1: removed; their vectors stay in the index, filtered from results). Returns the graph (its
    recall measured again on sampled rows), the counts and the new index map."""
    from .neighbors import RECALL_QUERIES, sample_recall

    t0 = time.perf_counter()
    n, k = len(x), old.k
    x = np.ascontiguousarray(x, np.float32)
    kept, fresh, mapped, lost = _carry_over(old, old_of_new)
    idx = np.zeros((n, k), np.int64)
    dist = np.zeros((n, k), np.float64)
    clean = kept[~lost]
    idx[clean], dist[clean] = mapped[~lost], old.dist[old_of_new[clean]]
    if len(fresh):
        index.add(x[fresh])
        index_map = np.concatenate([index_map, fresh])
    redo = np.concatenate([kept[lost], fresh])
    dead = int((index_map < 0).sum())
    if len(redo):
        index.hnsw.efSearch = max(ef_search(index.ntotal), k + 2)
        m = min(len(index_map), k + 1 + min(dead, 2 * k))  # room for the removed rows still in the index
        labels = np.concatenate([index.search(x[redo[s : s + 65536]], m)[1] for s in range(0, len(redo), 65536)])
        cand = np.where(labels >= 0, index_map[np.maximum(labels, 0)], -1)  # current rows; -1: removed
        ri = first_k_found(x, cand, redo, k)
        rd = row_distances(x[redo], x, ri)
        order = _rank(rd, ri)
        idx[redo], dist[redo] = np.take_along_axis(ri, order, 1), np.take_along_axis(rd, order, 1)
    if len(fresh) and len(clean):  # reverse updates: an old row found by a new one may take it
        is_clean = np.zeros(n, bool)
        is_clean[clean] = True
        f_rows = np.repeat(fresh, k)
        to, d = idx[fresh].ravel(), dist[fresh].ravel()
        ok = is_clean[to] & (d < dist[to, -1])
        order = np.lexsort((f_rows[ok], to[ok]))
        _merge_into(idx, dist, to[ok][order], f_rows[ok][order], d[ok][order])
    rec, mq = sample_recall(x, idx, seed=seed, m=RECALL_QUERIES)
    g = replace(old, idx=idx, dist=dist, recall=rec, n_recall_queries=mq, seconds=time.perf_counter() - t0, index=index)
    counts = {"n_new": int(len(fresh)), "n_searched_again": int(lost.sum()), "n_removed": int(len(old.idx) - len(kept)),
              "index_rows_removed": int((index_map < 0).sum())}
    return g, counts, index_map


# ---------------------------------------------------------------------------- the store
def stored_graph(store: Path, name: str, standardize: bool, *, features: Callable[[], np.ndarray], ids: tuple[str, ...],
                 digests: np.ndarray, meta: dict[str, Any], k: int, build: Callable[[np.ndarray, int], NeighborGraph],
                 seed: int = 0) -> tuple[NeighborGraph, SpaceMap, np.ndarray, dict[str, Any]]:
    """(graph, space map, space (N, R), how) for features ``name`` of the store's items: patched from
    the stored graph when it is reusable (see the module doc), else fitted and built with ``build``;
    written back to ``store/graphs`` either way. ``meta``: the settings a stored graph must match
    (extractor identity, neighbour method and threshold...)."""
    from .io import atomic_path

    tag = f"{name}-{'std' if standardize else 'raw'}"
    path = store / "graphs" / f"{tag}.npz"
    meta = {**meta, "version": GRAPH_STORE_VERSION, "name": name, "standardize": bool(standardize),
            "reduce_min_items": REDUCE_MIN_ITEMS, "reduce_dim": REDUCE_DIM, "seed": int(seed)}
    rows = item_keys(ids, digests)
    x = features()
    prev = _load(path, meta)
    how: dict[str, Any] = {"mode": "built"}
    if prev is not None:
        old_rows, smap, old, index_rows = prev
        old_of_new = lookup_keys(old_rows, rows)
        n_changed = int((old_of_new < 0).sum()) + (len(old_rows) - int((old_of_new >= 0).sum()))
        same_regime = smap.reduced == needs_reduction(len(x), x.shape[1])
        if same_regime and n_changed <= PATCH_MAX_CHANGE * max(len(old_rows), 1) and old.k >= min(k, len(x) - 1):
            space = smap.apply(x)
            if not n_changed and old.k == min(k, len(x) - 1):  # nothing to patch: the stored graph as it is
                return old, smap, space, {"mode": "reused", "n_new": 0, "n_searched_again": 0, "n_removed": 0}
            index, index_map = _load_index(path, index_rows, rows) if old.method == "approx" and n_changed else (None, None)
            if index is not None and old.k == min(k, len(x) - 1):
                g, counts, index_map = patch_with_index(space, old, old_of_new, index, index_map, seed=seed)
                index_rows = np.concatenate([index_rows, rows[old_of_new < 0]])
            else:  # exact graphs (and an approximate one whose index is gone): new rows searched exactly
                g, counts = patch_graph(space, old, old_of_new)
                index_rows = None
            how = {"mode": "patched" if n_changed else "reused", **counts}
            log.info("neighbour graph %s patched from the store: %s", tag, how)
            if n_changed:
                _save(path, meta, rows, smap, g, atomic_path, index_rows)
            return g, smap, space, how
        how = {"mode": "built", "reason": f"{n_changed} of {len(old_rows)} rows changed" if same_regime
               else "the set crossed the reduction size"}
    smap = fit_space(x, standardize, seed=seed)
    space = smap.apply(x)
    g = build(space, k)
    _save(path, meta, rows, smap, g, atomic_path, rows if g.index is not None else None)
    return g, smap, space, how


def _save(path: Path, meta: dict[str, Any], rows: np.ndarray, smap: SpaceMap, g: NeighborGraph, atomic_path: Any,
          index_rows: np.ndarray | None = None) -> None:
    """The graph (npz) and, for an approximate one, its faiss index beside it (``.faiss``) with the row
    name of each index row (``index_rows``: the index only grows; removed rows stay in it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ipath = path.with_suffix(".faiss")
    if g.index is not None and index_rows is not None:
        from .neighbors import faiss_module

        faiss = faiss_module()
        tmp = ipath.with_name(f".{ipath.name}.tmp")
        faiss.write_index(g.index, str(tmp))
        os.replace(tmp, ipath)
    else:
        ipath.unlink(missing_ok=True)
        index_rows = None
    info = {"meta": meta, "graph": {"method": g.method, "library": g.library, "recall": g.recall,
                                    "n_recall_queries": g.n_recall_queries}, "variance_kept": smap.variance_kept}
    arrays = {k: v for k, v in (("mu", smap.mu), ("sd", smap.sd), ("center", smap.center), ("basis", smap.basis))
              if v is not None}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            # int32 neighbours (N < 2^31): the graph is about 12 bytes a neighbour on disk
            np.savez(fh, info=np.array(json.dumps(info)), rows=rows, idx=g.idx.astype(np.int32), dist=g.dist, **arrays,
                     **({"index_rows": index_rows} if index_rows is not None else {}))


def _load_index(path: Path, index_rows: np.ndarray | None, rows: np.ndarray) -> tuple[Any, np.ndarray | None]:
    """(the stored faiss index, the current row of each index row or -1) or (None, None) when there is
    none, it is unreadable, or too many of its rows are gone (then the graph is patched exactly)."""
    ipath = path.with_suffix(".faiss")
    if index_rows is None or not ipath.is_file():
        return None, None
    index_map = lookup_keys(rows, index_rows)
    if (index_map < 0).mean() > 2 * PATCH_MAX_CHANGE:
        return None, None
    try:
        from .neighbors import faiss_module

        index = faiss_module().read_index(str(ipath))
    except Exception as e:  # damaged: the exact patch still gives a correct graph
        log.info("stored index %s unreadable (%s): patched exactly", ipath.name, e)
        return None, None
    if index.ntotal != len(index_rows):
        return None, None
    return index, index_map


def _load(path: Path, meta: dict[str, Any]) -> tuple[np.ndarray, SpaceMap, NeighborGraph, np.ndarray | None] | None:
    """The stored (rows, map, graph) when ``path`` holds one written with the same ``meta``."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            info = json.loads(str(z["info"]))
            if info.get("meta") != json.loads(json.dumps(meta)):
                log.info("stored graph %s has other settings: built again", path.name)
                return None
            arr = {k: z[k] for k in ("mu", "sd", "center", "basis") if k in z.files}
            rows, idx, dist = z["rows"], z["idx"].astype(np.int64), z["dist"]
            index_rows = z["index_rows"] if "index_rows" in z.files else None
    except (OSError, ValueError, KeyError) as e:  # damaged or from another version: built again
        log.info("stored graph %s unreadable (%s): built again", path.name, e)
        return None
    gi = info["graph"]
    smap = SpaceMap(mu=arr.get("mu"), sd=arr.get("sd"), center=arr.get("center"), basis=arr.get("basis"),
                    variance_kept=info.get("variance_kept"))
    return rows, smap, NeighborGraph(idx, dist, gi["method"], gi["library"], recall=gi["recall"],
                                     n_recall_queries=int(gi["n_recall_queries"])), index_rows
