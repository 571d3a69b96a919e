"""The HTML study report: one self-contained offline file (inline SVG plots, inline PNG grids, no
scripts, no CDN). Every data-derived string goes through jinja2's autoescape or ``html.escape``.

Order: a verdict in plain words with numbers computed from results.csv (and said plainly where a
result does not show the expected effect), one plot per factor (metric against level, one line per
model, seed spread as error bars), data factors beside model choice, sample grids per arm, every
result in a table, and a reproducibility block.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from datacheck.io import fmt_num, write_text

from .factors import FACTORS

# metric -> (label, higher is better). C_T (Meehan et al. 2020) is near 0 for a model that neither copies
# nor underfits: below 0 its samples sit closer to the training images than held-out ones do (copying),
# far above 0 it underfits. The verdict reads a fall as toward copying (worse) and a rise as away from
# it; the label says both ends, since a rise far above 0 is underfitting, not quality.
METRICS: dict[str, tuple[str, bool]] = {
    "fid": ("FID", False),
    "kid_mean": ("KID", False),
    "precision": ("precision", True),
    "recall": ("recall", True),
    "density": ("density", True),
    "coverage": ("coverage", True),
    "modes_covered": ("modes covered", True),
    "mode_kl": ("mode KL", False),
    "memorization": ("memorization", False),
    "label_agreement": ("label agreement", True),
    "ct_score": ("C_T score (< 0 copies, >> 0 underfits)", True),
    "dup_source_share": ("samples nearest a duplicated source", False),
}
PANELS = ("fid", "precision", "recall", "coverage", "memorization")
EXTRA_PANELS = {"label_noise": ("label_agreement",), "imbalance": ("mode_kl",),
                "size": ("ct_score",), "duplicates": ("ct_score",), "dup_dose": ("dup_source_share",)}
LEVEL_WORDS = {
    "size": "fraction of the training set kept",
    "duplicates": "fraction replaced by copies",
    "label_noise": "fraction of labels flipped",
    "corruption": "fraction of images corrupted",
    "imbalance": "largest/smallest class ratio",
    "dirty": "fraction corrupted or duplicated",
    "cleaned": "fraction planted before cleaning",
    "dup_dose": "copies of each source (k)",
    "capacity": "width multiplier",
    "steps": "training-length multiplier",
}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


# ============================================================================ statistics
@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int

    def fmt(self, digits: int = 3) -> str:
        """``mean ± std`` to one decimal place: the mean's ``digits``-th significant digit, or the std's
        second when that is coarser (``0.897 ± 0.001``, ``64.6 ± 3.1``, ``128 ± 23``, ``-0.4 ± 1.6``)."""
        if self.n <= 1:
            return _num(self.mean, digits)
        if not (np.isfinite(self.mean) and np.isfinite(self.std)):
            return f"{_num(self.mean, digits)} ± {_num(self.std, digits)}"
        def places(x: float, sig: int) -> int:  # decimals that show |x| to `sig` significant digits
            return max(0, sig - 1 - math.floor(math.log10(abs(x)))) if x else 0

        if not self.mean and not self.std:
            return "0 ± 0"
        # the mean to `digits` significant digits, but never finer than the std's second digit
        dec = min(6, places(self.mean, digits) if self.mean else 99, places(self.std, 2) if self.std else 99)
        sep = "," if abs(self.mean) >= 1000 else ""
        return f"{self.mean:{sep}.{dec}f} ± {self.std:{sep}.{dec}f}"


_num = fmt_num  # the one number format of both reports (datacheck.io)


def _stat(values: Iterable[Any]) -> Stat | None:
    xs = np.array([float(v) for v in values if v is not None and _finite(v)], float)
    if not len(xs):
        return None
    return Stat(float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0, int(len(xs)))


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def baseline_level(factor: str) -> float:
    """The factor's registered baseline level (0 for a name the registry does not know)."""
    return FACTORS.get(factor).baseline if factor in FACTORS else 0.0


def factor_rows(df: Any, factor: str) -> Any:
    """The factor's rows plus the shared baseline rows placed at the factor's baseline level."""
    import pandas as pd

    base = df[df["factor"] == "baseline"].copy()
    base["level"] = baseline_level(factor)
    own = df[df["factor"] == factor]
    return pd.concat([base, own], ignore_index=True)


def curve(df: Any, factor: str, metric: str, model: str) -> list[tuple[float, Stat]]:
    """(level, seed statistic) pairs of ``metric`` for one model, sorted by level."""
    if metric not in df.columns:
        return []
    rows = factor_rows(df, factor)
    rows = rows[rows["model"] == model]
    out = []
    for lv, g in rows.groupby("level"):
        s = _stat(g[metric])
        if s is not None:
            out.append((float(lv), s))
    return sorted(out)


def _at(df: Any, factor: str, metric: str, model: str | None, level: float) -> Stat | None:
    rows = factor_rows(df, factor)
    if model is not None:
        rows = rows[rows["model"] == model]
    rows = rows[np.isclose(rows["level"].astype(float), level)]
    return _stat(rows[metric]) if metric in rows else None


def _extreme_level(df: Any, factor: str) -> float | None:
    """The level farthest from the baseline that the study ran."""
    lv = df.loc[df["factor"] == factor, "level"].astype(float)
    if not len(lv):
        return None
    b = baseline_level(factor)
    if factor == "size":
        return float(lv.min())
    return float(lv.iloc[np.argmax(np.abs(np.log(lv.values) if factor == "imbalance" else lv.values - b))])


# ============================================================================ verdict
@dataclass(frozen=True)
class Change:
    """One model's change of one metric from the baseline to a factor level."""

    model: str
    metric: str
    a: Stat
    b: Stat
    copies: bool = False  # the arm's samples copy its training data (a significant per-sample copy rate)

    @property
    def unchanged(self) -> bool:
        return abs(self.b.mean - self.a.mean) < 1e-12

    @property
    def worse(self) -> bool:
        return not self.unchanged and ((self.b.mean > self.a.mean) != METRICS[self.metric][1])

    def text(self) -> str:
        """Descriptive: the means over seeds and which way they moved (tests are the primary family's)."""
        if self.unchanged:
            return f"{self.model} {self.a.fmt()} (unchanged)"
        how = "worse" if self.worse else "better"
        if self.copies and not self.worse and self.metric in COPY_REWARDED:
            how = "better, but it copies its training data: not an improvement"
        return f"{self.model} {self.a.fmt()} → {self.b.fmt()} ({how})"

    @property
    def improved(self) -> bool:
        """Better, and not by copying (copying is never quality)."""
        return not self.worse and not self.unchanged and not (self.copies and self.metric in COPY_REWARDED)


