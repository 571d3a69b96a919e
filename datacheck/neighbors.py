"""One k-nearest-neighbour graph per audit, shared by the outlier, label and near-duplicate checks.

`build_graph` returns each row's ``k`` nearest other rows (Euclidean) of a float feature matrix (N, D):

* exact (blocked matrix products, never an N x N matrix) up to `EXACT_MAX_ITEMS` rows, where it is
  faster than building an index (benchmarks/bench_knn.py on 2 cores: 20k x 512 in 7 s, 100k in 252 s);
* approximate above it, with faiss-cpu's HNSW index (chosen on measurement against hnswlib and usearch,
  see benchmarks/RESULTS.md "#20 item 3"). Every approximate build measures its recall@k against exact
  search on `RECALL_QUERIES` sampled rows and carries it in the graph (the audit reports it).

``method``: ``auto`` (the rule above), ``exact`` or ``approx`` (``datacheck audit --neighbors``).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import UserError

log = logging.getLogger(__name__)

#: above this many rows ``auto`` switches to approximate search. Exact cost grows as N^2 D, HNSW's about as
#: N log N, but on 2 cores exact was still faster at 100k x 512 (252 s vs 584 s for build + query with
#: the settings below, benchmarks/RESULTS.md); the two cross near 230k
EXACT_MAX_ITEMS = 250_000
#: neighbours kept per row: outlier uses 10, the label check's out-of-fold kNN 10 of those outside a fold
GRAPH_K = 30
#: rows whose exact neighbours are computed to measure an approximate graph's recall
RECALL_QUERIES = 500
#: HNSW settings (benchmarks/bench_knn.py, 512-d: recall@10 0.9993 at 20k rows, 0.9969 at 100k, every planted
#: near-duplicate pair found; M=16, efConstruction=100, efSearch=64 was twice as fast but 0.905 / 98.8%)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
#: from this many rows on, searches use HNSW_EF_SEARCH_LARGE: on 1,008,334 rows x 128 dimensions (a 1M-image
#: audit's reduced space) efSearch 128 / 256 / 512 gave recall@30 0.816 / 0.891 / 0.942 at 0.74 / 1.06 /
#: 1.83 ms a query on 2 cores (benchmarks/RESULTS.md)
HNSW_LARGE_ROWS = 500_000
HNSW_EF_SEARCH_LARGE = 512
METHODS = ("auto", "exact", "approx")


@dataclass(frozen=True)
class NeighborGraph:
    """idx: int64 (N, k) each row's neighbours, nearest first, the row itself excluded; dist: float64
    (N, k) their Euclidean distances; method: "exact" or "approx"; library: what searched;
    recall: mean recall@k against exact search on ``n_recall_queries`` sampled rows (approx only)."""

    idx: np.ndarray
    dist: np.ndarray
    method: str
    library: str
    recall: float | None = None
    n_recall_queries: int = 0
    seconds: float = 0.0
    space: dict[str, Any] | None = None  # how the space was made (datacheck.graph_store.SpaceMap.summary)
    update: dict[str, Any] | None = None  # built, or patched from a store (and how many rows changed)
    index: Any = field(default=None, repr=False, compare=False)  # the faiss index an approximate build kept

    @property
    def k(self) -> int:
        return int(self.idx.shape[1])

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (summary.json ``neighbors``)."""
        return {"method": self.method, "library": self.library, "k": self.k, "n": int(len(self.idx)),
                "recall": None if self.recall is None else round(self.recall, 4),
                "recall_queries": self.n_recall_queries, "seconds": round(self.seconds, 3),
                "exact_max_items": EXACT_MAX_ITEMS,
                **({"space": self.space} if self.space is not None else {}),
                **({"update": self.update} if self.update is not None else {})}


