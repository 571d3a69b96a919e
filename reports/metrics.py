"""Metrics: pure functions over feature matrices (numpy or torch, shape (N, D)), keyword-only ``real=``/``fake=``.

- :func:`frechet_distance`, :func:`fid_from_stats`, :func:`fid_infinity`: FID in float64. The trace term
  tr sqrt(S1 S2) comes from a *symmetric* eigen-decomposition (eigvalsh of S1^1/2 S2 S1^1/2), or, when a
  set has fewer samples than dimensions, from the singular values of the centred cross product (an exact
  N x N problem). No ``scipy.linalg.sqrtm`` (broken in scipy 1.11.2-1.12, signature changed in 1.18).
- :func:`kid`: unbiased MMD^2 with the kernel (x.y/d + 1)^3 over seeded subsets.
- :func:`prdc`: precision/recall (Kynkaanniemi et al. 2019), density/coverage (Naeem et al. 2020),
  exact, computed in blocks under a memory budget, never an N x N matrix.
- :func:`mode_coverage`: classes hit, KL(generated || real) class histograms, per-class recall.
- :func:`memorization`: nearest-neighbour distance ratio against held-out data, and Meehan et al.'s C_T.

Sample-size honesty: FID is biased by about c/N, so every result should carry N (``reports.evaluate``
does) and compare arms at one fixed N; :func:`fid_infinity` extrapolates to N = infinity.
"""
from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from datacheck.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "as_features", "frechet_distance", "fid_from_stats", "fid_infinity", "feature_stats", "trace_sqrt_product",
    "kid", "prdc", "knn_radii", "nearest_distances", "mode_coverage", "memorization", "copying_ct",
]

DEFAULT_MAX_MEMORY = 256 * 2**20  # bytes of block temporaries for the k-NN metrics
_U32 = 2.0**-24  # unit roundoff of float32
# bytes of temporaries budgeted per entry of a distance block: the float32 block (4), comparison masks
# (1 each), a partial sort's copy (4), on the dense merge path the argpartition of (vals | block)
# (4 + 8), with room to spare. Budgeting 20 or 12 (larger blocks) was no faster here (medians of 4
# alternated runs at 10,000 points: 6.29 s at 36, 6.33 s at 20, 6.55 s at 12) and costs more memory
_BYTES_PER_ENTRY = 36


# --------------------------------------------------------------------------- inputs
def as_features(x: Any, name: str = "features") -> np.ndarray:
    """A (N, D) float32/float64 numpy array from numpy or torch input (no copy when possible)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise UserError(f"{name} must be a non-empty (N, D) feature matrix, got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise UserError(f"{name} contains NaN or infinite values")
    return x


def _pair(real: Any, fake: Any) -> tuple[np.ndarray, np.ndarray]:
    r, f = as_features(real, "real"), as_features(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise UserError(f"real and fake features must have the same dimension, got {r.shape[1]} and {f.shape[1]}")
    return r, f


# --------------------------------------------------------------------------- FID
def feature_stats(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) in float64."""
    x = as_features(x)
    if len(x) < 2:
        raise UserError("FID needs at least 2 samples per set")
    mu = x.mean(0, dtype=np.float64)
    xc = x.astype(np.float64) - mu
    return mu, (xc.T @ xc) / (len(x) - 1)


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; round-off negative eigenvalues are clipped to 0."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr sqrt(S1 S2) for symmetric PSD S1, S2, from a symmetric eigenvalue problem.

    S1 S2 is similar to the symmetric PSD matrix S1^1/2 S2 S1^1/2, and, with a Cholesky factor
    S1 = L L', also to L' S2 L; so its eigenvalues are real and non-negative (round-off negatives are
    clipped) and ``eigvalsh`` applies: no complex parts to discard. The Cholesky form is used when S1
    (or S2) is positive definite (several times cheaper than an eigen-decomposition); otherwise
    S1^1/2 comes from ``eigh``.
    """
    s1 = np.asarray(s1, np.float64)
    s2 = np.asarray(s2, np.float64)
    m = None
    for a, b in ((s1, s2), (s2, s1)):
        try:
            chol = np.linalg.cholesky(a)
        except np.linalg.LinAlgError:
            continue
        m = chol.T @ b @ chol
        break
    if m is None:  # both singular (fewer samples than dimensions, constant features): eigh route
        r = _sym_sqrt(s1)
        m = r @ s2 @ r
    m = (m + m.T) * 0.5  # exact symmetry for eigvalsh
    w = np.linalg.eigvalsh(m)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def _trace_sqrt_gram(x1: np.ndarray, x2: np.ndarray) -> float:
    """tr sqrt(S1 S2) from samples when N < D: the non-zero eigenvalues of S1 S2 = A'A B'B / c equal the
    squared singular values of C = A B' / sqrt(c) (A, B centred, c = (n1-1)(n2-1)), an n1 x n2 problem."""
    a = x1.astype(np.float64) - x1.mean(0, dtype=np.float64)
    b = x2.astype(np.float64) - x2.mean(0, dtype=np.float64)
    c = (a @ b.T) / math.sqrt((len(a) - 1) * (len(b) - 1))
    return float(np.linalg.svd(c, compute_uv=False).sum())


