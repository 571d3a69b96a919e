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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["family"], d["kinds"] = list(self.family), dict(self.kinds)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AnalysisPlan":
        return cls(**{**d, "family": tuple(d["family"]), "kinds": dict(d.get("kinds", {}))})

    def methods(self) -> list[str]:
        """The methods box, one line each."""
        return [
            f"Primary family: {len(self.family)} test{'s' if len(self.family) != 1 else ''}, one per factor "
            f"({', '.join(self.family) or 'none'}), on {self.metric}, pooled over models.",
            f"Statistic: {self.statistic}.",
            f"Test: {self.test}; two-sided.",
            f"Multiplicity: Holm within the primary family (family-wise error at most {self.alpha:g}, valid under "
            "the dependence that a shared baseline creates).",
            f"Interval: {self.interval}.",
            f"Descriptive only (never called significant): {self.descriptive}.",
        ]


def plan_for(factors: Sequence[str], kinds: Mapping[str, str], metric: str = "fid",
             higher_is_better: bool = False, alpha: float = ALPHA) -> AnalysisPlan:
    """The plan of a study of ``factors`` (``kinds``: each factor's kind from the registry)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return AnalysisPlan(tuple(factors), {f: kinds.get(f, "data") for f in factors}, metric, bool(higher_is_better),
                        float(alpha))


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
PRIMARY_COLUMNS = ("factor", "kind", "level", "model", "metric", "baseline_mean", "arm_mean", "effect", "ci_low",
                   "ci_high", "p_value", "p_holm", "n_pairs", "direction", "primary", "significant")


def primary_tests(df: Any, plan: AnalysisPlan, baselines: Mapping[str, float],
                  intervals: bool = True) -> list[dict[str, Any]]:
    """One row per factor of the plan's family (factors the results do not hold yet are left out): the
    mean block statistic (``effect``), its interval, p, Holm-adjusted p over the rows, ``significant``
    (Holm p < alpha) and ``direction`` (``worse``/``better`` where significant, else ``none``).
    ``level`` is the farthest level run, ``model`` "all" (pooled), ``n_pairs`` the blocks. ``intervals``
    False leaves them NaN (a calibration run needs only the decisions)."""
    rows = []
    for f in plan.family:
        blocks = factor_blocks(df, f, float(baselines.get(f, 0.0)), plan.metric)
        if not blocks:
            continue
        d = np.array(list(blocks.values()))
        own = df[df["factor"] == f]
        ranks = dose_ranks(list(own["level"].astype(float)), float(baselines.get(f, 0.0)))
        far = max(ranks, key=lambda lv: (abs(ranks[lv]), ranks[lv]))
        lo, hi = sign_flip_interval(d, plan.alpha) if intervals else (math.nan, math.nan)
        base_vals = [float(v) for v in df[(df["factor"] == "baseline")][plan.metric] if np.isfinite(float(v))]
        far_vals = [float(v) for v in own[np.isclose(own["level"].astype(float), far)][plan.metric]
                    if np.isfinite(float(v))]
        rows.append({"factor": f, "kind": plan.kinds.get(f, "data"), "level": far, "model": "all",
                     "metric": plan.metric, "baseline_mean": float(np.mean(base_vals)) if base_vals else math.nan,
                     "arm_mean": float(np.mean(far_vals)) if far_vals else math.nan, "effect": float(d.mean()),
                     "ci_low": lo, "ci_high": hi, "p_value": sign_flip_p(d), "n_pairs": len(d),
                     "_blocks": blocks})
    adj = holm([r["p_value"] for r in rows])
    for r, p_adj in zip(rows, adj):
        r["p_holm"] = float(p_adj)
        r["significant"] = bool(p_adj < plan.alpha)
        r["primary"] = True
        up = r["effect"] > 0
        r["direction"] = ("better" if up == plan.higher_is_better else "worse") if r["significant"] else "none"
    return rows


def pilot_note(rows: Sequence[Mapping[str, Any]], plan: AnalysisPlan, n_models: int) -> str | None:
    """Said at the top when the study is too small for its tests: no primary test can reach alpha after
    Holm, with how many seeds would detect the largest observed effect with 80% power."""
    if not rows:
        return None
    m = len(rows)
    n = min(int(r["n_pairs"]) for r in rows)
    if min_p(n) <= plan.alpha / m:
        return None
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


# ============================================================================ the answer
@dataclass(frozen=True)
class Answer:
    """Did the data matter more than the model here? ``verdict``: "data", "model", "no clear difference"
    or "n/a"; ``sentence`` says it in one sentence; ``details`` gives each like-with-like comparison's
    numbers (estimate, interval, test); ``comparisons`` holds them as data."""

    verdict: str
    sentence: str
    comparisons: tuple[Mapping[str, Any], ...] = ()
    details: tuple[str, ...] = ()


def _side(rows: Sequence[Mapping[str, Any]], kind: str, sign: float) -> Mapping[str, Any] | None:
    """The factor of ``kind`` whose mean statistic goes farthest in the direction ``sign`` (+1: the metric
    up), if any goes that way at all."""
    cand = [r for r in rows if r["kind"] == kind and sign * r["effect"] > 0]
    return max(cand, key=lambda r: sign * r["effect"]) if cand else None


def answer(rows: Sequence[Mapping[str, Any]], plan: AnalysisPlan) -> Answer:
    """The one answer, like with like: the largest harm a data factor did against the largest harm a
    model tweak did, and the largest gain of each kind (where both kinds offer one), each compared over
    the blocks they share by the sign-flip test of the difference of their statistics at alpha. The data
    mattered more when a comparison says so and none says the reverse; the model, conversely; "no clear
    difference" when no comparison is significant (or they disagree, which is said)."""
    data = [r for r in rows if r["kind"] == "data"]
    model = [r for r in rows if r["kind"] == "model"]
    if not data or not model:
        missing = "no data factor" if not data else "no model tweak"
        return Answer("n/a", f"This study has {missing}, so it cannot say whether the data mattered more than the model.")
    worse = -1.0 if plan.higher_is_better else 1.0  # the sign of a harm on the metric
    comps = []
    for what, sign in (("harm", worse), ("gain", -worse)):
        a, b = _side(data, "data", sign), _side(model, "model", sign)
        if a is None or b is None:
            continue
        common = sorted(set(a["_blocks"]) & set(b["_blocks"]))
        d = np.array([sign * (a["_blocks"][k] - b["_blocks"][k]) for k in common])  # > 0: the data's is larger
        if not len(d):
            continue
        p = sign_flip_p(d)
        lo, hi = sign_flip_interval(d, plan.alpha)
        comps.append({"what": what, "data_factor": a["factor"], "model_factor": b["factor"],
                      "data_effect": float(a["effect"]), "model_effect": float(b["effect"]),
                      "difference": float(d.mean()), "ci_low": lo, "ci_high": hi, "p_value": p, "n_pairs": len(d),
                      "winner": ("data" if d.mean() > 0 else "model") if p < plan.alpha else "neither"})
    if not comps:
        return Answer("n/a", "No data factor and model tweak moved the headline metric the same way, so there is "
                             "nothing like-with-like to compare.")
    winners = {c["winner"] for c in comps} - {"neither"}
    verdict = winners.pop() if len(winners) == 1 else "no clear difference"
    parts = []
    for c in comps:
        parts.append(f"Largest {c['what']} on {plan.metric}: data ({c['data_factor']}) {c['data_effect']:+.3g} against "
                     f"model ({c['model_factor']}) {c['model_effect']:+.3g}; the data's is larger by "
                     f"{c['difference']:+.3g} ({_ci(c['ci_low'], c['ci_high'])}, sign-flip p = {c['p_value']:.3g}, "
                     f"{c['n_pairs']} blocks): {'significant' if c['p_value'] < plan.alpha else 'not significant'}.")
    head = {"data": "Yes: the data mattered more than the model here",
            "model": "No: the model mattered more than the data here",
            "no clear difference": "Not clearly: neither the data nor the model mattered significantly more here"}[verdict]
    if len(winners) > 1:
        head += " (the comparisons disagree)"
    what = " and ".join(f"the largest {c['what']}" for c in comps)
    return Answer(verdict, f"{head} ({what} of each kind compared over the same seeds and models, at "
                           f"{plan.alpha:g}).", tuple(comps), tuple(parts))


def _ci(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "95% interval unbounded: too few blocks"
    return f"95% interval {lo:.3g} to {hi:.3g}"


# ============================================================================ descriptive rows
def descriptive_rows(df: Any, metrics: Mapping[str, bool], kinds: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per factor x level x model x metric: the mean paired difference arm - baseline (seed with seed),
    its paired t interval and the unadjusted sign-flip p; never significant (``primary`` False)."""
    rows: list[dict[str, Any]] = []
    if not len(df):
        return rows
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
                         "metric": metric, "baseline_mean": float(np.mean([y for _, y in pairs])),
                         "arm_mean": float(np.mean([x for x, _ in pairs])), "effect": float(d.mean()),
                         "ci_low": lo, "ci_high": hi, "p_value": sign_flip_p(d), "p_holm": math.nan,
                         "n_pairs": len(d), "direction": "none", "primary": False, "significant": False})
    return rows