def resolve_method(method: str, n: int, threshold: int = EXACT_MAX_ITEMS) -> str:
    """"exact" or "approx" for ``method`` (auto | exact | approx) and ``n`` rows."""
    if method not in METHODS:
        raise UserError(f"--neighbors must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "auto":
        return "exact" if n <= threshold else "approx"
    return method


def build_graph(x: np.ndarray, k: int = GRAPH_K, method: str = "auto", *, threshold: int = EXACT_MAX_ITEMS,
                seed: int = 0, threads: int | None = None, keep_index: bool = False) -> NeighborGraph:
    """The kNN graph of the rows of ``x`` (N, D); see the module doc. k is capped at N - 1.
    ``keep_index``: an approximate build keeps its faiss index in ``graph.index`` (a store patches
    the graph through it on a re-audit, `datacheck.graph_store`)."""
    t0 = time.perf_counter()
    x = np.ascontiguousarray(x, np.float32)
    n = len(x)
    k = max(0, min(k, n - 1))
    how = resolve_method(method, n, threshold)
    if k == 0:
        return NeighborGraph(np.zeros((n, 0), np.int64), np.zeros((n, 0)), how, "none")
    if how == "exact":
        idx = exact_knn(x, x, k, self_rows=np.arange(n))
        g = NeighborGraph(idx, row_distances(x, x, idx), "exact", "numpy", seconds=time.perf_counter() - t0)
        log.info("exact %d-NN graph of %d x %d in %.1f s", k, n, x.shape[1], g.seconds)
        return g
    idx, index = hnsw_knn(x, k, seed=seed, threads=threads, keep_index=True)
    dist = row_distances(x, x, idx)
    order = np.argsort(dist, axis=1, kind="stable")  # by the exact distances of what was found
    idx, dist = np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1)
    rec, m = sample_recall(x, idx, seed=seed)
    g = NeighborGraph(idx, dist, "approx", "faiss-hnsw", recall=rec, n_recall_queries=m, seconds=time.perf_counter() - t0,
                      index=index if keep_index else None)
    log.info("approximate %d-NN graph of %d x %d in %.1f s, recall@%d %.4f on %d sampled rows", k, n, x.shape[1],
             g.seconds, k, rec, m)
    return g


