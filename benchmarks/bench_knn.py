"""Approximate kNN libraries for the audit's neighbour graph (issue #20 item 3): build + query time and
recall@k against exact search, on vectors of the audit's feature dimension (512: the random CNN).

The vectors: a low-rank Gaussian mixture (200 clusters, 32 intrinsic dimensions, isotropic noise), like
CNN features of a photo folder, plus planted near-duplicate pairs (1% of rows are a copy of another
row plus small noise). Reported per library: build s, query s (every row's k+1 neighbours), recall@k
on sampled queries against exact (blocked numpy), and the share of planted pairs each side finds
(j among i's k neighbours), relative to what exact search finds.

    python benchmarks/bench_knn.py --n 20000 100000 --libs faiss hnswlib usearch
    python benchmarks/bench_knn.py --n 100000 --libs faiss --m 16 --efc 100 --efs 64 --exact-full 100000
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from datacheck import neighbors as nb  # noqa: E402
from datacheck.neighbors import exact_knn  # noqa: E402


def make_vectors(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (n, d), planted (P, 2) pairs (original, near copy))."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (200, d)).astype(np.float32)
    basis = rng.normal(0, 1, (32, d)).astype(np.float32) / np.sqrt(32)
    c = rng.integers(0, 200, n)
    x = centers[c] + rng.normal(0, 3, (n, 32)).astype(np.float32) @ basis * 4
    x += rng.normal(0, 0.5, (n, d)).astype(np.float32)
    p = n // 100
    src = rng.choice(n // 2, p, replace=False)
    dst = n // 2 + rng.choice(n - n // 2, p, replace=False)
    x[dst] = x[src] + rng.normal(0, 0.2, (p, d)).astype(np.float32)
    return np.ascontiguousarray(x), np.stack([src, dst], 1)


def run_faiss(x: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, float, float]:
    import faiss

    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    index = faiss.IndexHNSWFlat(x.shape[1], nb.HNSW_M)
    index.hnsw.efConstruction = nb.HNSW_EF_CONSTRUCTION
    index.add(x)
    tb = time.perf_counter() - t
    index.hnsw.efSearch = nb.HNSW_EF_SEARCH
    t = time.perf_counter()
    _, idx = index.search(x, k + 1)
    return idx, tb, time.perf_counter() - t


def run_hnswlib(x: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, float, float]:
    import hnswlib

    t = time.perf_counter()
    index = hnswlib.Index(space="l2", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=nb.HNSW_M, ef_construction=nb.HNSW_EF_CONSTRUCTION, random_seed=0)
    index.set_num_threads(threads)
    index.add_items(x, np.arange(len(x)))
    tb = time.perf_counter() - t
    index.set_ef(nb.HNSW_EF_SEARCH)
    t = time.perf_counter()
    idx, _ = index.knn_query(x, k=k + 1)
    return idx.astype(np.int64), tb, time.perf_counter() - t


def run_usearch(x: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, float, float]:
    from usearch.index import Index

    t = time.perf_counter()
    index = Index(ndim=x.shape[1], metric="l2sq", dtype="f32", connectivity=nb.HNSW_M,
                  expansion_add=nb.HNSW_EF_CONSTRUCTION, expansion_search=nb.HNSW_EF_SEARCH)
    index.add(np.arange(len(x)), x, threads=threads)
    tb = time.perf_counter() - t
    t = time.perf_counter()
    res = index.search(x, k + 1, threads=threads)
    return np.asarray(res.keys, np.int64), tb, time.perf_counter() - t


LIBS = {"faiss": run_faiss, "hnswlib": run_hnswlib, "usearch": run_usearch}


def drop_self(idx: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(idx), k), np.int64)
    for i, row in enumerate(idx):
        r = row[row != i][:k]
        out[i, : len(r)] = r
        out[i, len(r):] = -1
    return out


def planted_found(idx: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """bool (P,): the copy is among the original's neighbours or the other way round."""
    a, b = pairs[:, 0], pairs[:, 1]
    return (idx[a] == b[:, None]).any(1) | (idx[b] == a[:, None]).any(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--libs", nargs="+", default=list(LIBS))
    ap.add_argument("--exact-full", type=int, default=20000, help="time the full exact graph up to this n")
    ap.add_argument("--m", type=int, default=nb.HNSW_M, help="HNSW links per node")
    ap.add_argument("--efc", type=int, default=nb.HNSW_EF_CONSTRUCTION, help="HNSW efConstruction")
    ap.add_argument("--efs", type=int, default=nb.HNSW_EF_SEARCH, help="HNSW efSearch")
    args = ap.parse_args()
    nb.HNSW_M, nb.HNSW_EF_CONSTRUCTION, nb.HNSW_EF_SEARCH = args.m, args.efc, args.efs
    rows = []
    for n in args.n:
        x, pairs = make_vectors(n, args.d, 0)
        q = np.sort(np.random.default_rng(1).choice(n, min(args.queries, n), replace=False))
        t = time.perf_counter()
        ex_q = exact_knn(x[q], x, args.k, self_rows=q)
        t_q = time.perf_counter() - t
        # planted pairs exact finds: query the pairs' ends exactly (cheap), not the whole graph
        ends = np.unique(pairs.ravel())
        ex_ends = exact_knn(x[ends], x, args.k, self_rows=ends)
        full_ex = np.full((n, args.k), -1, np.int64)
        full_ex[ends] = ex_ends
        ex_found = planted_found(full_ex, pairs)
        exact_all = None
        if n <= args.exact_full:
            t = time.perf_counter()
            exact_knn(x, x, args.k, self_rows=np.arange(n))
            exact_all = time.perf_counter() - t
        row = {"n": n, "d": args.d, "k": args.k, "hnsw": [args.m, args.efc, args.efs], "exact_graph_s": exact_all,
               "exact_est_graph_s": round(t_q * n / len(q), 1), "planted_pairs": int(len(pairs)),
               "planted_exact": int(ex_found.sum())}
        for lib in args.libs:
            idx, tb, tq = LIBS[lib](x, args.k, args.threads)
            idx = drop_self(idx, args.k)
            rec = float(np.mean([len(set(idx[i]) & set(ex_q[j])) / args.k for j, i in enumerate(q)]))
            found = planted_found(idx, pairs)
            row[lib] = {"build_s": round(tb, 2), "query_s": round(tq, 2), "recall_at_k": round(rec, 4),
                        "planted_found_of_exact": round(float((found & ex_found).sum() / max(ex_found.sum(), 1)), 4)}
            print(json.dumps({"n": n, lib: row[lib]}), flush=True)
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