# metrics a copying generator can improve without learning anything: reproducing training images
# scores as realistic and well-covered against a held-out set drawn from the same distribution
COPY_REWARDED = frozenset({"fid", "kid_mean", "precision", "recall", "density", "coverage", "mode_kl"})
COPY_ALPHA = 0.05


def copying_arms(df: Any) -> dict[tuple[str, float, str], str]:
    """(factor, level, model) -> a sentence, for the cells whose samples copy their training data: some
    seed's copy rate above its held-out rate, or (a duplicate-dose arm) its share of samples on the
    duplicated sources above the placebo share, with a Holm-adjusted p (over all these tests of the
    study) below ``COPY_ALPHA``."""
    from .analysis import holm

    out: dict[tuple[str, float, str], str] = {}
    if not len(df):
        return out
    # two signals: the per-sample copy rate against held-out images, and (dup_dose arms) the share of
    # samples nearest a duplicated source against placebo images; Holm over every test of both kinds
    tests = []
    for r in df.itertuples(index=False):
        p, over = getattr(r, "copy_p", None), None
        if p is not None and not pd_isna(p):
            over = float(r.copy_rate) > float(r.copy_rate_heldout)
            tests.append((r, float(p), over, f"{_num(100 * float(r.copy_rate))}% of its samples are copies of training "
                          f"images against {_num(100 * float(r.copy_rate_heldout))}% of held-out real images"))
        p = getattr(r, "dup_p", None)
        if p is not None and not pd_isna(p) and r.factor != "baseline":
            over = float(r.dup_source_share) > float(r.dup_placebo_share or 0.0)
            tests.append((r, float(p), over, f"{_num(100 * float(r.dup_source_share))}% of its samples sit nearest its "
                          f"duplicated sources against {_num(100 * float(r.dup_placebo_share or 0.0))}% for placebo images"))
    if not tests:
        return out
    adjusted = holm([t[1] for t in tests])
    for (r, _, over, what), p_adj in zip(tests, adjusted):
        if not over or not p_adj < COPY_ALPHA:
            continue
        lv = baseline_level(r.factor) if r.factor == "baseline" or pd_isna(r.level) else float(r.level)
        out.setdefault((str(r.factor), float(lv), str(r.model)),
                       f"{r.model} (seed {int(r.seed)}) copies its training data: {what} (Holm-adjusted p = {_num(float(p_adj))})")
    return out


def pd_isna(v: Any) -> bool:
    try:
        return v is None or bool(np.isnan(float(v)))
    except (TypeError, ValueError):
        return False


# factor -> (metrics, the first one is the headline; how to say the level)
VERDICT_SPECS: dict[str, tuple[tuple[str, ...], str]] = {
    "size": (("fid", "recall", "ct_score"), "Keeping {pct} of the training data"),
    "duplicates": (("fid", "memorization", "ct_score"), "Replacing {pct} of the training set by copies of a few images"),
    "label_noise": (("label_agreement", "fid"), "Flipping {pct} of the labels"),
    "corruption": (("fid", "precision"), "Corrupting {pct} of the images"),
    "imbalance": (("mode_kl", "fid"), "A {ratio}:1 long-tailed class mix"),
    "dup_dose": (("dup_source_share", "fid"), "Each duplicated source present {ratio} times (the unique set fixed)"),
    # model tweaks (kind "model"), in the same verdict as the data factors
    "capacity": (("fid", "recall"), "Model tweak: both networks {ratio}x as wide"),
    "steps": (("fid", "recall"), "Model tweak: training {ratio}x as long"),
    "augment": (("fid", "recall"), "Model tweak: DiffAugment on"),
    "ema": (("fid", "precision"), "Model tweak: sampling the raw generator instead of its EMA"),
    # the negative control: must come out not significant
    "placebo": (("fid", "recall"), "Negative control: the same training set in another order"),
}


def changes(df: Any, factor: str, metric: str, level: float) -> list[Change]:
    out = []
    if metric not in df.columns:
        return out
    for m in dict.fromkeys(df["model"]):
        a = _at(df, factor, metric, m, baseline_level(factor))
        b = _at(df, factor, metric, m, level)
        if a is not None and b is not None:
            out.append(Change(m, metric, a, b))
    return out


def study_analysis(df: Any, plan: Any = None) -> dict[str, Any]:
    """The analysis every part of the report reads (`reports.analysis`): the plan, the primary rows by
    factor (with their blocks), the one answer, and the pilot and control notes."""
    from .analysis import answer, control_note, pilot_note, primary_tests
    from .effects import default_plan, factor_baselines

    plan = plan or default_plan([f for f in dict.fromkeys(df["factor"]) if f != "baseline"] if len(df) else [])
    rows = primary_tests(df, plan, factor_baselines()) if len(df) else []
    n_models = int(df["model"].nunique()) if len(df) else 0
    return {"plan": plan, "primary": {r["factor"]: r for r in rows}, "rows": rows, "answer": answer(rows, plan),
            "pilot": pilot_note(rows, plan, n_models), "control": control_note(rows)}


def primary_text(row: Mapping[str, Any]) -> str:
    """A primary test in words: its estimate, interval, p, Holm p and whether it is significant."""
    lo, hi = float(row["ci_low"]), float(row["ci_high"])
    ci = f"95% interval {_num(lo)} to {_num(hi)}" if np.isfinite(lo) and np.isfinite(hi) else \
        "95% interval unbounded with this few blocks"
    return (f"primary test on {row['metric']} (pooled over models, {int(row['n_pairs'])} blocks): fitted change "
            f"{float(row['effect']):+.3g} ({ci}), sign-flip p = {_num(float(row['p_value']))}, Holm p = "
            f"{_num(float(row['p_holm']))}: {'significant' if row['significant'] else 'not significant'}")


def copying_factor(df: Any, factor: str, analysis: Mapping[str, Any]) -> bool:
    """Did a significant gain of ``factor`` come from copying? Some cell of it copies its training data
    (`copying_arms`), or its C_T fell over the same blocks (sign-flip p < alpha): samples nearer their
    training images than held-out images are."""
    from .analysis import factor_blocks, sign_flip_p

    if any(f == factor for f, _, _ in copying_arms(df)):
        return True
    d = list(factor_blocks(df, factor, baseline_level(factor), "ct_score").values())
    return bool(d) and float(np.mean(d)) < 0 and sign_flip_p(d) < analysis["plan"].alpha