def exact_knn(q: np.ndarray, t: np.ndarray, k: int, *, self_rows: np.ndarray | None = None,
              block: int = 1024) -> np.ndarray:
    """int64 (Q, k) each row of ``q`` (Q, D)'s k nearest rows of ``t`` (N, D), nearest first, by
    blocked float32 products (a (block, N) buffer, never Q x N). ``self_rows`` (Q,): the row of ``t``
    each query is, excluded from its own list. Candidates are chosen in float32 with a margin and
    ranked by float64 distances, so rounding does not reorder near ties."""
    q = np.ascontiguousarray(q, np.float32)
    t = np.ascontiguousarray(t, np.float32)
    extra = 1 if self_rows is not None else 0
    kk = min(len(t), k + extra + 4)
    out = np.zeros((len(q), min(k, len(t) - extra)), np.int64)
    tn = np.einsum("nd,nd->n", t, t)
    tt = np.ascontiguousarray((-2 * t).T)
    block = max(1, min(block, (256 << 20) // max(1, 4 * len(t))))  # the buffer stays under 256 MB
    for s in range(0, len(q), block):
        qb = q[s : s + block]
        d = qb @ tt
        d += tn
        if self_rows is not None:
            d[np.arange(len(qb)), self_rows[s : s + block]] = np.inf
        cand = topk_smallest(d, kk)
        dd = row_distances(qb, t, cand)
        if self_rows is not None:
            dd[cand == self_rows[s : s + block, None]] = np.inf
        order = _rank(dd, cand)
        out[s : s + len(qb)] = np.take_along_axis(cand, order, 1)[:, : out.shape[1]]
    return out


def topk_smallest(d: np.ndarray, k: int) -> np.ndarray:
    """(B, k) column indices of each row's k smallest values of d (B, N), in no order; about twice as
    fast as a row-wise argpartition: the k-th smallest of 8k column-chunk minima bounds the k smallest
    from above (each minimum is a value of the row), so only the few values under it are sorted."""
    b, n = d.shape
    k = min(k, n)
    c = 8 * k
    size = n // c
    if size < 4:
        return np.argpartition(d, k - 1, axis=1)[:, :k]
    mins = d[:, : c * size].reshape(b, c, size).min(2)
    if n > c * size:
        mins = np.concatenate([mins, d[:, c * size :].min(1, keepdims=True)], 1)
    tau = np.partition(mins, k - 1, axis=1)[:, k - 1]
    r, col = np.nonzero(d <= tau[:, None])
    order = np.lexsort((d[r, col], r))
    r, col = r[order], col[order]
    rank = np.arange(len(r)) - np.searchsorted(r, np.arange(b))[r]
    keep = rank < k
    out = np.empty((b, k), np.int64)
    out[r[keep], rank[keep]] = col[keep]
    return out


def _rank(d: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Column order per row: by distance, ties by index (deterministic)."""
    o1 = np.argsort(idx, axis=1, kind="stable")
    o2 = np.argsort(np.take_along_axis(d, o1, 1), axis=1, kind="stable")
    return np.take_along_axis(o1, o2, 1)


def row_distances(q: np.ndarray, t: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """float64 (Q, k): |q[i] - t[idx[i, j]]| computed directly (no cancellation), in row chunks."""
    out = np.empty(idx.shape, np.float64)
    per = max(1, (32 << 20) // max(1, 8 * idx.shape[1] * q.shape[1]))
    for s in range(0, len(q), per):
        diff = t[idx[s : s + per]].astype(np.float64) - q[s : s + per, None, :].astype(np.float64)
        out[s : s + per] = np.sqrt(np.einsum("qkd,qkd->qk", diff, diff))
    return out


def ef_search(n: int) -> int:
    """HNSW's efSearch for an index of ``n`` rows (wider on large indexes, whose recall drops)."""
    return HNSW_EF_SEARCH_LARGE if n >= HNSW_LARGE_ROWS else HNSW_EF_SEARCH


def faiss_module(threads: int | None = None) -> Any:
    """faiss, its OpenMP threads set to ``threads`` (default: the CPUs this process may use)."""
    try:
        import faiss
    except ImportError:  # a dependency, but say what to do rather than a traceback
        raise UserError("approximate neighbour search needs faiss: pip install faiss-cpu "
                        "(or use --neighbors exact)") from None
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    faiss.omp_set_num_threads(int(threads))
    return faiss


def hnsw_knn(x: np.ndarray, k: int, *, seed: int = 0, threads: int | None = None, keep_index: bool = False) -> Any:
    """int64 (N, k) approximate neighbours of each row among the others, by faiss's HNSW index
    (IndexHNSWFlat, exact L2 on the stored vectors; insertion order fixed, so a run repeats).
    ``keep_index``: return (neighbours, the index)."""
    faiss = faiss_module(threads)
    n, dim = x.shape
    index = faiss.IndexHNSWFlat(dim, HNSW_M)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(x)
    index.hnsw.efSearch = max(ef_search(n), k + 2)
    labels = np.empty((n, k + 1), np.int64)
    per = 65536  # queries per call: faiss's result arrays stay small
    for s in range(0, n, per):
        labels[s : s + per] = index.search(x[s : s + per], k + 1)[1]
    out = first_k_found(x, labels, np.arange(n), k)
    return (out, index) if keep_index else out


def first_k_found(x: np.ndarray, cand: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """int64 (len(rows), k): each row's first ``k`` usable entries of ``cand`` (len(rows), m), an index
    search's results in order: the row itself (usually first; an exact copy may come before it) and
    -1 (faiss's padding, or a removed row) are skipped. A row with fewer than k usable entries
    (rare) is searched exactly in ``x``."""
    keep = (cand != rows[:, None]) & (cand >= 0)
    out = np.empty((len(rows), k), np.int64)
    full = keep.sum(1) >= k
    sel = keep & (np.cumsum(keep, 1) <= k)
    out[full] = cand[full][sel[full]].reshape(-1, k)
    for j in np.flatnonzero(~full):
        out[j] = exact_knn(x[rows[j] : rows[j] + 1], x, k, self_rows=rows[j : j + 1])[0]
    return out


def sample_recall(x: np.ndarray, idx: np.ndarray, *, seed: int = 0, m: int = RECALL_QUERIES) -> tuple[float, int]:
    """(mean recall@k of ``idx`` (N, k) against exact search, rows sampled) on ``m`` seeded rows."""
    n, k = idx.shape
    rows = np.sort(np.random.default_rng(seed).choice(n, min(m, n), replace=False))
    ex = exact_knn(x[rows], x, k, self_rows=rows)
    exd = row_distances(x[rows], x, ex)
    apd = row_distances(x[rows], x, idx[rows])
    # ties: a found neighbour at the k-th exact distance counts as right
    hit = apd <= exd[:, -1:] * (1 + 1e-6) + 1e-12
    return float(hit.mean()), len(rows)
