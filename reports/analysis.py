"""The study's analysis plan and its tests (study v3): pure functions of results.csv, no plotting, no HTML.

The plan is declared before any arm has run (`plan_for`, written into study.json) and says:

- **the primary family**: one test per factor, on one headline metric (FID by default), pooled over the
  study's models. The unit of replication is a *block*: one seed of one model, which holds that model's
  baseline arm and its arms at every level of the factor, all trained from the same seed.
- **the statistic**: per block, the dose-response of the metric over the factor's levels, as the
  least-squares slope over the levels' dose ranks (the baseline is rank 0; levels on one side of it
  are ranks 1, 2, ... by distance, levels on both sides get signed ranks) times the largest |rank|:
  the fitted change from the baseline to the farthest level run (for levels on both sides, per step
  up in the order of their values). With one level it is exactly the
  paired difference arm - baseline. One test per factor instead of one per level: more power, fewer tests.
- **the test**: the exact paired sign-flip (randomization) test of "the mean block statistic is 0",
  two-sided; exact over all 2^n sign patterns up to 16 blocks, else 20,000 seeded patterns. It needs no
  normality; its smallest p is 1/2^(n-1), said out loud when that cannot reach the adjusted alpha.
- **the multiplicity rule**: Holm over the primary family only (family-wise error <= alpha under any
  dependence; the arms of a block share a baseline, so the tests are dependent, and Holm needs no
  assumption about how).
- **the interval**: the 95% interval that matches the test, by inverting it (every shift of the mean that
  the sign-flip test does not reject at alpha); with too few blocks it is unbounded, which is the honest
  answer.

- **references**: a factor whose registry entry names another arm as its reference (``cleaned``: ``dirty``
  at the same level and seed, the recovery cleaning buys) is tested against it, block by block, when the
  study runs both; every other factor against the shared baseline.
- **copy tests**: a factor whose registry entry names a copy signal (``dup_dose``: the excess share of
  samples nearest its duplicated sources over placebo sets) gets that signal's dose trend as a second
  primary test, in the same Holm family: one test over all blocks instead of one permutation test per
  arm, whose floor (1/201 with 200 placebo sets) no adjustment over a study's arms could pass.

Everything else (each level, each model, every other metric) is descriptive: a mean paired difference with
a paired t interval, never called significant or clear. The answer to "did the data matter more than the
model?" is one estimand (`answer`), used by every place that says it.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

ALPHA = 0.05
PLAN_VERSION = 3
EXACT_MAX = 16  # blocks up to which the sign-flip test enumerates every pattern
DRAWS = 20_000
POWER = 0.8
# a model change that moves the headline metric beyond this factor of the baseline (FID more than doubled)
# breaks training on this data: it is reported and tested, but set aside from the answer's comparison of
# harms (nobody would keep it; its samples show it at once, unlike a silent data defect)
BROKEN_RATIO = 2.0


# ============================================================================ the plan
@dataclass(frozen=True)
class AnalysisPlan:
    """What the study will test, declared before the data (see the module docstring)."""

    family: tuple[str, ...]  # factors with a primary test, in the study's order (the control included)
    kinds: Mapping[str, str] = field(default_factory=dict)  # factor -> "data", "model" or "control"
    metric: str = "fid"
    higher_is_better: bool = False
    alpha: float = ALPHA
    multiplicity: str = "holm"
    test: str = "exact paired sign-flip test, blocks = seed x model, pooled over models"
    statistic: str = "fitted dose-response change from the baseline to the farthest level (per block)"
    interval: str = "95% interval from inverting the sign-flip test"
    descriptive: str = "per level and model, every metric: mean paired difference with a paired t interval"
    version: int = PLAN_VERSION
    references: Mapping[str, str] = field(default_factory=dict)  # factor -> the factor it is tested against
    copy_tests: tuple[tuple[str, str], ...] = ()  # (factor, copy metric): second primary tests (dose trends)
    broken_ratio: float | None = None  # see BROKEN_RATIO; None: no model change is set aside

    def tests(self) -> list[tuple[str, str]]:
        """The primary family as (factor, metric), in order: one per factor, then the copy tests."""
        return [(f, self.metric) for f in self.family] + list(self.copy_tests)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["family"], d["kinds"], d["references"] = list(self.family), dict(self.kinds), dict(self.references)
        d["copy_tests"] = [list(t) for t in self.copy_tests]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AnalysisPlan":
        """The plan a study declared (keys it did not declare keep their defaults: what it meant then)."""
        return cls(**{**d, "family": tuple(d["family"]), "kinds": dict(d.get("kinds", {})),
                      "references": dict(d.get("references", {})),
                      "copy_tests": tuple(tuple(t) for t in d.get("copy_tests", ()))})

    def methods(self) -> list[str]:
        """The methods box, one line each."""
        n = len(self.tests())
        lines = [
            f"Primary family: {n} test{'s' if n != 1 else ''}, one per factor "
            f"({', '.join(self.family) or 'none'}), on {self.metric}, pooled over models"
            + (", plus the dose trend of " + ", ".join(f"{m} for {f}" for f, m in self.copy_tests)
               + " (a copy signal)" if self.copy_tests else "") + ".",
            f"Statistic: {self.statistic}.",
            f"Test: {self.test}; two-sided.",
            f"Multiplicity: Holm within the primary family (family-wise error at most {self.alpha:g}, valid under "
            "the dependence that a shared baseline creates).",
            f"Interval: {self.interval}.",
            f"Descriptive only (never called significant): {self.descriptive}.",
        ]
        if self.references:
            lines.insert(2, "Reference: " + "; ".join(f"{f} is tested against {r} at the same level and seed (what "
                                                       f"{f} changes relative to {r})" for f, r in self.references.items())
                         + "; every other factor against the shared baseline.")
        if self.broken_ratio:
            lines.append(f"Answer: the largest harm of each kind against each other, and the largest gain; a model "
                         f"change that takes {self.metric} beyond {self.broken_ratio:g}x its baseline "
                         f"{'(down)' if self.higher_is_better else '(up)'} is a setting nobody would keep and is set "
                         "aside from the comparison of harms, and a gain that comes with copying of the training data "
                         "from the comparison of gains (both are still tested and shown).")
        return lines


def plan_for(factors: Sequence[str], kinds: Mapping[str, str], metric: str = "fid",
             higher_is_better: bool = False, alpha: float = ALPHA, references: Mapping[str, str] | None = None,
             copy_tests: Mapping[str, str] | None = None, broken_ratio: float | None = BROKEN_RATIO) -> AnalysisPlan:
    """The plan of a study of ``factors`` (``kinds``: each factor's kind from the registry; ``references``:
    factor -> the factor it is tested against, kept where the study runs both; ``copy_tests``: factor -> a
    copy metric whose dose trend is a second primary test)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    refs = {f: r for f, r in (references or {}).items() if f in factors and r in factors and r != f}
    copies = tuple((f, m) for f, m in (copy_tests or {}).items() if f in factors)
    return AnalysisPlan(tuple(factors), {f: kinds.get(f, "data") for f in factors}, metric, bool(higher_is_better),
                        float(alpha), references=refs, copy_tests=copies, broken_ratio=broken_ratio)