def verdict(df: Any, manifests: Mapping[str, Mapping[str, Any]] | None = None,
            analysis: Mapping[str, Any] | None = None) -> list[str]:
    """Plain sentences: the headline (the primary family's outcome), then one per factor with numbers from
    the results (mean ± std over seeds; descriptive) and the factor's primary test, which alone decides
    what is called significant. ``analysis``: `study_analysis` (computed under the default plan if None)."""
    out: list[str] = []
    has = set(df["factor"])
    if "baseline" not in has:
        return ["No baseline arm has finished yet, so no effect can be measured."]
    analysis = analysis or study_analysis(df)
    models = list(dict.fromkeys(df["model"]))
    copying = copying_arms(df)
    out.extend(factor_sentences(df, analysis, copying).values())
    for (f, lvc, m), why in copying.items():
        if f == "baseline":
            out.append(f"Even at baseline, {why}.")
    if "cleaned" in has:
        out.extend(_cleaning_verdict(df, models, manifests or {}, analysis))
    head = headline(df, analysis)
    return ([head] if head else []) + out


def verdict_general(df: Any, manifests: Mapping[str, Mapping[str, Any]] | None,
                    analysis: Mapping[str, Any]) -> list[str]:
    """The report's verdict box: the headline, baseline copying and the cleaning sentence (each factor's own
    sentence sits in its section)."""
    if "baseline" not in set(df["factor"]):
        return ["No baseline arm has finished yet, so no effect can be measured."]
    out = [h for h in [headline(df, analysis)] if h]
    out += [f"Even at baseline, {why}." for (f, _, _), why in copying_arms(df).items() if f == "baseline"]
    if "cleaned" in set(df["factor"]):
        out.extend(_cleaning_verdict(df, list(dict.fromkeys(df["model"])), manifests or {}, analysis))
    return out


def factor_sentences(df: Any, analysis: Mapping[str, Any], copying: Mapping[tuple[str, float, str], str]) -> dict[str, str]:
    """factor -> its sentence (descriptive numbers, then its primary test)."""
    out: dict[str, str] = {}
    has = set(df["factor"])
    for factor in [f for f in dict.fromkeys(df["factor"]) if f != "baseline"]:
        metrics, words = VERDICT_SPECS.get(factor, (("fid", "recall"), f"{factor} at {{ratio}}"))
        lv = _extreme_level(df, factor) if factor in has else None
        if lv is None:
            continue
        per_metric = [(m, [dataclasses.replace(c, copies=(factor, float(lv), c.model) in copying)
                           for c in changes(df, factor, m, lv)]) for m in metrics]
        per_metric = [(m, ch) for m, ch in per_metric if ch]
        if not per_metric:
            continue
        head = words.format(pct=f"{lv * 100:g}%", ratio=f"{lv:g}")
        n_tr = df.loc[(df["factor"] == factor) & np.isclose(df["level"].astype(float), lv), "n_train"] \
            if "n_train" in df.columns else []
        if factor in ("size", "imbalance") and len(n_tr):
            head += f" ({int(np.mean(n_tr))} training images)"
        clauses = [f"{METRICS[m][0]}: " + ", ".join(c.text() for c in ch) for m, ch in per_metric]
        s = head + " — " + "; ".join(clauses) + "."
        for m, ch in per_metric[1:]:
            if all(c.unchanged for c in ch):
                s += f" {METRICS[m][0]} did not move (it stayed at {ch[0].a.fmt()})."
        row = analysis["primary"].get(factor)
        if row is not None:
            s += f" Its {primary_text(row)}"
            if row["significant"] and row["direction"] == "better" and copying_factor(df, factor, analysis):
                s += ", but the gain comes with copying of the training data, so it is not an improvement"
            elif row["significant"] and row["direction"] == "better" and FACTORS.get(factor).kind == "data" \
                    and factor not in ("cleaned",):
                s += " (a data defect that helped: against expectation)"
            s += "."
        for (f, lvc, m), why in copying.items():
            if f == factor and math.isclose(lvc, float(lv)):
                s += f" {why[0].upper()}{why[1:]}."
        out[factor] = s
    return out


def headline(df: Any, analysis: Mapping[str, Any]) -> str | None:
    """One sentence first: what the primary family found (significant after Holm, at the plan's alpha)."""
    rows = analysis["rows"]
    if not rows:
        return None
    plan = analysis["plan"]
    worse = [r["factor"] for r in rows if r["significant"] and r["direction"] == "worse"]
    better = [r["factor"] for r in rows if r["significant"] and r["direction"] == "better"
              and not copying_factor(df, r["factor"], analysis)]
    copied = [r["factor"] for r in rows if r["significant"] and r["direction"] == "better" and r["factor"] not in better]
    rest = len(rows) - len(worse) - len(better) - len(copied)

    def names(xs: list[str]) -> str:
        return f" ({', '.join(xs)})" if xs else ""
    return (f"In short: of {len(rows)} factors tested on {plan.metric} (one primary test each, Holm at "
            f"{plan.alpha:g}), {len(worse)} made it significantly worse{names(worse)}, {len(better)} significantly "
            f"better{names(better)}" + (f", {len(copied)} better only by copying{names(copied)}" if copied else "")
            + f" and {rest} had no significant effect.")


