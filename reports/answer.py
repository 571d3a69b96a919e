"""The one answer of a study (study v3): did the data matter more than the model here? Defined once, like
with like, from the primary family's rows (`reports.analysis.primary_tests`); every place that says it
(the answer card, the headline, effects.csv's reading, the docs' definition in study-protocol.md) reads it
from `answer`. Pure: no plotting, no HTML."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .analysis import AnalysisPlan, sign_flip_interval, sign_flip_p


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


def set_aside(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The model changes the answer sets aside from the comparison of harms (`AnalysisPlan.broken_ratio`)."""
    return [r for r in rows if r.get("broken")]


def _eligible(r: Mapping[str, Any], what: str) -> bool:
    """A row may stand for its kind in the comparison of ``what``: not a broken setting among the harms, not
    a gain that comes with copying of the training data (``copying``, set by the caller who has the
    copy signals) among the gains."""
    return not (what == "harm" and r.get("broken")) and not (what == "gain" and r.get("copying"))


def answer(rows: Sequence[Mapping[str, Any]], plan: AnalysisPlan) -> Answer:
    """The one answer, like with like: the largest harm a data factor did against the largest harm a
    model tweak did, and the largest gain of each kind (where both kinds offer one), each compared over
    the blocks they share by the sign-flip test of the difference of their statistics at alpha. A broken
    model setting (``broken``) is left out of the harms and a gain by copying (``copying``) out of the
    gains; the details say so. The data
    mattered more when a comparison says so and none says the reverse; the model, conversely; "no clear
    difference" when no comparison is significant (or they disagree, which is said)."""
    rows = [r for r in rows if r["metric"] == plan.metric]  # like with like: the headline metric only
    data = [r for r in rows if r["kind"] == "data"]
    model = [r for r in rows if r["kind"] == "model"]
    broken = set_aside(model)
    if not data or not model:
        missing = "no data factor" if not data else "no model tweak"
        return Answer("n/a", f"This study has {missing}, so it cannot say whether the data mattered more than the model.")
    worse = -1.0 if plan.higher_is_better else 1.0  # the sign of a harm on the metric
    comps = []
    for what, sign in (("harm", worse), ("gain", -worse)):
        a = _side([r for r in data if _eligible(r, what)], "data", sign)
        b = _side([r for r in model if _eligible(r, what)], "model", sign)
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
    aside = [f"Set aside from the comparison of harms: {r['factor']} ({plan.metric} {r['baseline_mean']:.3g} -> "
             f"{r['arm_mean']:.3g} over its blocks, beyond {plan.broken_ratio:g}x the baseline): a setting nobody "
             "would keep on this data, which its samples show at once; it stays in the tests and the plot."
             for r in broken]
    copied = [r["factor"] for r in rows if r.get("copying")]
    if copied:
        aside.append(f"Set aside from the comparison of gains: {', '.join(copied)} (the gain comes with copying of the "
                     "training data, so it is not an improvement).")
    if not comps:
        return Answer("n/a", "No data factor and model tweak moved the headline metric the same way, so there is "
                             "nothing like-with-like to compare.", (), tuple(aside))
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
                           f"{plan.alpha:g}).", tuple(comps), tuple(parts + aside))


def _ci(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "95% interval unbounded: too few blocks"
    return f"95% interval {lo:.3g} to {hi:.3g}"