def with_derived(df: Any) -> Any:
    """``df`` with the derived columns the plan can test: ``dup_excess`` = the share of samples nearest the
    duplicated sources minus the placebo sets' share (0 when duplication draws no samples)."""
    if len(df) and "dup_excess" not in df.columns and {"dup_source_share", "dup_placebo_share"} <= set(df.columns):
        df = df.assign(dup_excess=df["dup_source_share"].astype(float) - df["dup_placebo_share"].astype(float))
    return df


# ============================================================================ tests and intervals
@functools.lru_cache(maxsize=64)
def _patterns(n: int, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """(P, n) sign patterns: all 2^n up to EXACT_MAX, else ``draws`` seeded ones plus the identity
    (cached: a calibration run asks for the same n thousands of times; read-only)."""
    if n <= EXACT_MAX:
        out = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        out = np.vstack([np.ones((1, n)), np.random.default_rng(seed).choice((1.0, -1.0), size=(draws, n))])
    out.flags.writeable = False
    return out


def sign_flip_p(d: Iterable[float], draws: int = DRAWS, seed: int = 0) -> float:
    """Two-sided p of the paired sign-flip test of mean(d) = 0: the share of sign patterns whose |mean|
    reaches the observed one (exact up to EXACT_MAX values; beyond, seeded draws with the observed
    pattern among them, so a Monte Carlo p is never 0)."""
    d = np.asarray(list(d), np.float64)
    if len(d) == 0 or not np.all(np.isfinite(d)):
        return math.nan
    obs = abs(d.mean())
    tol = 1e-12 * max(1.0, obs)
    means = np.abs(_patterns(len(d), draws, seed) @ d) / len(d)
    return float(np.mean(means >= obs - tol))


def min_p(n: int) -> float:
    """The smallest two-sided p the exact sign-flip test can give with ``n`` blocks: 2 / 2^n."""
    return 1.0 if n <= 0 else min(1.0, 2.0 / 2.0 ** n)


def sign_flip_interval(d: Iterable[float], alpha: float = ALPHA, grid: int = 101) -> tuple[float, float]:
    """The interval matching the sign-flip test: every shift t of the mean with p(d - t) > alpha. With too
    few values for the test to reject anything it is (-inf, inf). Found on a grid over [min d, max d]
    (outside it every sign agrees, so p is at its floor) and refined by bisection at both ends."""
    d = np.asarray(list(d), np.float64)
    if len(d) == 0 or not np.all(np.isfinite(d)):
        return math.nan, math.nan
    if min_p(len(d)) > alpha:
        return -math.inf, math.inf
    signs = _patterns(len(d))
    n = len(d)

    def p(t: float) -> float:
        x = d - t
        obs = abs(x.mean())
        return float(np.mean(np.abs(signs @ x) / n >= obs - 1e-12 * max(1.0, obs)))

    lo_d, hi_d = float(d.min()), float(d.max())
    if hi_d - lo_d == 0:
        return lo_d, hi_d
    ts = np.linspace(lo_d, hi_d, grid)
    ps = np.empty(grid)
    for c in range(0, grid, 32):  # (32, P) at a time: 2^16 patterns x 401 shifts would need 200 MB
        x = d[None, :] - ts[c:c + 32, None]  # (g, n)
        obs = np.abs(x.mean(1))
        ps[c:c + 32] = np.mean(np.abs(x @ signs.T) / n >= (obs - 1e-12 * np.maximum(1.0, obs))[:, None], axis=1)
    keep = np.flatnonzero(ps > alpha)
    if not len(keep):  # cannot happen (p at the mean is 1), but never return a wrong interval
        return float(d.mean()), float(d.mean())
    i, j = keep[0], keep[-1]

    def edge(a: float, b: float) -> float:  # a rejected, b accepted: the boundary between them
        for _ in range(30):
            mid = (a + b) / 2
            if p(mid) > alpha:
                b = mid
            else:
                a = mid
        return b

    lo = edge(ts[i - 1], ts[i]) if i > 0 else lo_d
    hi = edge(ts[j + 1], ts[j]) if j < grid - 1 else hi_d
    return float(lo), float(hi)


def t_interval(d: Iterable[float], alpha: float = ALPHA) -> tuple[float, float]:
    """The paired t interval of mean(d) (descriptive rows); NaN with fewer than 2 values."""
    from scipy import stats

    d = np.asarray(list(d), np.float64)
    if len(d) < 2 or not np.all(np.isfinite(d)):
        return math.nan, math.nan
    half = stats.t.ppf(1 - alpha / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


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


def blocks_needed(sd: float, delta: float, alpha: float, power: float = POWER) -> int:
    """Blocks for a two-sided test at ``alpha`` to detect a mean of ``delta`` with ``power``, given the
    blocks' standard deviation ``sd`` (the normal approximation plus 2 for the t correction), and at
    least as many as the exact sign-flip test needs to reach ``alpha`` at all."""
    from scipy import stats

    floor = math.ceil(math.log2(2.0 / alpha)) if alpha < 1 else 1
    if not (np.isfinite(sd) and np.isfinite(delta)) or delta == 0:
        return floor
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return max(floor, math.ceil((z * sd / abs(delta)) ** 2) + 2)


# ============================================================================ block statistics
def dose_ranks(levels: Sequence[float], baseline: float) -> dict[float, float]:
    """Level -> dose rank: the baseline 0; levels on one side of it 1, 2, ... by distance; levels on both
    sides signed ranks in the order of their values (a capacity of 0.5 is -1, of 2 is +1)."""
    lv = sorted({float(x) for x in levels if not math.isclose(float(x), baseline, abs_tol=1e-12)})
    below = [x for x in lv if x < baseline]
    above = [x for x in lv if x > baseline]
    out = {float(baseline): 0.0}
    if below and above:
        out.update({x: -float(len(below) - i) for i, x in enumerate(below)})
        out.update({x: float(i + 1) for i, x in enumerate(above)})
    else:
        side = sorted(lv, key=lambda x: abs(x - baseline))
        out.update({x: float(i + 1) for i, x in enumerate(side)})
    return out


def block_statistic(values: Mapping[float, float], ranks: Mapping[float, float]) -> float:
    """The fitted change over the levels of one block: the least-squares slope of the values over their
    dose ranks times the largest |rank| (with one level: value - baseline value)."""
    xs = np.array([ranks[lv] for lv in values], float)
    ys = np.array([values[lv] for lv in values], float)
    if len(xs) < 2 or np.ptp(xs) == 0:
        return math.nan
    xc = xs - xs.mean()
    slope = float((xc * (ys - ys.mean())).sum() / (xc ** 2).sum())
    return slope * float(np.abs(xs).max())


def factor_blocks(df: Any, factor: str, baseline: float, metric: str) -> dict[tuple[int, str], float]:
    """(seed, model) -> the block statistic of ``factor`` on ``metric``, for every block with a finite
    baseline and at least one finite level of the factor."""
    if metric not in df.columns:
        return {}
    fac = df["factor"].to_numpy()
    own = fac == factor
    if not own.any():
        return {}
    seeds, models = df["seed"].to_numpy(), df["model"].to_numpy()
    vals = np.asarray(df[metric], dtype=float)
    levels = np.asarray(df["level"], dtype=float)
    ranks = dose_ranks(list(levels[own]), baseline)
    base = {(int(s), str(m)): float(v) for s, m, v, f in zip(seeds, models, vals, fac == "baseline") if f}
    per: dict[tuple[int, str], dict[float, float]] = {}
    for s, m, lv, v in zip(seeds[own], models[own], levels[own], vals[own]):
        key = (int(s), str(m))
        if np.isfinite(v) and np.isfinite(base.get(key, math.nan)):
            per.setdefault(key, {float(baseline): base[key]})[float(lv)] = float(v)
    out: dict[tuple[int, str], float] = {}
    for key in sorted(per):
        st = block_statistic(per[key], ranks)
        if np.isfinite(st):
            out[key] = st
    return out


# ============================================================================ the primary family
PRIMARY_COLUMNS = ("factor", "kind", "level", "model", "metric", "reference", "baseline_mean", "arm_mean", "effect",
                   "ci_low", "ci_high", "p_value", "p_holm", "n_pairs", "direction", "primary", "significant")


def _level_means(df: Any, factor: str, level: float, metric: str, blocks: Iterable[tuple[int, str]]) -> float:
    """Mean of ``metric`` over the arms of ``factor`` at ``level`` (the baseline's when factor is "baseline")
    in these blocks."""
    keys = set(blocks)
    rows = df[df["factor"] == factor]
    if factor != "baseline":
        rows = rows[np.isclose(rows["level"].astype(float), level)]
    vals = [float(v) for s, m, v in zip(rows["seed"], rows["model"], rows[metric])
            if (int(s), str(m)) in keys and np.isfinite(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def primary_tests(df: Any, plan: AnalysisPlan, baselines: Mapping[str, float],
                  intervals: bool = True) -> list[dict[str, Any]]:
    """One row per test of the plan's family (`AnalysisPlan.tests`; tests the results cannot make yet are
    left out): the mean block statistic (``effect``; against ``reference`` where the plan names one), its
    interval, p, Holm-adjusted p over the rows, ``significant`` (Holm p < alpha) and ``direction``
    (``worse``/``better`` where significant, else ``none``). ``level`` is the farthest level run, ``model``
    "all" (pooled), ``n_pairs`` the blocks; ``baseline_mean`` and ``arm_mean`` are over those blocks (the
    reference's arms stand in for the baseline). ``broken`` marks a model change beyond the plan's
    ``broken_ratio``. ``intervals`` False leaves the intervals NaN (a calibration run needs only the decisions)."""
    df = with_derived(df)
    rows = []
    for f, metric in plan.tests():
        blocks = factor_blocks(df, f, float(baselines.get(f, 0.0)), metric)
        ref = plan.references.get(f, "baseline")
        if ref != "baseline":
            ref_blocks = factor_blocks(df, ref, float(baselines.get(ref, 0.0)), metric)
            blocks = {k: blocks[k] - ref_blocks[k] for k in blocks if k in ref_blocks}
        if not blocks:
            continue
        d = np.array(list(blocks.values()))
        own = df[df["factor"] == f]
        ranks = dose_ranks(list(own["level"].astype(float)), float(baselines.get(f, 0.0)))
        far = max(ranks, key=lambda lv: (abs(ranks[lv]), ranks[lv]))
        lo, hi = sign_flip_interval(d, plan.alpha) if intervals else (math.nan, math.nan)
        base_mean = _level_means(df, ref, far, metric, blocks)
        arm_mean = _level_means(df, f, far, metric, blocks)
        higher = plan.higher_is_better if metric == plan.metric else False  # copy signals: higher is worse
        broken = False
        if plan.broken_ratio and plan.kinds.get(f) == "model" and metric == plan.metric and base_mean > 0:
            broken = bool(arm_mean < base_mean / plan.broken_ratio if higher else arm_mean > base_mean * plan.broken_ratio)
        rows.append({"factor": f, "kind": plan.kinds.get(f, "data"), "level": far, "model": "all",
                     "metric": metric, "reference": ref, "baseline_mean": base_mean, "arm_mean": arm_mean,
                     "effect": float(d.mean()), "ci_low": lo, "ci_high": hi, "p_value": sign_flip_p(d),
                     "n_pairs": len(d), "broken": broken, "_higher": higher, "_blocks": blocks})
    adj = holm([r["p_value"] for r in rows])
    for r, p_adj in zip(rows, adj):
        r["p_holm"] = float(p_adj)
        r["significant"] = bool(p_adj < plan.alpha)
        r["primary"] = True
        up = r["effect"] > 0
        r["direction"] = ("better" if up == r["_higher"] else "worse") if r["significant"] else "none"
    return rows


def pilot_note(rows: Sequence[Mapping[str, Any]], plan: AnalysisPlan, n_models: int) -> str | None:
    """Said at the top when the study is too small for its tests: no primary test can reach alpha after
    Holm, with how many seeds would detect the largest observed effect with 80% power. When only some tests
    are that small (a tweak that applies to one model has half the blocks), says which."""
    if not rows:
        return None
    m = len(rows)
    small = [r for r in rows if min_p(int(r["n_pairs"])) > plan.alpha / m]
    if not small:
        return None
    if len(small) < len(rows):
        n = max(int(r["n_pairs"]) for r in small)
        names = ", ".join(f"{r['factor']}" + (f" ({r['metric']})" if r["metric"] != plan.metric else "") for r in small)
        return (f"Too few blocks for {len(small)} of the {m} primary tests ({names}: at most {n} blocks, smallest "
                f"possible p {min_p(n):.3g}): they cannot reach p < {plan.alpha:g} after Holm, so 'not significant' "
                "there says nothing; the other tests can.")
    n = max(int(r["n_pairs"]) for r in rows)
    seeds = max(1, n // max(n_models, 1))
    big = max(rows, key=lambda r: abs(r["effect"]))
    d = np.array(list(big["_blocks"].values()))
    sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
    need = blocks_needed(sd, float(d.mean()), plan.alpha / m)
    need_seeds = math.ceil(need / max(n_models, 1))
    return (f"A pilot: with {seeds} seed{'s' if seeds != 1 else ''} ({n} blocks) no primary test can reach "
            f"p < {plan.alpha:g} after Holm over {m} tests (the smallest possible p is {min_p(n):.3g}). Detecting "
            f"the largest observed effect ({big['factor']}: {big['effect']:.3g}) with {POWER:.0%} power would take "
            f"about {need_seeds} seeds.")


def control_note(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The negative control's reading: a significant control means the study's other findings are suspect."""
    ctrl = [r for r in rows if r["kind"] == "control"]
    if not ctrl:
        return None
    bad = [r for r in ctrl if r["significant"]]
    if bad:
        return (f"Not trustworthy: the negative control ({', '.join(r['factor'] for r in bad)}) came out significant "
                f"(Holm p = {min(r['p_holm'] for r in bad):.3g}), so the pipeline finds effects where none exist.")
    return (f"The negative control ({', '.join(r['factor'] for r in ctrl)}) came out not significant "
            f"(Holm p = {min(r['p_holm'] for r in ctrl):.3g}), as it should.")


# ============================================================================ descriptive rows
def descriptive_rows(df: Any, metrics: Mapping[str, bool], kinds: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per factor x level x model x metric: the mean paired difference arm - baseline (seed with seed),
    its paired t interval and the unadjusted sign-flip p; never significant (``primary`` False)."""
    rows: list[dict[str, Any]] = []
    if not len(df):
        return rows
    df = with_derived(df)
    base = df[df["factor"] == "baseline"]
    arms = df[df["factor"] != "baseline"]
    for (factor, level, model), g in arms.groupby(["factor", "level", "model"], sort=True, dropna=False):
        b = base[base["model"] == model].set_index("seed")
        a = g.set_index("seed")
        seeds = sorted(set(a.index) & set(b.index))
        for metric in [m for m in metrics if m in df.columns]:
            pairs = [(float(a.loc[s, metric]), float(b.loc[s, metric])) for s in seeds
                     if np.isfinite(float(a.loc[s, metric])) and np.isfinite(float(b.loc[s, metric]))]
            if not pairs:
                continue
            d = np.array([x - y for x, y in pairs])
            lo, hi = t_interval(d)
            rows.append({"factor": factor, "kind": kinds.get(factor, "data"), "level": float(level), "model": model,
                         "metric": metric, "reference": "baseline",
                         "baseline_mean": float(np.mean([y for _, y in pairs])),
                         "arm_mean": float(np.mean([x for x, _ in pairs])), "effect": float(d.mean()),
                         "ci_low": lo, "ci_high": hi, "p_value": sign_flip_p(d), "p_holm": math.nan,
                         "n_pairs": len(d), "direction": "none", "primary": False, "significant": False})
    return rows
