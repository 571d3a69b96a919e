"""Metrics: pure functions over feature matrices (numpy or torch, shape (N, D)), keyword-only ``real=``/``fake=``.

- `frechet_distance`, `fid_from_stats`, `fid_infinity`: FID in float64. The trace term
  tr sqrt(S1 S2) comes from a *symmetric* eigen-decomposition (eigvalsh of S1^1/2 S2 S1^1/2), or, when a
  set has fewer samples than dimensions, from the singular values of the centred cross product (an exact
  N x N problem). No ``scipy.linalg.sqrtm`` (broken in scipy 1.11.2-1.12, signature changed in 1.18).
- `kid`: unbiased MMD^2 with the kernel (x.y/d + 1)^3 over seeded subsets.
- `prdc`: precision/recall (Kynkaanniemi et al. 2019), density/coverage (Naeem et al. 2020),
  exact, computed in blocks under a memory budget, never an N x N matrix (the engine: `reports.knn`).
- `mode_coverage`: classes hit, KL(generated || real) class histograms, per-class recall.
- `memorization`: nearest-neighbour distance ratio against held-out data, and Meehan et al.'s C_T.

Sample-size honesty: FID is biased by about c/N, so every result should carry N (``reports.evaluate``
does) and compare arms at one fixed N; `fid_infinity` extrapolates to N = infinity.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from datacheck.errors import UserError

# the exact blocked k-NN engine the neighbourhood metrics run on (prdc, radii, nearest distances)
from .knn import (DEFAULT_MAX_MEMORY, _KNN, _Blocked, _Scratch, _blas_threads, _decide, _f32_down, _f32_up, _pair,
                  _parallel, as_features, knn_radii, nearest_distances)

log = logging.getLogger(__name__)

__all__ = [
    "as_features", "frechet_distance", "fid_from_stats", "fid_infinity", "feature_stats", "trace_sqrt_product",
    "kid", "prdc", "knn_radii", "nearest_distances", "mode_coverage", "memorization", "copying_ct",
]


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
    Distances are exact (float64, see `_Blocked`), so d == r is decided exactly, unlike prdc whose
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
    alarm baseline, near 0 for a sensible threshold). Also returns C_T (`copying_ct`) when ``ct``.
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