def fid_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Frechet distance between N(mu1, S1) and N(mu2, S2): |mu1-mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise UserError(f"FID statistics have mismatched shapes: {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


def frechet_distance(*, real: Any, fake: Any) -> float:
    """FID between feature sets real (N1, D) and fake (N2, D), float64 statistics.

    Uses the Gram-matrix route when either set has fewer samples than dimensions (exact and cheaper),
    else the symmetric eigen-decomposition. Biased upwards by about c/N: compare at one fixed N.
    """
    r, f = _pair(real, fake)
    if len(r) < 2 or len(f) < 2:
        raise UserError("FID needs at least 2 samples per set")
    d = r.shape[1]
    mu1, mu2 = r.mean(0, dtype=np.float64), f.mean(0, dtype=np.float64)
    diff = mu1 - mu2
    if min(len(r), len(f)) < d:
        rc = r.astype(np.float64) - mu1
        fc = f.astype(np.float64) - mu2
        tr1 = float(np.einsum("ij,ij->", rc, rc)) / (len(r) - 1)
        tr2 = float(np.einsum("ij,ij->", fc, fc)) / (len(f) - 1)
        val = float(diff @ diff) + tr1 + tr2 - 2.0 * _trace_sqrt_gram(r, f)
    else:
        _, s1 = feature_stats(r)
        _, s2 = feature_stats(f)
        val = fid_from_stats(mu1, s1, mu2, s2)
    return max(val, 0.0) if val > -1e-9 * max(1.0, abs(val)) else val


def fid_infinity(*, real: Any, fake: Any, ns: Any = None, seed: int = 0) -> dict[str, Any]:
    """FID extrapolated to infinitely many fake samples (Chong & Forsyth 2020).

    FID is computed on seeded random subsets of ``fake`` of each size in ``ns`` (default: 8 sizes evenly
    spaced from N/5 to N) against all of ``real``; a least-squares line FID = a + b / n gives FID_inf = a.
    Returns ``{"fid_infinity", "slope", "ns", "fids"}``.
    """
    r, f = _pair(real, fake)
    n = len(f)
    if ns is None:
        ns = np.unique(np.linspace(max(2, n // 5), n, 8).astype(int))
    ns = [int(v) for v in ns]
    if len(ns) < 2 or min(ns) < 2 or max(ns) > n:
        raise UserError(f"fid_infinity needs at least 2 subset sizes in [2, {n}], got {ns}")
    rng = np.random.default_rng(seed)
    fids = [frechet_distance(real=r, fake=f[np.sort(rng.choice(n, m, replace=False))]) for m in ns]
    slope, intercept = np.polyfit(1.0 / np.asarray(ns, np.float64), np.asarray(fids), 1)
    return {"fid_infinity": float(intercept), "slope": float(slope), "ns": ns, "fids": [float(v) for v in fids]}


# --------------------------------------------------------------------------- KID
def _poly_kernel(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    k = a @ b.T
    k /= d
    k += 1.0
    return k * k * k


def kid(*, real: Any, fake: Any, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3.

    Each of ``subsets`` draws ``m = min(subset_size, N_real, N_fake)`` real and m fake rows without
    replacement from ``np.random.default_rng(seed)``. Returns (mean, std over subsets, ddof=0 as in
    torchmetrics). float64 throughout.
    """
    r, f = _pair(real, fake)
    m = min(int(subset_size), len(r), len(f))
    if m < 2:
        raise UserError("KID needs at least 2 samples per set")
    if subsets < 1:
        raise UserError(f"subsets must be >= 1, got {subsets}")
    d = r.shape[1]
    r64, f64 = r.astype(np.float64), f.astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = [(rng.choice(len(r), m, replace=False), rng.choice(len(f), m, replace=False)) for _ in range(subsets)]
    denom_same, denom_cross = m * (m - 1), m * m
    if (len(r) + len(f)) ** 2 <= 12_000_000 and subsets > 1:
        # small sets: kernel matrices once; a subset's kernel sums are then v' K w with 0/1 indicator
        # vectors, all subsets at once as one matrix product (no gathering of m x m sub-blocks)
        vr = np.zeros((len(r), subsets))
        vf = np.zeros((len(f), subsets))
        for s, (ir, jf) in enumerate(draws):
            vr[ir, s] = 1.0
            vf[jf, s] = 1.0
        krr, kff, krf = _poly_kernel(r64, r64, d), _poly_kernel(f64, f64, d), _poly_kernel(r64, f64, d)
        sxx = np.einsum("is,is->s", krr @ vr, vr) - vr.T @ np.diag(krr)
        syy = np.einsum("is,is->s", kff @ vf, vf) - vf.T @ np.diag(kff)
        sxy = np.einsum("is,is->s", krf @ vf, vr)
        scores = (sxx + syy) / denom_same - 2.0 * sxy / denom_cross
    else:
        scores = np.empty(subsets)
        for s, (ir, jf) in enumerate(draws):
            x, y = r64[ir], f64[jf]
            kxx, kyy, kxy = _poly_kernel(x, x, d), _poly_kernel(y, y, d), _poly_kernel(x, y, d)
            scores[s] = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / denom_same - 2.0 * kxy.sum() / denom_cross
    return float(scores.mean()), float(scores.std())


# --------------------------------------------------------------------------- exact blocked distances
def _even_split(n: int, most: int) -> int:
    """Block length <= ``most`` that cuts n into equal blocks (no small last block: a product of a thin
    block runs slower per flop)."""
    return -(-n // -(-n // most)) if n > 0 else 1


_tls = threading.local()  # .worker: index of the worker thread running a task (see _parallel)


class _Scratch:
    """Memory the blocked passes reuse: block buffers per (worker, slot), whole centred copies of sets
    (keyed by the id of the input array, which the caller keeps alive) and retired copies kept for
    reuse. Fresh large arrays are costly here (page faults on first touch, ~2 ms per MB on this
    machine), so one prdc call shares one scratch across its three passes."""

    def __init__(self) -> None:
        self.bufs: dict[tuple[int, str], np.ndarray] = {}
        self.cache: dict[int, np.ndarray] = {}
        self.spare: list[np.ndarray] = []

    def retire(self, x: np.ndarray) -> None:
        """x's centred copy is no longer needed: keep its memory for the next copy of that shape."""
        arr = self.cache.pop(id(x), None)
        if arr is not None:
            self.spare.append(arr)

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        for i, arr in enumerate(self.spare):
            if arr.shape == shape:
                return self.spare.pop(i)
        return np.empty(shape, np.float32)

    def clear(self) -> None:
        self.bufs.clear()
        self.cache.clear()
        self.spare.clear()


class _Blocked:
    """Blocked squared Euclidean distances between rows of A and B: fast float32 approximations with a
    rigorous error bound, plus exact float64 recomputation of the few pairs the bound cannot decide.

    Rows are centred on a shared float32 vector c (distances are translation invariant; centring shrinks
    the norms that the float32 error is proportional to). For the float32 inner product of length D,
    |fl(x.y) - x.y| <= gamma_D |x||y| <= gamma_D (|x|^2 + |y|^2) / 2 (Higham; any summation order), so
    |approx d^2 - d^2| <= tol * (|x|^2 + |y|^2) with tol = gamma_D + 16u, the 16u covering the rounding
    of the centred rows and of the final float32 sums. "Exact" below means computed in float64 as
    sum((x - y)^2) from the inputs, so identical rows have distance exactly 0.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, center: np.ndarray, max_memory: int,
                 scratch: _Scratch | None = None, workers: int = 1,
                 norms: tuple[np.ndarray | None, np.ndarray | None] = (None, None)) -> None:
        self.a, self.b = a, b
        self._own = scratch is None  # a shared scratch is cleared by its owner
        self.scratch = _Scratch() if scratch is None else scratch
        self.center = np.asarray(center, np.float64).astype(np.float32)
        d = a.shape[1]
        self.tol = d * _U32 / (1 - d * _U32) + 16 * _U32
        self.pair_chunk = max(64, int(max_memory) // (24 * d))
        # a whole centred float32 copy of the column set, when it fits in half the budget, saves
        # re-centring a column block for every row block (~5% of the run); the blocks get the rest of the
        # budget. Row blocks are centred once each anyway. The copy may come from a shared scratch
        cache = self.scratch.cache
        budget = int(max_memory)
        if id(b) not in cache and 4 * b.size <= budget // 2:
            cache[id(b)] = self._centred_copy(b)
        if id(b) in cache:
            budget -= 4 * b.size
        # each worker thread has its own block buffers and temporaries
        entries = max(1024, budget // (_BYTES_PER_ENTRY * max(1, workers)))
        side = max(32, int(math.sqrt(entries)))
        self.rb = _even_split(len(a), side)
        self.cb = _even_split(len(b), max(32, entries // self.rb))
        # squared norms of the centred rows (float64), or the same values from another engine
        self.na = self._norms(a) if norms[0] is None else norms[0]
        self.nb = self.na if b is a else self._norms(b) if norms[1] is None else norms[1]
        self.na32 = self.na.astype(np.float32)  # their float32 rounding is covered by the 16u in tol
        self.nb32 = self.na32 if b is a else self.nb.astype(np.float32)

    def _buffer(self, slot: str | None, shape: tuple[int, int]) -> np.ndarray | None:
        """A float32 array of ``shape`` in a buffer reused from call to call (fresh large arrays cost page
        faults on every block), one per slot and thread; None for no slot."""
        if slot is None:
            return None
        size = shape[0] * shape[1]
        bufs = self.scratch.bufs
        key = (getattr(_tls, "worker", 0), slot)
        buf = bufs.get(key)
        if buf is None or buf.size < size:
            buf = bufs[key] = np.empty(size, np.float32)
        return buf[:size].reshape(shape)

    def release(self) -> None:
        """Drop the block buffers and centred copies of an unshared scratch (after a pass; exact values
        need neither)."""
        if self._own:
            self.scratch.clear()

    def _centred_copy(self, x: np.ndarray) -> np.ndarray:
        out = self.scratch.empty(x.shape)
        for s in range(0, len(x), self.pair_chunk):
            out[s : s + self.pair_chunk] = self._centre(x, s, s + self.pair_chunk, None)
        return out

    def centred(self, x: np.ndarray, s: int, e: int, slot: str | None = None) -> np.ndarray:
        """float32 rows x[s:e] - c (one rounding per element, covered by the bound): a view of the cached
        copy, or computed into buffer ``slot`` (valid until the next call with that slot). Read only."""
        full = self.scratch.cache.get(id(x))
        if full is not None:
            return full[s:e]
        return self._centre(x, s, e, slot)

    def _centre(self, x: np.ndarray, s: int, e: int, slot: str | None) -> np.ndarray:
        rows = x[s:e]
        out = self._buffer(slot, rows.shape)
        if x.dtype == np.float32:
            return np.subtract(rows, self.center, out=out)
        if out is None:
            return (rows - self.center.astype(np.float64)).astype(np.float32)
        return np.subtract(rows, self.center.astype(np.float64), out=out, casting="same_kind")  # float64 loop

    def _norms(self, x: np.ndarray) -> np.ndarray:
        out = np.empty(len(x), np.float64)
        for s in range(0, len(x), self.pair_chunk):
            c = self.centred(x, s, s + self.pair_chunk)
            out[s : s + len(c)] = np.einsum("ij,ij->i", c, c, dtype=np.float64)
        return out

    def scaled(self, ac: np.ndarray) -> np.ndarray:
        """-2 * centred rows: a power-of-two scaling is exact, so the product below gives fl(-2 x.y) and
        saves a pass over every block (buffer slot "row2")."""
        return np.multiply(ac, np.float32(-2.0), out=self._buffer("row2", ac.shape))

    def block(self, rs: int, re: int, cs: int, ce: int, a2: np.ndarray | None = None,
              bc: np.ndarray | None = None) -> np.ndarray:
        """Approximate d^2 (float32) for rows a[rs:re] x b[cs:ce]. ``a2``: the rows' :meth:`scaled` centred
        block, ``bc``: the columns' centred block (either may be passed in to reuse it).

        The result lives in a buffer reused by the next call: use it before asking for another block."""
        if a2 is None:
            a2 = self.scaled(self.centred(self.a, rs, re, "row"))
        if bc is None:
            bc = self.centred(self.b, cs, ce, "col")
        g = self._buffer("block", (re - rs, ce - cs))
        np.matmul(a2, bc.T, out=g)
        g += self.na32[rs:re, None]
        g += self.nb32[None, cs:ce]
        return g

    def exact(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Exact float64 d^2 for pairs (a[i], b[j])."""
        out = np.empty(len(i), np.float64)
        step = 256  # small chunks stay in cache: about twice as fast as large ones
        for s in range(0, len(i), step):
            diff = np.subtract(self.a[i[s : s + step]], self.b[j[s : s + step]], dtype=np.float64)
            out[s : s + len(diff)] = np.einsum("ij,ij->i", diff, diff)
        return out

    def exact_row(self, i: int) -> np.ndarray:
        out = np.empty(len(self.b), np.float64)
        x = self.a[i].astype(np.float64)
        for s in range(0, len(self.b), self.pair_chunk):
            diff = self.b[s : s + self.pair_chunk].astype(np.float64) - x
            out[s : s + len(diff)] = np.einsum("ij,ij->i", diff, diff)
        return out


def _sort_key(rows: np.ndarray, v: np.ndarray) -> np.ndarray:
    """int64 keys ordering by (row, float32 value): the value's bits, flipped so that integer order is
    float order (negative values included: approximate d^2 may round below 0). One argsort of these is
    about twice as fast as a two-key lexsort."""
    b = v.view(np.int32)
    return (rows.astype(np.int64) << 32) | ((b ^ ((b >> 31) & 0x7FFFFFFF)).astype(np.int64) + 2**31)


def _merge_best(vals: np.ndarray, idx: np.ndarray, block: np.ndarray, cols0: int, trans: bool = False,
                cap: np.ndarray | None = None) -> None:
    """Keep, per row, the m smallest of (vals | B); in place. B = ``block``, or ``block.T`` when ``trans``
    (the symmetric pass serves both sides from one contiguous block); B's columns are global cols0 + j.

    ``cap``: per-row values known to be >= the row's m-th smallest over *all* its candidates (here and in
    other workers' lists); entries above it can never be among the m best, so they are not kept."""
    m = vals.shape[1]
    eff = block.T if trans else block
    vmax = vals.max(1)
    # only entries below a row's current m-th best (or at most its cap) can enter
    thr, below = (vmax, np.less) if cap is None else (np.minimum(vmax, cap), np.less_equal)
    hits = below(block, thr[None, :] if trans else thr[:, None])
    n_hits = int(np.count_nonzero(hits))
    if n_hits == 0:
        return
    if n_hits > block.size // 16:  # early blocks: most entries compete, a partial sort per row is cheaper
        if np.isinf(vmax).all() and eff.shape[1] >= m:
            # nothing kept yet: each row's m-th smallest value (a values-only partition, ~3x cheaper than
            # argpartition) admits about m entries per row, which the sparse merge below takes
            t = np.partition(eff, m - 1, axis=1)[:, m - 1]
            hits = block <= (t[None, :] if trans else t[:, None])
        else:
            cat = np.concatenate([vals, eff], axis=1)
            part = np.argpartition(cat, m - 1, axis=1)[:, :m]
            new_vals = np.take_along_axis(cat, part, axis=1)
            old = np.take_along_axis(idx, np.minimum(part, m - 1), axis=1)
            idx[...] = np.where(part < m, old, part - m + cols0)
            vals[...] = new_vals
            return
    # later blocks: few hits; merge them with the kept values of the rows they touch by one sort over
    # (row, value). flatnonzero + divmod: np.nonzero on a 2-D mask is ~10x slower
    flat = np.flatnonzero(hits)
    v = block.reshape(-1)[flat]
    if trans:
        c, r = np.divmod(flat, block.shape[1])
    else:
        r, c = np.divmod(flat, block.shape[1])
    touched = np.zeros(vals.shape[0], bool)
    touched[r] = True
    u = np.flatnonzero(touched)  # rows with hits; the others keep their lists
    local = np.cumsum(touched) - 1
    nu = len(u)
    rows = np.concatenate([np.repeat(np.arange(nu), m), local[r]])
    v = np.concatenate([vals[u].ravel(), v])
    ids = np.concatenate([idx[u].ravel(), c + cols0])
    order = np.argsort(_sort_key(rows, v))
    rows, v, ids = rows[order], v[order], ids[order]
    pos = np.arange(len(rows)) - np.searchsorted(rows, np.arange(nu))[rows]
    keep = pos < m  # every touched row has at least its m old entries: all m slots are rewritten
    vals[u[rows[keep]], pos[keep]] = v[keep]
    idx[u[rows[keep]], pos[keep]] = ids[keep]


def _blas_threads(work: float = math.inf) -> int:
    """Threads the BLAS library is set to use (OMP_NUM_THREADS etc. respected), at least 1; 1 when the
    ``work`` (pairs x dimensions) is too small to repay starting threads and limiting BLAS (~1 ms each:
    500 x 500 points in 64 dimensions took 25 ms on two workers against 11 ms on one)."""
    if work < 2**28:
        return 1
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - scikit-learn brings it
        return 1
    n = [int(i.get("num_threads") or 1) for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(1, min(max(n, default=1), os.cpu_count() or 1))


def _parallel(tasks: Sequence[Any], work: Callable[[int, Any], None], workers: int) -> None:
    """Run ``work(worker, task)`` for every task on ``workers`` threads that pull tasks in list order.

    The blocked passes alternate a matrix product with single-threaded numpy bookkeeping. Rather than one
    product on all BLAS threads followed by bookkeeping on one core, each worker runs whole blocks with a
    one-thread BLAS (as fast in sum: both are bound by the cores' FMA units) and its own bookkeeping
    (numpy releases the GIL), so every core stays busy. Each worker keeps its own accumulators (indexed
    by ``worker``), merged by the caller. The BLAS thread count is restored afterwards."""
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            work(0, t)
        return
    from threadpoolctl import threadpool_limits

    lock = threading.Lock()
    queue = iter(tasks)
    done = object()

    def loop(w: int) -> None:
        _tls.worker = w  # selects this worker's block buffers
        while True:
            with lock:
                t = next(queue, done)
            if t is done:
                return
            work(w, t)

    with threadpool_limits(1, user_api="blas"), \
            concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="metrics") as pool:
        for f in [pool.submit(loop, w) for w in range(workers)]:
            f.result()


class _KNN:
    """kth-smallest (1-based) squared distance from each row of ``a`` to the rows of ``b``: an
    approximation with a per-row error bound from one blocked pass, and exact values on demand.

    ``b=None`` means b = a, counting each point itself (distance 0): kth = k + 1 gives the distance to
    the k-th nearest *other* point. The symmetric case computes each off-diagonal block once.
    Exact values are computed only for the rows asked for (``exact``): prdc needs them only where a
    comparison falls inside the error bounds, which is rare.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray | None, kth: int, center: np.ndarray, max_memory: int,
                 extra: int = 8, scratch: _Scratch | None = None, workers: int = 1) -> None:
        sym = b is None
        bb = a if sym else b
        n_b = len(bb)
        if not 1 <= kth <= n_b:
            raise UserError(f"need at least {kth} points to find the {kth}-th nearest neighbour, got {n_b}")
        self.kth = kth
        eng = self.eng = _Blocked(a, bb, center, max_memory, scratch, workers)
        m = min(n_b, kth + extra)
        # each worker keeps the m best per point among the pairs it computed; the union of its lists
        # holds the m best overall
        vals = np.full((workers, len(a), m), np.inf, np.float32)
        idx = np.full((workers, len(a), m), -1, np.int64)
        if sym:
            # row strips of height h against the columns at and after the strip: the square on the
            # diagonal is computed whole although half of it would do, so thin strips waste less
            # (N h / 2 pairs in all); wider column blocks keep each product within the budget
            h = _even_split(len(a), max(32, min(eng.rb, eng.cb) // 2))
            w = max(32, (eng.rb * eng.cb) // h)

            # first the diagonal squares: each point's m-th best within its own strip caps its m-th best
            # overall, so every later block keeps only the few entries under the caps (no worker starts
            # a point's list from nothing, which takes a full partial sort)
            cap = np.empty(len(a), np.float32)

            def square(wk: int, rs: int) -> None:
                re = min(rs + h, len(a))
                ac = eng.centred(a, rs, re, "row")
                blk = eng.block(rs, re, rs, re, a2=eng.scaled(ac), bc=ac)
                _merge_best(vals[wk, rs:re], idx[wk, rs:re], blk, rs)
                cap[rs:re] = vals[wk, rs:re].max(1)

            def strip(wk: int, rs: int) -> None:
                v, ix = vals[wk], idx[wk]
                re = min(rs + h, len(a))
                a2 = eng.scaled(eng.centred(a, rs, re, "row"))
                nw = _even_split(len(a) - re, w)
                for cs in range(re, len(a), nw):
                    ce = min(cs + nw, len(a))
                    blk = eng.block(rs, re, cs, ce, a2=a2)
                    _merge_best(v[rs:re], ix[rs:re], blk, cs, cap=cap[rs:re])
                    # the same block, transposed, serves the column points
                    _merge_best(v[cs:ce], ix[cs:ce], blk, rs, trans=True, cap=cap[cs:ce])

            _parallel(range(0, len(a), h), square, workers)
            _parallel(range(0, len(a) - h, h), strip, workers)  # longest strips first; the last has none
        else:
            def rows(wk: int, rs: int) -> None:
                re = min(rs + eng.rb, len(a))
                a2 = eng.scaled(eng.centred(a, rs, re, "row"))
                for cs in range(0, n_b, eng.cb):
                    ce = min(cs + eng.cb, n_b)
                    _merge_best(vals[wk, rs:re], idx[wk, rs:re], eng.block(rs, re, cs, ce, a2=a2), cs)

            _parallel(range(0, len(a), eng.rb), rows, workers)
        eng.release()  # the object lives on for exact values; its block buffers need not
        vals = np.concatenate(list(vals), axis=1)
        idx = np.concatenate(list(idx), axis=1)
        order = np.argsort(vals, axis=1)[:, :m]
        vals = np.take_along_axis(vals, order, axis=1)
        idx = np.take_along_axis(idx, order, axis=1)
        self.approx = vals[:, kth - 1].astype(np.float64)
        # every approximate value is within its bound of the exact one, and an order statistic moves by
        # at most the largest bound in its row: |exact kth - approx kth| <= bound. All points at or below
        # the exact kth value are among the kept m candidates when the m-th kept value exceeds
        # approx_kth + 2 * bound; rows where that fails are recomputed in full (rare).
        self.bound = eng.tol * (eng.na + eng.nb.max()) + 1e-30
        self.ok = (m == n_b) | (vals[:, -1].astype(np.float64) > self.approx + 2 * self.bound)
        # only kept values within 2 * bound of the approximate kth can be the exact kth: mark the others
        idx[vals.astype(np.float64) > (self.approx + 2 * self.bound)[:, None]] = -1
        self.idx = idx
        self._exact = np.full(len(a), np.nan)
        self._lock = threading.Lock()  # exact() may be called from several workers

    def exact(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Exact kth-smallest squared distances of ``rows`` (default all), computed once per row."""
        rows = np.arange(len(self._exact)) if rows is None else np.asarray(rows, np.int64)
        with self._lock:
            return self._exact_locked(rows)

    def _exact_locked(self, rows: np.ndarray) -> np.ndarray:
        todo = np.unique(rows[np.isnan(self._exact[rows])])
        if len(todo):
            ok = todo[self.ok[todo]]
            if len(ok):
                cand = self.idx[ok]
                ii, jj = np.nonzero(cand >= 0)
                ex = np.full(cand.shape, np.inf)
                ex[ii, jj] = self.eng.exact(ok[ii], cand[ii, jj])
                self._exact[ok] = np.partition(ex, self.kth - 1, axis=1)[:, self.kth - 1]
            for i in todo[~self.ok[todo]]:
                self._exact[i] = np.partition(self.eng.exact_row(int(i)), self.kth - 1)[self.kth - 1]
        return self._exact[rows]


def knn_radii(x: Any, k: int = 5, max_memory: int = DEFAULT_MAX_MEMORY) -> np.ndarray:
    """Distance from each row of x (N, D) to its k-th nearest other row (duplicates count), float64."""
    x = as_features(x)
    if not 1 <= k < len(x):
        raise UserError(f"k must be in [1, {len(x) - 1}] for {len(x)} points, got {k}")
    workers = _blas_threads(len(x) ** 2 * x.shape[1] / 2)
    return np.sqrt(_KNN(x, None, k + 1, x.mean(0, dtype=np.float64), max_memory, workers=workers).exact())


def nearest_distances(x: Any, ref: Any, max_memory: int = DEFAULT_MAX_MEMORY) -> np.ndarray:
    """Distance from each row of x (N, D) to its nearest row of ref (M, D), float64, exact."""
    x, ref = _pair(x, ref)
    workers = _blas_threads(len(x) * len(ref) * x.shape[1])
    return np.sqrt(_KNN(x, ref, 1, ref.mean(0, dtype=np.float64), max_memory, workers=workers).exact())


def _f32_down(x: np.ndarray) -> np.ndarray:
    """Largest float32 values <= x (float64): thresholds stay on the safe side after the cast."""
    y = x.astype(np.float32)
    return np.where(y > x, np.nextafter(y, np.float32(-np.inf)), y)


def _f32_up(x: np.ndarray) -> np.ndarray:
    """Smallest float32 values >= x (float64)."""
    y = x.astype(np.float32)
    return np.where(y < x, np.nextafter(y, np.float32(np.inf)), y)


def _decide(blk: np.ndarray, lo: np.ndarray, hi: np.ndarray, rows: bool) -> tuple[np.ndarray, ...]:
    """Which pairs of an approximate d^2 block lie inside a per-row (``rows``) or per-column threshold:
    surely inside below ``lo``, surely outside above ``hi``, undecided between (float32 thresholds).

    Returns (surely inside per column: count, per row: any, undecided pair rows, undecided pair cols).
    Pairs inside a ball are few (about k per point when the sets match), so they are found as index
    lists rather than kept as masks, unless a block holds many (e.g. one set collapsed onto a mode)."""
    lo_b, hi_b = (lo[:, None], hi[:, None]) if rows else (lo[None, :], hi[None, :])
    cand = blk <= hi_b
    if int(np.count_nonzero(cand)) <= blk.size // 8:
        flat = np.flatnonzero(cand)  # flatnonzero + divmod: np.nonzero on a 2-D mask is ~10x slower
        i, j = np.divmod(flat, blk.shape[1])
        sure = blk.reshape(-1)[flat] < (lo[i] if rows else lo[j])
        count = np.bincount(j[sure], minlength=blk.shape[1])
        anyr = np.zeros(blk.shape[0], bool)
        anyr[i[sure]] = True
        amb = ~sure
        return count, anyr, i[amb], j[amb]
    sure_m = blk < lo_b
    i, j = np.divmod(np.flatnonzero(cand & ~sure_m), blk.shape[1])
    return sure_m.sum(0), sure_m.any(1), i, j


def prdc(*, real: Any, fake: Any, k: int = 5, max_memory: int = DEFAULT_MAX_MEMORY,
         boundary: str = "closed") -> dict[str, float]:
    """Precision, recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020).

    The k-NN ball of a real point has radius r_i = distance to its k-th nearest *other* real point
    (the (k+1)-th smallest distance counting itself; an exact duplicate is another point at distance 0).
    precision = share of fakes inside some real ball; recall = share of reals inside some fake ball;
    density = mean over fakes of (number of real balls containing it) / k; coverage = share of reals
    whose ball contains some fake.

    Boundary rule: ``"closed"`` (default) counts a point at distance d <= r as inside, like the original
    precision/recall code and torch-fidelity; ``"open"`` uses d < r like the ``prdc`` package. On
    continuous data the two agree (ties have probability zero). They differ with exact duplicates: a real
    image present k+1 or more times has radius 0, and a fake that copies it is inside the closed ball but
    outside the open one. We count it as inside because a zero-radius ball around a real point still
    contains that point; copies are flagged by the memorization metric, not by hiding them here.
    Distances are exact (float64, see :class:`_Blocked`), so d == r is decided exactly, unlike prdc whose
    float32 distances of duplicates are round-off noise.

    Memory: temporaries stay under about ``max_memory`` bytes (besides the inputs and O(N) vectors);
    never an N x N matrix.
    """
    r, f = _pair(real, fake)
    if boundary not in ("closed", "open"):
        raise UserError(f"boundary must be 'closed' or 'open', got {boundary!r}")
    if not 1 <= k < min(len(r), len(f)):
        raise UserError(f"k must be in [1, {min(len(r), len(f)) - 1}] for {len(r)} real and {len(f)} fake points, got {k}")
    center = r.mean(0, dtype=np.float64)
    workers = _blas_threads((len(r) + len(f)) ** 2 * r.shape[1] / 2)
    scratch = _Scratch()  # buffers shared by the three passes; the fake set's centred copy serves two
    kr = _KNN(r, None, k + 1, center, max_memory, scratch=scratch, workers=workers)  # squared real radii
    scratch.retire(r)
    ks = _KNN(f, None, k + 1, center, max_memory, scratch=scratch, workers=workers)  # squared fake radii
    inside = np.less_equal if boundary == "closed" else np.less
    eng = _Blocked(r, f, center, max_memory, scratch, workers, norms=(kr.eng.na, ks.eng.na))
    # per worker: real balls containing each fake, pairs recomputed exactly. Each task owns a block of
    # real points, so the per-real flags below are written by one worker per row
    density_count = np.zeros((workers, len(f)), np.int64)
    n_exact = np.zeros(workers, np.int64)
    covered = np.zeros(len(r), bool)  # real ball contains some fake
    recalled = np.zeros(len(r), bool)  # real point inside some fake ball

    def settle(pending: list[tuple[np.ndarray, np.ndarray]]) -> int:
        """Recompute the pending recall pairs of points no ball holds surely; returns how many."""
        pi = np.concatenate([p[0] for p in pending])
        pj = np.concatenate([p[1] for p in pending])
        pending.clear()
        todo = ~recalled[pi]
        pi, pj = pi[todo], pj[todo]
        recalled[pi[inside(eng.exact(pi, pj), ks.exact(pj))]] = True
        return len(pi)

    # row blocks in a multiple of the workers, so that none waits idle at the end
    n_blocks = -(-len(r) // eng.rb)
    rb = -(-len(r) // (-(-n_blocks // workers) * workers))

    def row_block(wk: int, rs: int) -> None:
        re = min(rs + rb, len(r))
        a2 = eng.scaled(eng.centred(r, rs, re, "row"))
        na_max = float(eng.na[rs:re].max())
        pending: list[tuple[np.ndarray, np.ndarray]] = []  # undecided (real, fake) pairs for recall
        n_pending = 0
        for cs in range(0, len(f), eng.cb):
            ce = min(cs + eng.cb, len(f))
            blk = eng.block(rs, re, cs, ce, a2=a2)
            # one real-fake block serves all four metrics. A pair is decided by the approximation
            # unless it lies within (its distance bound, tol * (|x|^2 + |y|^2), + the radius bound) of
            # the threshold; those few pairs are recomputed exactly, radius included
            slack = eng.tol * (eng.na[rs:re] + float(eng.nb[cs:ce].max())) + kr.bound[rs:re]
            lo, hi = _f32_down(kr.approx[rs:re] - slack), _f32_up(kr.approx[rs:re] + slack)
            count, anyr, ii, jj = _decide(blk, lo, hi, rows=True)
            if len(ii):
                n_exact[wk] += len(ii)
                res = inside(eng.exact(ii + rs, jj + cs), kr.exact(ii + rs))
                count += np.bincount(jj[res], minlength=ce - cs)
                anyr[ii[res]] = True
            density_count[wk, cs:ce] += count
            covered[rs:re] |= anyr
            # recall only asks whether some fake ball holds the real point: undecided pairs are kept and
            # recomputed only for points that no ball holds surely
            slack = eng.tol * (na_max + eng.nb[cs:ce]) + ks.bound[cs:ce]
            lo, hi = _f32_down(ks.approx[cs:ce] - slack), _f32_up(ks.approx[cs:ce] + slack)
            _, anyr, ii, jj = _decide(blk, lo, hi, rows=False)
            recalled[rs:re] |= anyr
            if len(ii):
                pending.append((ii + rs, jj + cs))
                n_pending += len(ii)
                if n_pending > blk.size // 8:  # keep the list within the memory budget
                    n_exact[wk] += settle(pending)
                    n_pending = 0
        if pending:  # the row block has met every fake: settle only what is still open
            n_exact[wk] += settle(pending)

    _parallel(range(0, len(r), rb), row_block, workers)
    density_count = density_count.sum(0)
    scratch.clear()
    log.debug("prdc: %d pairs recomputed exactly; exact radii for %d real and %d fake points", n_exact.sum(),
              int((~np.isnan(kr._exact)).sum()), int((~np.isnan(ks._exact)).sum()))
    return {
        "precision": float((density_count > 0).mean()),
        "recall": float(recalled.mean()),
        "density": float((1.0 / k) * density_count.mean()),  # same operation order as prdc
        "coverage": float(covered.mean()),
    }


# --------------------------------------------------------------------------- mode coverage
def mode_coverage(*, real_labels: Any, fake_probs: Any = None, fake_labels: Any = None, n_classes: int | None = None,
                  min_share: float = 0.2, alpha: float = 0.5) -> dict[str, Any]:
    """How many classes the generated samples hit and how far their class histogram is from the real one.

    Generated samples are labelled by ``fake_labels`` or by the argmax of ``fake_probs`` (N, K) from a
    classifier trained on real data. Unknown real labels (-1) are ignored.

    - ``modes_covered``: classes c whose share among generated samples is at least
      ``min_share`` x (c's share among real samples); default min_share = 0.2, i.e. 2% of the samples
      for a balanced 10-class set. Relative to the real share so rare classes of an imbalanced set can
      count, and well above the few stray samples a 95-99% accurate classifier misfiles into a class.
    - ``mode_kl``: KL(generated || real) in nats between class histograms. The generated histogram is
      used as is (0 log 0 = 0); the real one gets ``alpha`` (Jeffreys, 0.5) pseudo-counts per class so a
      class absent from the real set gives a finite value.
    - ``per_class_recall[c]`` = min(p_gen[c], p_real[c]) / p_real[c]: the share of class c's real mass the
      generator reproduces (1 = at least as frequent as in real data); its p_real-weighted mean,
      ``class_recall`` = 1 - total variation distance.
    """
    rl = np.asarray(real_labels).astype(np.int64).ravel()
    rl = rl[rl >= 0]
    if (fake_probs is None) == (fake_labels is None):
        raise UserError("mode_coverage needs exactly one of fake_probs= or fake_labels=")
    if fake_probs is not None:
        p = as_features(fake_probs, "fake_probs")
        fl = p.argmax(1)
        k_probs = p.shape[1]
    else:
        fl = np.asarray(fake_labels).astype(np.int64).ravel()
        k_probs = 0
    k = int(n_classes or max(k_probs, int(rl.max(initial=-1)) + 1, int(fl.max(initial=-1)) + 1))
    if k < 1 or len(rl) == 0 or len(fl) == 0:
        raise UserError("mode_coverage needs labeled real samples, generated samples and at least one class")
    if fl.min() < 0 or fl.max() >= k or rl.max() >= k:
        raise UserError(f"labels must lie in [0, {k}) for n_classes={k}")
    cf = np.bincount(fl, minlength=k).astype(np.float64)
    cr = np.bincount(rl, minlength=k).astype(np.float64)
    pf = cf / cf.sum()
    pr_raw = cr / cr.sum()
    pr = (cr + alpha) / (cr.sum() + alpha * k)
    nz = pf > 0
    kl = float(np.sum(pf[nz] * np.log(pf[nz] / pr[nz])))
    with np.errstate(divide="ignore", invalid="ignore"):
        pcr = np.where(pr_raw > 0, np.minimum(pf, pr_raw) / pr_raw, np.nan)
    return {
        "modes_covered": int(((pf >= float(min_share) * pr_raw) & (pr_raw > 0)).sum()),
        "n_modes": int((pr_raw > 0).sum()),
        "min_share": float(min_share),
        "mode_kl": kl,
        "per_class_recall": [None if np.isnan(v) else float(v) for v in pcr],
        "class_recall": float(np.minimum(pf, pr_raw).sum()),
        "fake_class_hist": [float(v) for v in pf],
        "real_class_hist": [float(v) for v in pr_raw],
    }


# --------------------------------------------------------------------------- memorization
def _mann_whitney_z(q: np.ndarray, p: np.ndarray) -> float:
    """z-score of the Mann-Whitney U statistic U = #{(q, p): q > p} + 0.5 #{q == p} (normal
    approximation, no continuity or tie correction, as in Meehan et al.'s code). Negative: q smaller."""
    from scipy.stats import rankdata

    m, n = len(q), len(p)
    ranks = rankdata(np.concatenate([q, p]))
    u = ranks[:m].sum() - m * (m + 1) / 2.0
    return float((u - m * n / 2.0) / math.sqrt(m * n * (m + n + 1) / 12.0))


def copying_ct(*, train: Any, fake: Any, heldout: Any, n_cells: int | None = None, min_fake_per_cell: int = 20,
               seed: int = 0, d_fake: np.ndarray | None = None, d_heldout: np.ndarray | None = None) -> dict[str, Any]:
    """Meehan et al. (2020)'s data-copying statistic C_T.

    The space is cut into ``n_cells`` cells by k-means on ``train`` (default: len(heldout) // 40, clamped
    to [2, 20], so cells hold enough held-out points). In each cell pi, the distances to the nearest
    training point of the generated samples in pi and of the held-out samples in pi are compared with a
    Mann-Whitney U test, z-score Z_U(pi). C_T is the mean of Z_U(pi) weighted by the held-out mass of pi,
    over cells with at least ``min_fake_per_cell`` generated and 1 held-out sample(s).
    C_T << 0 (e.g. below -3): generated samples sit closer to the training set than fresh real data
    does, i.e. data copying; C_T >> 0: underfitting.
    """
    from sklearn.cluster import KMeans

    t, f = _pair(train, fake)
    h = as_features(heldout, "heldout")
    if d_fake is None:
        d_fake = nearest_distances(f, t)
    if d_heldout is None:
        d_heldout = nearest_distances(h, t)
    k = n_cells if n_cells is not None else int(np.clip(len(h) // 40, 2, 20))
    k = max(1, min(int(k), len(t)))
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(t.astype(np.float64))
    cf, ch = km.predict(f.astype(np.float64)), km.predict(h.astype(np.float64))
    zs, ws = [], []
    for c in range(k):
        q, p = d_fake[cf == c], d_heldout[ch == c]
        if len(q) >= min_fake_per_cell and len(p) >= 1:
            zs.append(_mann_whitney_z(q, p))
            ws.append(len(p) / len(h))
    if not ws:
        return {"ct_score": None, "ct_cells_used": 0, "ct_cells": k}
    ws_a = np.asarray(ws)
    return {"ct_score": float(np.dot(ws_a, zs) / ws_a.sum()), "ct_cells_used": len(ws), "ct_cells": k}


def memorization(*, train: Any, fake: Any, heldout: Any, ratio_threshold: float = 1 / 3, quantile: float = 0.5,
                 ct: bool = True, n_cells: int | None = None, seed: int = 0,
                 max_memory: int = DEFAULT_MAX_MEMORY) -> dict[str, Any]:
    """Share of generated samples that look copied from the training set.

    d(x) = distance from x to its nearest training sample. The reference distance is the ``quantile``
    (default median) of d over the held-out real samples, which were not trained on. A generated sample
    counts as memorized when d(fake) < ``ratio_threshold`` x reference (default 1/3: three times closer
    to a training image than a typical unseen real image is). ``memorization`` is that share;
    ``memorization_heldout_rate`` is the same share among the held-out samples themselves (the false
    alarm baseline, near 0 for a sensible threshold). Also returns C_T (:func:`copying_ct`) when ``ct``.
    """
    t, f = _pair(train, fake)
    h = as_features(heldout, "heldout")
    if h.shape[1] != t.shape[1]:
        raise UserError("heldout features must have the same dimension as train")
    d_f = nearest_distances(f, t, max_memory)
    d_h = nearest_distances(h, t, max_memory)
    ref = float(np.quantile(d_h, quantile))
    cut = ratio_threshold * ref
    out: dict[str, Any] = {
        "memorization": float((d_f < cut).mean()),
        "memorization_heldout_rate": float((d_h < cut).mean()),
        "memorization_threshold": float(ratio_threshold),
        "memorization_reference_distance": ref,
        "median_nn_ratio": float(np.median(d_f) / ref) if ref > 0 else None,
    }
    if ct:
        out.update(copying_ct(train=t, fake=f, heldout=h, n_cells=n_cells, seed=seed, d_fake=d_f, d_heldout=d_h))
    return out