def _cleaning_verdict(df: Any, models: list[str], manifests: Mapping[str, Mapping[str, Any]],
                      analysis: Mapping[str, Any]) -> list[str]:
    out = []
    lvls = sorted(set(df.loc[df["factor"] == "cleaned", "level"].astype(float)))
    for lv in lvls[-1:]:
        ref_factor = "dirty" if ((df["factor"] == "dirty") & np.isclose(df["level"].astype(float), lv)).any() else None
        if ref_factor is None and ((df["factor"] == "corruption") & np.isclose(df["level"].astype(float), lv)).any():
            ref_factor = "corruption"
        parts = []
        recovered = []
        for m in models:
            base = _at(df, "cleaned", "fid", m, 0.0)
            cl = _at(df, "cleaned", "fid", m, lv)
            dirty = _at(df, ref_factor, "fid", m, lv) if ref_factor else None
            if base is None or cl is None:
                continue
            if dirty is None:
                parts.append(f"{m}: FID {cl.fmt()} after cleaning against {base.fmt()} on clean data")
                continue
            loss = dirty.mean - base.mean
            ref_test = analysis["primary"].get(ref_factor)  # the loss must be the primary family's finding
            if loss <= 0 or ref_test is None or not (ref_test["significant"] and ref_test["direction"] == "worse"):
                parts.append(f"{m}: the {ref_factor} set did not significantly raise FID ({base.fmt()} clean, "
                             f"{dirty.fmt()} {ref_factor}; see its primary test), so there was no established loss "
                             f"to recover; cleaned {cl.fmt()}")
                continue
            e = 100.0 * (dirty.mean - cl.mean) / loss
            recovered.append((m, e))
            parts.append(f"{m}: FID {dirty.fmt()} {ref_factor} → {cl.fmt()} cleaned (clean data {base.fmt()}): "
                         + (f"recovered {e:.0f}% of the loss" if e >= 0 else
                            "cleaning made it worse still (the cleaned set is smaller as well)"))
        if not parts:
            continue
        what = ("the same set before cleaning" if ref_factor == "dirty"
                else "the corruption arm at the same level (no 'dirty' arm ran)" if ref_factor else "clean data")
        s = f"Cleaning a set with {lv * 100:g}% planted problems (compared with {what}): " + "; ".join(parts) + "."
        n_clean = df.loc[(df["factor"] == "cleaned") & np.isclose(df["level"].astype(float), lv), "n_train"] \
            if "n_train" in df.columns else []
        n_base = df.loc[df["factor"] == "baseline", "n_train"] if "n_train" in df.columns else []
        if len(n_clean) and len(n_base):
            s += (f" The cleaned sets kept {int(np.mean(n_clean))} of {int(np.mean(n_base))} images, so they are "
                  f"also smaller than the clean baseline.")
        if recovered:
            good = [m for m, e in recovered if e >= 50]
            poor = [m for m, e in recovered if e <= 10]
            if len(good) == len(recovered) == len(parts):
                s += " The audit pays off for every model."
            elif good:
                s += f" The audit paid off for {', '.join(good)} (at least half the loss recovered)"
                s += "; not for the others." if len(good) < len(parts) else "."
            elif len(poor) == len(recovered):
                s += " Cleaning did not help here."
            else:
                s += " Cleaning helped only partly."
        rec = [m for k, m in manifests.items() if m.get("factor") == "cleaned" and _finite(m.get("level"))
               and np.isclose(float(m["level"]), lv) and m.get("recall") is not None]
        if rec:
            r = np.mean([m["recall"] for m in rec])
            rc = np.mean([m["recall_corrupted"] for m in rec if m.get("recall_corrupted") is not None] or [np.nan])
            rd = np.mean([m["recall_copies"] for m in rec if m.get("recall_copies") is not None] or [np.nan])
            lost = np.mean([m["clean_lost_fraction"] for m in rec])
            s += (f" The audit removed {r * 100:.0f}% of the planted items ({_pct(rc)} of the corrupted images, "
                  f"{_pct(rd)} of the copies) and {lost * 100:.1f}% of the clean ones.")
            kinds: dict[str, list[float]] = {}
            for m in rec:
                for k, v in _recall_by_kind(m).items():
                    kinds.setdefault(k, []).append(v)
            if kinds:
                s += " By kind of corruption: " + ", ".join(
                    f"{k.replace('_', ' ')} {_pct(float(np.mean(v)))}" for k, v in sorted(kinds.items())) + " removed."
                missed = [k.replace("_", " ") for k, v in sorted(kinds.items()) if np.mean(v) < 0.5]
                if missed:
                    s += f" What the audit missed ({', '.join(missed)}) stays in the cleaned set and limits the recovery."
        out.append(s)
    return out


def _recall_by_kind(man: Mapping[str, Any]) -> dict[str, float]:
    """Share of each planted corruption kind that the audit removed (from a cleaned arm's manifest)."""
    if man.get("recall_by_kind"):
        return dict(man["recall_by_kind"])
    removed = set(man.get("removed_ids") or {})
    kinds: dict[str, list[bool]] = {}
    for it in man.get("corrupted") or []:
        kinds.setdefault(it["kind"], []).append(it["id"] in removed)
    return {k: float(np.mean(v)) for k, v in kinds.items() if v}


def _pct(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v * 100:.0f}%"


