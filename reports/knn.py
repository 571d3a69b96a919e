"""An exact k-nearest-neighbour engine over feature matrices, computed in blocks under a memory budget
(never an N x N matrix): squared Euclidean distances from centred float32 products with a per-entry
error bound, k-th smallest distances kept per row across blocks, the symmetric case computing each
off-diagonal block once, and blocks spread over one worker thread per BLAS thread. `reports.metrics`
builds precision/recall, density/coverage and the memorization distances on it.
"""
from __future__ import annotations

import concurrent.futures
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from datacheck.errors import UserError

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


DEFAULT_MAX_MEMORY = 256 * 2**20  # bytes of block temporaries for the k-NN metrics
_U32 = 2.0**-24  # unit roundoff of float32
# bytes of temporaries budgeted per entry of a distance block: the float32 block (4), comparison masks
# (1 each), a partial sort's copy (4), on the dense merge path the argpartition of (vals | block)
# (4 + 8), with room to spare. Budgeting 20 or 12 (larger blocks) was no faster here (medians of 4
# alternated runs at 10,000 points: 6.29 s at 36, 6.33 s at 20, 6.55 s at 12) and costs more memory
_BYTES_PER_ENTRY = 36


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
        """Approximate d^2 (float32) for rows a[rs:re] x b[cs:ce]. ``a2``: the rows' `scaled` centred
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
