"""Paired effects of a study: for every factor x level x model x headline metric, how far the arm moved
the metric from the baseline, with an interval and a test instead of "twice the larger std".

Seeds are paired: seed s of an arm and seed s of the same model's baseline share everything but the
factor, so the effect is the mean of the per-seed differences (arm - baseline). For each:

- ``ci_low`` / ``ci_high``: a seeded bootstrap 95% percentile interval of that mean (pairs resampled);
- ``p_value``: the exact paired sign-flip test (two-sided; every one of the 2^n sign patterns of the
  differences, or 20,000 seeded draws beyond 16 pairs): with 2 pairs it cannot go below 0.5, which is
  the honest answer to "is this clear with 2 seeds?";
- ``p_holm``: Holm's step-down adjustment over every test of the study;
- ``direction``: ``worse`` or ``better`` when the interval excludes 0 (oriented by the metric: a higher
  FID is worse, a higher recall better), else ``none``.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

# headline metrics and whether higher is better
HEADLINE: dict[str, bool] = {
    "fid": False, "kid_mean": False, "precision": True, "recall": True, "coverage": True, "mode_kl": False,
    "label_agreement": True, "memorization": False, "copy_rate": False,
}
COLUMNS = ("factor", "kind", "level", "model", "metric", "baseline_mean", "arm_mean", "effect", "ci_low",
           "ci_high", "p_value", "p_holm", "n_pairs", "direction")


def sign_flip_p(d: Iterable[float], draws: int = 20_000, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip (permutation) test of mean(d) = 0: the share of sign
    patterns whose |mean| reaches the observed one. Exact (all 2^n patterns) up to 16 pairs, else
    ``draws`` seeded patterns with the observed one counted among them."""
    d = np.asarray(list(d), np.float64)
    n = len(d)
    if n == 0:
        return math.nan
    obs = abs(d.mean())
    tol = 1e-12 * max(1.0, obs)
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        return float(np.mean(np.abs(signs @ d) / n >= obs - tol))
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(draws, n))
    # the observed pattern counts as one draw, so a Monte Carlo p is never 0
    return float((np.sum(np.abs(signs @ d) / n >= obs - tol) + 1) / (draws + 1))


def bootstrap_ci(d: Iterable[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(d), pairs resampled with replacement (seeded)."""
    d = np.asarray(list(d), np.float64)
    if len(d) == 0:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def holm(p: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and counts for nothing)."""
    p = np.asarray(list(p), np.float64)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def paired_effects(df: Any, *, seed: int = 0, n_boot: int = 2000, kinds: dict[str, str] | None = None) -> Any:
    """The effects table (columns `COLUMNS`) of a study's results (results.csv as a DataFrame),
    one row per factor x level x model x headline metric present; sorted by factor, level, model, metric."""
    import pandas as pd

    rows = []
    if not len(df):
        return pd.DataFrame(columns=list(COLUMNS))
    base = df[df["factor"] == "baseline"]
    arms = df[df["factor"] != "baseline"]
    metrics = [m for m in HEADLINE if m in df.columns]
    for (factor, level, model), g in arms.groupby(["factor", "level", "model"], sort=True, dropna=False):
        b = base[base["model"] == model].set_index("seed")
        a = g.set_index("seed")
        seeds = sorted(set(a.index) & set(b.index))
        for metric in metrics:
            pairs = [(float(a.loc[s, metric]), float(b.loc[s, metric])) for s in seeds
                     if pd.notna(a.loc[s, metric]) and pd.notna(b.loc[s, metric])]
            if not pairs:
                continue
            d = np.array([x - y for x, y in pairs])
            lo, hi = bootstrap_ci(d, n_boot, seed)
            higher_better = HEADLINE[metric]
            if lo > 0 or hi < 0:
                up = lo > 0
                direction = "better" if up == higher_better else "worse"
            else:
                direction = "none"
            rows.append({
                "factor": factor, "kind": (kinds or {}).get(factor, "data"), "level": level, "model": model,
                "metric": metric, "baseline_mean": float(np.mean([y for _, y in pairs])),
                "arm_mean": float(np.mean([x for x, _ in pairs])), "effect": float(d.mean()), "ci_low": lo,
                "ci_high": hi, "p_value": sign_flip_p(d, seed=seed), "n_pairs": len(d), "direction": direction,
            })
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "p_holm"])
    out.insert(COLUMNS.index("p_holm"), "p_holm", holm(out["p_value"]) if len(out) else [])
    return out


def write_effects(study: str | Path, seed: int = 0) -> Path:
    """STUDY/effects.csv from STUDY/results.csv (written atomically); returns its path."""
    import pandas as pd

    from datacheck.io import write_text

    study = Path(study)
    df = pd.read_csv(study / "results.csv") if (study / "results.csv").exists() else pd.DataFrame()
    from .factors import FACTORS

    eff = paired_effects(df, seed=seed, kinds={f: FACTORS.get(f).kind for f in FACTORS})
    path = study / "effects.csv"
    write_text(path, eff.to_csv(index=False, float_format="%.6g"))
    return path