# ============================================================================ SVG
def svg_chart(series: Mapping[str, Sequence[tuple[float, Stat]]], *, title: str, xlabel: str,
              log_x: bool = False, width: int = 300, height: int = 220, lower_better: bool | None = None) -> str:
    """A line chart, one line per series, error bars = ±1 std over seeds. Returns an <svg> string. The title
    and the direction hint sit on two lines, so neither is cut at the chart's width."""
    ml, mr, mt, mb = 46, 10, 34, 38
    pw, ph = width - ml - mr, height - mt - mb
    pts = [(x, s) for ser in series.values() for x, s in ser]
    esc = html.escape
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">'
            f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="12" font-weight="bold">{esc(title)}</text>'
            + (f'<text x="{width / 2}" y="27" text-anchor="middle" font-size="10" fill="#666">'
               f'({"lower" if lower_better else "higher"} is better)</text>' if lower_better is not None else ""))
    if not pts:
        return head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="11">no data</text></svg>'
    tx = (lambda v: math.log10(max(v, 1e-9))) if log_x else (lambda v: v)
    xs = [tx(x) for x, _ in pts]
    lo = min(s.mean - s.std for _, s in pts)
    hi = max(s.mean + s.std for _, s in pts)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.06 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    x0, x1 = min(xs), max(xs)
    if x1 - x0 < 1e-12:
        x0, x1 = x0 - 1, x1 + 1

    def X(v: float) -> float:
        return ml + (tx(v) - x0) / (x1 - x0) * pw

    def Y(v: float) -> float:
        return mt + (hi - v) / (hi - lo) * ph

    parts = [head, f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for t in np.linspace(lo + pad, hi - pad, 4):
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{ml - 4}" y="{Y(t) + 3:.1f}" text-anchor="end" font-size="9">{esc(_num(float(t)))}</text>')
    for x in sorted({x for x, _ in pts}):
        parts.append(f'<text x="{X(x):.1f}" y="{mt + ph + 12}" text-anchor="middle" font-size="9">{esc(f"{x:g}")}</text>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" font-size="10">{esc(xlabel)}</text>')
    for i, (name, ser) in enumerate(series.items()):
        col = COLORS[i % len(COLORS)]
        ser = sorted(ser)
        if not ser:
            continue
        path = " ".join(f"{'M' if j == 0 else 'L'}{X(x):.1f},{Y(s.mean):.1f}" for j, (x, s) in enumerate(ser))
        parts.append(f'<path d="{path}" fill="none" stroke="{col}" stroke-width="1.8"/>')
        for x, s in ser:
            if s.n > 1 and s.std > 0:
                parts.append(f'<line x1="{X(x):.1f}" x2="{X(x):.1f}" y1="{Y(s.mean - s.std):.1f}" '
                             f'y2="{Y(s.mean + s.std):.1f}" stroke="{col}" stroke-width="1.2"/>')
                for yy in (s.mean - s.std, s.mean + s.std):
                    parts.append(f'<line x1="{X(x) - 3:.1f}" x2="{X(x) + 3:.1f}" y1="{Y(yy):.1f}" y2="{Y(yy):.1f}" stroke="{col}"/>')
            parts.append(f'<circle cx="{X(x):.1f}" cy="{Y(s.mean):.1f}" r="2.6" fill="{col}">'
                         f'<title>{esc(name)} @ {x:g}: {esc(s.fmt())} (n={s.n})</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def svg_forest(rows: Sequence[Mapping[str, Any]], *, title: str, width: int = 620) -> str:
    """A forest plot: one row per test (label, effect, ci_low, ci_high, kind), the effect as a dot and
    its interval as a line around a zero line; data factors blue, model tweaks orange; rows in the order
    given (sorted by size by the caller)."""
    esc = html.escape
    colors = {"data": "#1f77b4", "model": "#ff7f0e", "control": "#7f7f7f"}
    ml, mr, top, step = 250, 60, 48, 16
    h = top + step * len(rows) + 26
    ends = [float(r[k]) for r in rows for k in ("ci_low", "ci_high", "effect") if np.isfinite(float(r[k]))]
    lo, hi = min([0.0] + ends), max([0.0] + ends)
    span = (hi - lo) or 1.0
    tx = lambda v: ml + (width - ml - mr) * (float(v) - lo) / span  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" '
             f'role="img" aria-label="{esc(title)}"><text x="4" y="14" font-size="12" font-weight="bold">{esc(title)}</text>'
             f'<text x="4" y="28" font-size="10" fill="#666">dot: estimate; line: 95% interval (to the edge: unbounded, '
             f'too few blocks); bold label: significant</text>'
             f'<text x="4" y="40" font-size="10" fill="#666">blue: data factor, orange: model tweak, gray: negative '
             f'control</text>'
             f'<line x1="{tx(0):.1f}" y1="{top - 4}" x2="{tx(0):.1f}" y2="{h - 22}" stroke="#999" stroke-dasharray="3,3"/>']
    for i, r in enumerate(rows):
        y = top + step * i + 8
        col = colors.get(str(r.get("kind", "data")), "#555")
        # an unbounded end (too few blocks for the test to reject anything) runs to the plot's edge
        a = tx(r["ci_low"]) if np.isfinite(float(r["ci_low"])) else ml - 4
        b = tx(r["ci_high"]) if np.isfinite(float(r["ci_high"])) else width - mr + 2
        weight = ' font-weight="bold"' if r.get("significant") else ""
        parts.append(f'<text x="{ml - 6}" y="{y + 4}" text-anchor="end" font-size="10"{weight}>{esc(str(r["label"]))}</text>'
                     f'<line x1="{a:.1f}" y1="{y}" x2="{b:.1f}" y2="{y}" stroke="{col}" '
                     f'stroke-width="2"/><circle cx="{tx(r["effect"]):.1f}" cy="{y}" r="3.5" fill="{col}"/>'
                     f'<text x="{width - mr + 4}" y="{y + 4}" font-size="9" fill="#444">{esc(_num(float(r["effect"])))}</text>')
    for v in (lo, 0.0, hi):
        parts.append(f'<text x="{tx(v):.1f}" y="{h - 8}" text-anchor="middle" font-size="9" fill="#666">{esc(_num(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ============================================================================ page
TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Data-ablation study: {{ data }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1250px;padding:16px 24px;color:#222}
h1{margin:.2em 0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.6em}
.verdict{background:#f3f7fb;border-left:4px solid #1f77b4;padding:8px 16px}
.verdict li{margin:.35em 0}
.panels{display:flex;flex-wrap:wrap;gap:6px}
.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f4f4f4;position:sticky;top:0}td.l,th.l{text-align:left}
.grids td{text-align:center;vertical-align:top}.grids img{width:150px;image-rendering:pixelated}
.scroll{overflow-x:auto;max-height:600px}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}
.warn{color:#a15c00}
.top{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
#answer{flex:1 1 640px;background:#f3f7fb;border-left:5px solid #1f77b4;padding:10px 16px}
#answer .big{font-size:1.25em;font-weight:600;margin:.2em 0 .5em}
#methods{flex:0 1 420px;background:#f8f8f8;border:1px solid #ddd;padding:8px 14px;font-size:.88em}
#methods li{margin:.25em 0}
details{margin:.4em 0;border:1px solid #e3e3e3;padding:4px 10px}
summary{cursor:pointer;font-weight:600}
.sig{color:#a11}.ns{color:#666}
</style></head><body>
<h1>Data-ablation study</h1>
<p class="meta">data <b>{{ data }}</b> · {{ n_arms }} finished arms of {{ n_grid }} · models {{ models|join(", ") }} ·
seeds {{ seeds|join(", ") }} · {{ n_samples }} generated samples per arm, scored against {{ n_ref }} held-out real images
with the <b>{{ features_name }}</b> extractor{% if accuracy is not none %} (held-out accuracy {{ accuracy }}){% endif %}</p>
{% if incomplete %}<p class="warn">This study is not finished: {{ n_grid - n_arms }} arms have not run yet; numbers below use what has.</p>{% endif %}
{% for w in warnings %}<p class="warn">{{ w }}</p>{% endfor %}

<div class="top">
<section id="answer" aria-label="the answer">
<p class="big">{{ answer.sentence }}</p>
{% for d in answer.details %}<p>{{ d }}</p>{% endfor %}
{% for n in notes %}<p class="warn">{{ n }}</p>{% endfor %}
{% if forest %}{{ forest }}{% endif %}
</section>
<aside id="methods" aria-label="methods"><b>Methods, declared before the data</b>
<ul>{% for m in methods %}<li>{{ m }}</li>{% endfor %}</ul></aside>
</div>

<h2 id="verdict">Verdict</h2>
<div class="verdict"><ul>{% for s in verdict %}<li>{{ s }}</li>{% endfor %}</ul></div>
<p class="meta">Only the primary tests (one per factor, in the box above) are called significant; every other number
is descriptive: ± is one standard deviation over seeds. Each factor's seed also draws which items it affects, so the
spread includes that luck.</p>

<h2 id="factors">Each factor</h2>
<p class="legend">{% for m in legend %}<span style="color:{{ m.color }}">&#9632;</span> {{ m.name }} &nbsp; {% endfor %}<span class="meta">(bars: ±1 std over seeds)</span></p>
{% for f in factor_sections %}
<details{% if loop.first %} open{% endif %}><summary>{{ f.name }} <span class="meta">({{ f.kind }})</span>{% if f.status %} ·
<span class="{{ 'sig' if f.status.startswith('significant') else 'ns' }}">{{ f.status }}</span>{% endif %}
<span class="meta">— {{ f.meaning }}</span></summary>
{% if f.sentence %}<p>{{ f.sentence }}</p>{% endif %}
<div class="panels">{% for svg in f.svgs %}{{ svg }}{% endfor %}</div>
</details>
{% endfor %}

{% if failed %}<h2 id="failed">Failed arms</h2>
<p>These arms ended with an error instead of a result; every other arm is unaffected. <code>reports ablate --retry-failed</code>
(same settings) runs them again.</p>
<table><tr><th class="l">arm</th><th class="l">reason</th></tr>
{% for f in failed %}<tr><td class="l">{{ f.arm }}</td><td class="l">{{ f.error }}</td></tr>{% endfor %}
</table>{% endif %}

{% if effect_rows %}<h2 id="effects">Effects</h2>
<details><summary>The {{ n_tests }} primary tests first, then the descriptive paired effects (as in <code>effects.csv</code>)</summary>
<p>Primary rows: the plan's test per factor, pooled over models (blocks = seed x model), its matching interval and
Holm's adjustment within the family; "significant" and "direction" come from it alone. Descriptive rows: seed s of each
arm paired with seed s of its model's baseline, the mean difference with a paired t interval and the unadjusted sign-flip
p; never called significant. With n pairs the smallest possible sign-flip p is 2/2<sup>n</sup>.</p>
<div class="scroll"><table><tr><th class="l">factor · level · model · metric</th><th>primary</th><th>baseline</th><th>arm</th><th>effect</th><th>95% interval</th><th>p</th><th>p (Holm)</th><th>pairs</th><th>significant</th><th class="l">direction</th></tr>
{% for r in effect_rows %}<tr><td class="l">{{ r.test }}</td><td>{{ 'yes' if r.primary else '' }}</td><td>{{ r.base }}</td><td>{{ r.arm }}</td><td>{{ r.effect }}</td><td>{{ r.ci }}</td><td>{{ r.p }}</td><td>{{ r.holm }}</td><td>{{ r.n }}</td><td>{{ r.sig }}</td><td class="l">{{ r.dir }}</td></tr>{% endfor %}
</table></div></details>{% endif %}

<h2 id="copies">Copies of training images</h2>
{% if copy_rows %}<p>Per arm, the training images its generator copied most (left), beside their copies among the arm's
samples, found one by one by <code>datacheck copies</code> (identical, re-encoded, brightness-changed or shifted pictures of a
training image). The held-out rate is the same search on the study's real reference (no copies): the false-alarm
baseline; p is the one-sided Fisher test that the arm's rate is higher.</p>
<table class="grids"><tr><th class="l">arm</th><th>copy rate</th><th>held-out rate</th><th>p</th><th class="l">most-copied training images and their copies</th></tr>
{% for r in copy_rows %}<tr><td class="l">{{ r.arm }}</td><td>{{ r.rate }}</td><td>{{ r.heldout }}</td><td>{{ r.p }}</td><td class="l">{% if r.b64 %}<img alt="copies of {{ r.arm }}" src="data:image/png;base64,{{ r.b64 }}">{% endif %}</td></tr>{% endfor %}
</table>{% else %}<p>No arm's samples copy a training image (per-sample search; see the copy_rate column).</p>{% endif %}

<h2 id="samples">Sample grids per arm</h2>
{% for f in grid_sections %}
<h3>{{ f.name }}</h3>
<table class="grids"><tr><th class="l">level</th>{% for c in f.cols %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in f.rows %}<tr><td class="l">{{ r.level }}</td>{% for img in r.imgs %}<td>{% if img %}<img alt="{{ img.alt }}" src="data:image/png;base64,{{ img.b64 }}">{% else %}—{% endif %}</td>{% endfor %}</tr>{% endfor %}
</table>
{% endfor %}

<h2 id="results">Every result</h2>
<div class="scroll"><table><tr>{% for c in columns %}<th class="{{ 'l' if loop.index <= 5 else '' }}">{{ c }}</th>{% endfor %}</tr>
{% for r in table %}<tr>{% for v in r %}<td class="{{ 'l' if loop.index <= 5 else '' }}">{{ v }}</td>{% endfor %}</tr>{% endfor %}
</table></div>

<h2 id="reproduce">Reproducibility</h2>
<p>Command{% if commands|length != 1 %}s{% endif %}:</p>
<pre>{% for c in commands %}{{ c }}
{% endfor %}</pre>
<table>
<tr><th class="l">data fingerprint</th><td class="l">{{ protocol.data_fingerprint }}</td></tr>
<tr><th class="l">reference (held out)</th><td class="l">{{ n_ref }} images, fingerprint {{ protocol.reference_fingerprint }}, split seed {{ protocol.split_seed }}</td></tr>
<tr><th class="l">training pool</th><td class="l">{{ n_pool }} images, fingerprint {{ protocol.pool_fingerprint }}</td></tr>
<tr><th class="l">feature extractor</th><td class="l">{{ features_identity }}</td></tr>
<tr><th class="l">training steps / batch size</th><td class="l">{{ steps_text }} / {{ protocol.batch_size }}</td></tr>
<tr><th class="l">image size</th><td class="l">{{ images_text }}</td></tr>
<tr><th class="l">network width</th><td class="l">{{ widths_text }}</td></tr>
{% for t in training %}<tr><th class="l">how arms trained{% if training|length > 1 %} (run {{ loop.index }}){% endif %}</th><td class="l">{{ t }}</td></tr>{% endfor %}
{% for k, v in versions.items() %}<tr><th class="l">{{ k }}</th><td class="l">{{ v }}</td></tr>{% endfor %}
</table>
</body></html>
"""


def _b64(path: Path) -> str | None:
    try:
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None


def build_context(study: Path) -> dict[str, Any]:
    import pandas as pd

    from .study import grid as study_grid, StudyConfig, read_results

    df = read_results(study)
    meta = json.loads((study / "study.json").read_text()) if (study / "study.json").exists() else {}
    cfg_d = meta.get("config", {})
    try:
        n_grid = len(study_grid(StudyConfig.from_dict(cfg_d))) if cfg_d else len(df)
    except Exception:
        n_grid = len(df)
    manifests: dict[str, Any] = {}
    features: dict[str, Any] = {}
    for arm_id in df.get("arm_id", []):
        d = study / "arms" / str(arm_id)
        try:
            manifests[str(arm_id)] = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError):
            pass
        if not features:
            try:
                features = json.loads((d / "result.json").read_text()).get("metrics", {}).get("features") or {}
            except (OSError, ValueError):
                pass
    if len(df):
        df["level"] = pd.to_numeric(df["level"], errors="coerce")
    models = list(dict.fromkeys(df["model"])) if len(df) else list(cfg_d.get("models", []))
    seeds = sorted(set(int(s) for s in df["seed"])) if len(df) else list(cfg_d.get("seeds", []))
    factor_order = [f for f in cfg_d.get("factors", []) if f in set(df.get("factor", []))] or \
        [f for f in dict.fromkeys(df.get("factor", [])) if f != "baseline"]
    from .effects import study_plan

    plan, reanalysed = study_plan(study)
    analysis = study_analysis(df, plan)
    sentences = factor_sentences(df, analysis, copying_arms(df)) if len(df) and "baseline" in set(df["factor"]) else {}

    factor_sections = []
    for f in factor_order:
        svgs = []
        for metric in PANELS + EXTRA_PANELS.get(f, ()):
            if metric not in df.columns or df[metric].isna().all():
                continue
            label, hib = METRICS[metric]
            series = {m: curve(df, f, metric, m) for m in models}
            svgs.append(svg_chart(series, title=label, xlabel=LEVEL_WORDS.get(f, "level"),
                                  log_x=(f == "imbalance"), lower_better=not hib))
        row = analysis["primary"].get(f)
        factor_sections.append({"name": f, "xlabel": LEVEL_WORDS.get(f, "level"),
                                "kind": FACTORS.get(f).kind if f in FACTORS else "data",
                                "meaning": meta.get("factors", {}).get(f, ""), "svgs": svgs,
                                "sentence": sentences.get(f, ""),
                                "status": ("" if row is None else "significant, " + row["direction"]
                                           if row["significant"] else "not significant")})

    grid_sections = []
    cols = [(m, s) for m in models for s in seeds]
    for f in ["baseline"] + factor_order:
        rows = []
        levels = sorted(set(df.loc[df["factor"] == f, "level"].dropna().astype(float))) if f != "baseline" else [None]
        for lv in levels:
            imgs = []
            for m, s in cols:
                sel = df[(df["factor"] == f) & (df["model"] == m) & (df["seed"] == s)]
                if lv is not None:
                    sel = sel[np.isclose(sel["level"].astype(float), lv)]
                if len(sel):
                    aid = str(sel["arm_id"].iloc[0])
                    b = _b64(study / "arms" / aid / "samples.png")
                    imgs.append({"alt": aid, "b64": b} if b else None)
                else:
                    imgs.append(None)
            rows.append({"level": "—" if lv is None else f"{lv:g}", "imgs": imgs})
        if rows:
            grid_sections.append({"name": f, "cols": [f"{m} · seed {s}" for m, s in cols], "rows": rows})

    failed = []
    made: dict[str, set[str]] = {"library versions": set(), "feature extractor": set()}
    for p in sorted((study / "arms").glob("*/result.json")) if (study / "arms").is_dir() else []:
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("status") == "failed":
            failed.append({"arm": p.parent.name, "error": str(doc.get("error", ""))})
        elif isinstance(doc, dict) and doc.get("provenance"):
            made["library versions"].add(json.dumps(doc["provenance"].get("versions"), sort_keys=True))
            made["feature extractor"].add(json.dumps(doc["provenance"].get("extractor"), sort_keys=True))
    warnings = [f"Arms were made with {len(v)} different {k}: their numbers may not be comparable "
                "(see each arm's result.json, provenance)." for k, v in made.items() if len(v) > 1]
    seen: dict[str, list[str]] = {}
    for p in sorted((study / "arms").glob("*/result.json")) if (study / "arms").is_dir() else []:
        try:
            for w in json.loads(p.read_text()).get("metrics", {}).get("warnings") or []:
                seen.setdefault(str(w), []).append(p.parent.name)
        except (OSError, ValueError, AttributeError):
            continue
    warnings += _merge_warnings(seen)

    # the answer card: the one answer, its numbers, the primary effects side by side (data, model, control)
    rows = sorted(analysis["rows"], key=lambda r: ({"data": 0, "model": 1, "control": 2}.get(r["kind"], 3),
                                                   -abs(r["effect"])))
    forest = svg_forest([{"label": f"{r['factor']} (farthest level {_num(float(r['level']))})", "effect": r["effect"],
                          "ci_low": r["ci_low"], "ci_high": r["ci_high"], "kind": r["kind"],
                          "significant": r["significant"]} for r in rows],
                        title=f"Primary effects on {plan.metric} (fitted change from the baseline, pooled over models)") \
        if rows else None
    ans = analysis["answer"]
    notes = [n for n in (reanalysed, analysis["pilot"], analysis["control"]) if n]
    effect_rows, n_tests = [], 0
    if (study / "effects.csv").exists():
        eff = pd.read_csv(study / "effects.csv")
        n_tests = int(eff["primary"].astype(bool).sum()) if "primary" in eff.columns else 0
        if len(eff):
            eff = eff.reindex(eff["effect"].abs().sort_values(ascending=False).index)
            eff = eff.sort_values("primary", ascending=False, kind="stable") if "primary" in eff.columns else eff
            shown = eff[eff["metric"].isin(["fid", "recall", "label_agreement", "copy_rate"])]
            for r in shown.itertuples(index=False):
                effect_rows.append({"test": f"{r.factor} {_cell(r.level)} · {r.model} · {r.metric}",
                                    "primary": bool(getattr(r, "primary", False)),
                                    "base": _cell(r.baseline_mean), "arm": _cell(r.arm_mean), "effect": _cell(r.effect),
                                    "ci": f"[{_cell(r.ci_low)}, {_cell(r.ci_high)}]", "p": _cell(r.p_value),
                                    "holm": _cell(r.p_holm), "n": int(r.n_pairs),
                                    "sig": "yes" if bool(getattr(r, "significant", False)) else "",
                                    "dir": r.direction})

    copy_rows = []
    if "copy_rate" in df.columns:
        for r in df[df["copy_rate"].fillna(0) > 0].sort_values("copy_rate", ascending=False).itertuples(index=False):
            copy_rows.append({"arm": r.arm_id, "rate": _cell(r.copy_rate), "heldout": _cell(getattr(r, "copy_rate_heldout", None)),
                              "p": _cell(getattr(r, "copy_p", None)), "b64": _b64(study / "arms" / str(r.arm_id) / "copies.png")})

    columns = [c for c in df.columns]
    table = [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    acc = features.get("accuracy", features.get("test_accuracy"))
    proto = meta.get("protocol", {})
    return {
        "data": cfg_d.get("data", proto.get("data", "?")),
        "n_arms": len(df), "n_grid": n_grid, "incomplete": len(df) < n_grid,
        "models": models, "seeds": seeds,
        "legend": [{"name": m, "color": COLORS[i % len(COLORS)]} for i, m in enumerate(models)], "n_samples": proto.get("n_samples", "?"),
        "n_ref": meta.get("reference", {}).get("n", "?"), "n_pool": meta.get("pool", {}).get("n", "?"),
        "features_name": features.get("name", proto.get("features", "?")),
        "accuracy": None if acc is None else f"{float(acc):.3f}",
        "answer": {"verdict": ans.verdict, "sentence": ans.sentence, "details": list(ans.details)},
        "notes": notes, "methods": plan.methods(),
        "verdict": verdict_general(df, manifests, analysis) if len(df) else ["No arm has finished yet."],
        "factor_sections": factor_sections, "grid_sections": grid_sections,
        "copy_rows": copy_rows, "failed": failed, "warnings": warnings,
        "effect_rows": effect_rows, "n_tests": n_tests, "forest": forest,
        "columns": columns, "table": table,
        "commands": meta.get("commands", []) or ["(not recorded)"],
        "protocol": _Obj(proto), "versions": meta.get("versions", {}),
        "steps_text": _steps_text(proto.get("steps")),
        "widths_text": _widths_text(proto.get("widths"), cfg_d.get("width")),
        "images_text": _images_text(meta.get("images", {})),
        "training": [t.get("summary", "") for t in meta.get("training", [])],
        "features_identity": json.dumps(features, sort_keys=True) if features else proto.get("features", "?"),
    }


class _Obj(dict):
    """dict with attribute access for the template (missing keys are None)."""

    def __getattr__(self, k: str) -> Any:
        return self.get(k)


def _images_text(images: dict[str, Any]) -> str:
    """The shape the study trained and evaluated at, and the reduction from the data's own, if any."""
    orig, used = images.get("original_shape"), images.get("trained_shape")
    if not used:
        return "?"
    text = "x".join(map(str, used))
    if orig and orig != used:
        text += (f", area-downsampled from {'x'.join(map(str, orig))} (reference and training pool alike) "
                 "to fit a CPU study; every metric is measured at this size")
    return text


def _widths_text(widths: Any, setting: Any) -> str:
    """What the study's width setting did, e.g. that the CPU preset reduced the models' auto width."""
    if not isinstance(widths, dict) or all(v is None for v in widths.values()):
        return "each model's auto width (2x the image side, 16 to 64)"
    vals = ", ".join(f"{m}: {v}" for m, v in widths.items())
    if setting == "cpu":
        return (f"{vals} channels at full resolution: reduced for a CPU study (width x side <= 256, at least 8), "
                "where the models' auto width would be 2x the image side (16 to 64)")
    return f"{vals} channels at full resolution (set by the study)"


def _steps_text(steps: Any) -> str:
    if isinstance(steps, dict):
        return ", ".join(f"{m}: {v if v is not None else 'model default'}" for m, v in steps.items())
    return "model default" if steps is None else str(steps)


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _merge_warnings(seen: Mapping[str, list[str]]) -> list[str]:
    """One line per kind of evaluation warning: messages that differ only in their numbers merge, each
    differing number shown as its range ("12.4-19.9% of real held-out images ... (8 arms)")."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for w, arms in seen.items():
        groups.setdefault(_NUMBER.sub("#", w), []).append((w, len(arms)))
    out = []
    for template, members in groups.items():
        numbers = [[float(x) for x in _NUMBER.findall(w)] for w, _n in members]
        texts = [_NUMBER.findall(w) for w, _n in members]
        parts = template.split("#")
        line = parts[0]
        for k, rest in enumerate(parts[1:]):
            lo, hi = min(n[k] for n in numbers), max(n[k] for n in numbers)
            shown = texts[0][k] if lo == hi else f"{fmt_num(lo)}-{fmt_num(hi)}"
            line += shown + rest
        n = sum(c for _w, c in members)
        out.append(f"{line} ({n} arm{'s' if n > 1 else ''})")
    return out


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return fmt_num(v, missing="")
    return str(v)


def render_html(context: Mapping[str, Any]) -> str:
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    ctx = dict(context)
    # the SVGs are built here with every label escaped; mark them safe so they are not escaped twice
    ctx["factor_sections"] = [{**f, "svgs": [Markup(s) for s in f["svgs"]]} for f in ctx["factor_sections"]]
    ctx["forest"] = Markup(ctx["forest"]) if ctx.get("forest") else None  # built from escaped strings (svg_forest)
    return env.from_string(TEMPLATE).render(**ctx)


def render_study(study: str | os.PathLike) -> Path:
    """(Re)build ``STUDY/report.html`` (and ``STUDY/effects.csv``, the paired effects the report's table
    shows) from results.csv, study.json and the arms' files."""
    from datacheck.errors import UserError

    from .effects import write_effects

    study = Path(study)
    if not (study / "results.csv").exists() and not (study / "study.json").exists():
        raise UserError(f"{study} is not a study folder (no results.csv or study.json)")
    if (study / "results.csv").exists():
        write_effects(study)
    out = study / "report.html"
    write_text(out, render_html(build_context(study)))
    return out
