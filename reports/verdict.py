"""The study's words: statistics over seeds for the report (`Stat`, curves), the copy signals, and the
verdict's sentences, all read from the analysis (`reports.analysis`) so that the headline, each factor's
sentence, the answer card and effects.csv say the same thing. Pure: no HTML, no plotting."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from datacheck.io import fmt_num

from .factors import FACTORS
from .study_metrics import METRICS

# every factor's plots show these; a factor's registry entry (`Factor.panels`) adds its own
PANELS = ("fid", "precision", "recall", "coverage", "memorization")


def panels(factor: str) -> tuple[str, ...]:
    """The metrics plotted for ``factor``: the standard panels, then the factor's own."""
    own = FACTORS.get(factor).panels if factor in FACTORS else ()
    return PANELS + tuple(m for m in own if m not in PANELS)


def axis_words(factor: str) -> str:
    """What the factor's levels mean, as a plot's x axis says it (the registry's `Factor.axis`)."""
    return FACTORS.get(factor).axis if factor in FACTORS else "level"


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
    """The level farthest from the baseline that the study ran (the registry says on which scale)."""
    lv = list(df.loc[df["factor"] == factor, "level"].astype(float))
    if not lv:
        return None
    if factor in FACTORS:
        return FACTORS.get(factor).farthest(lv)
    return max(lv, key=lambda x: abs(x - baseline_level(factor)))


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
    seed's copy rate above its held-out rate, with a Holm-adjusted p (over all these tests of the study)
    below ``COPY_ALPHA``. (A duplicate-dose arm's share of samples on its duplicated sources is tested once
    for the whole dose, as a primary trend test over blocks: its per-arm placebo p, whose floor is 1/201,
    stays descriptive, since no adjustment over a study's arms lets it through.)"""
    from .analysis import holm

    out: dict[tuple[str, float, str], str] = {}
    if not len(df):
        return out
    tests = []
    for r in df.itertuples(index=False):
        p = getattr(r, "copy_p", None)
        if p is not None and not pd_isna(p):
            over = float(r.copy_rate) > float(r.copy_rate_heldout)
            tests.append((r, float(p), over, f"{_num(100 * float(r.copy_rate))}% of its samples are copies of training "
                          f"images against {_num(100 * float(r.copy_rate_heldout))}% of held-out real images"))
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


def changes(df: Any, factor: str, metric: str, level: float, reference: str = "baseline") -> list[Change]:
    """Per model, ``metric`` from the baseline (or the ``reference`` factor's arms at the same level) to
    ``factor`` at ``level``: mean ± std over seeds."""
    out = []
    if metric not in df.columns:
        return out
    for m in dict.fromkeys(df["model"]):
        a = _at(df, factor, metric, m, baseline_level(factor)) if reference == "baseline" else \
            _at(df, reference, metric, m, level)
        b = _at(df, factor, metric, m, level)
        if a is not None and b is not None:
            out.append(Change(m, metric, a, b))
    return out


def study_analysis(df: Any, plan: Any = None) -> dict[str, Any]:
    """The analysis every part of the report reads (`reports.analysis`): the plan, the primary rows by
    factor (with their blocks), the one answer, and the pilot and control notes."""
    from .analysis import control_note, pilot_note, primary_tests
    from .answer import answer
    from .effects import default_plan, factor_baselines

    plan = plan or default_plan([f for f in dict.fromkeys(df["factor"]) if f != "baseline"] if len(df) else [])
    rows = primary_tests(df, plan, factor_baselines()) if len(df) else []
    n_models = int(df["model"].nunique()) if len(df) else 0
    head = [r for r in rows if r["metric"] == plan.metric]
    out = {"plan": plan, "primary": {r["factor"]: r for r in head}, "rows": head,
           "copy": {r["factor"]: r for r in rows if r["metric"] != plan.metric},
           "pilot": pilot_note(rows, plan, n_models), "control": control_note(head)}
    gain = 1.0 if plan.higher_is_better else -1.0
    for r in head:  # copying is never quality: the answer's gains and the headline both read this flag
        r["copying"] = bool(gain * r["effect"] > 0 and copying_factor(df, r["factor"], out))
    out["answer"] = answer(rows, plan)
    return out


def primary_text(row: Mapping[str, Any]) -> str:
    """A primary test in words: its estimate, interval, p, Holm p and whether it is significant."""
    lo, hi = float(row["ci_low"]), float(row["ci_high"])
    ci = f"95% interval {_num(lo)} to {_num(hi)}" if np.isfinite(lo) and np.isfinite(hi) else \
        "95% interval unbounded with this few blocks"
    ref = row.get("reference", "baseline")
    against = f" against {ref} at the same level and seed" if ref not in ("baseline", None) else ""
    return (f"primary test on {row['metric']}{against} (pooled over models, {int(row['n_pairs'])} blocks): fitted "
            f"change {float(row['effect']):+.3g} ({ci}), sign-flip p = {_num(float(row['p_value']))}, Holm p = "
            f"{_num(float(row['p_holm']))}: {'significant' if row['significant'] else 'not significant'}")


def copying_factor(df: Any, factor: str, analysis: Mapping[str, Any]) -> bool:
    """Did a significant gain of ``factor`` come from copying? Some cell of it copies its training data
    (`copying_arms`), or, over the same blocks, its samples moved into or deeper into C_T's copying side:
    the sign-flip test (p < alpha) of the fitted change of min(C_T, 0). A C_T that falls from far above 0
    toward 0 is a model fitting better, not copying, so only the part below 0 counts."""
    from .analysis import factor_blocks, sign_flip_p

    if any(f == factor for f, _, _ in copying_arms(df)):
        return True
    crow = analysis.get("copy", {}).get(factor)  # its copy signal's primary test (dup_dose's dose trend)
    if crow is not None and crow["significant"] and crow["effect"] > 0:
        return True
    if "ct_score" not in df.columns:
        return False
    below = df.assign(_ct_copy=np.minimum(df["ct_score"].astype(float), 0.0))
    d = list(factor_blocks(below, factor, baseline_level(factor), "_ct_copy").values())
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
        fac = FACTORS.get(factor) if factor in FACTORS else None
        metrics = fac.metrics if fac else ("fid", "recall")
        lv = _extreme_level(df, factor) if factor in has else None
        if lv is None:
            continue
        ref = analysis["primary"].get(factor, {}).get("reference", "baseline")
        per_metric = [(m, [dataclasses.replace(c, copies=(factor, float(lv), c.model) in copying)
                           for c in changes(df, factor, m, lv, ref)]) for m in metrics]
        per_metric = [(m, ch) for m, ch in per_metric if ch]
        if not per_metric:
            continue
        head = fac.opening(lv) if fac else f"{factor} at {lv:g}"
        head += _n_train_note(df, factor, lv)
        if ref != "baseline":
            head += f", against {ref} at the same level"
        clauses = [f"{METRICS[m][0]}: " + ", ".join(c.text() for c in ch) for m, ch in per_metric]
        s = head + " — " + "; ".join(clauses) + "."
        for m, ch in per_metric[1:]:
            if all(c.unchanged for c in ch):
                s += f" {METRICS[m][0]} did not move (it stayed at {ch[0].a.fmt()})."
        row = analysis["primary"].get(factor)
        if row is not None:
            s += f" Its {primary_text(row)}"
            expect = fac.expect if fac else "harm"
            if row["significant"] and row["direction"] == "better" and row["copying"]:
                s += ", but the gain comes with copying of the training data, so it is not an improvement"
            elif row["significant"] and row["direction"] == "better" and fac and fac.kind == "data" \
                    and expect == "harm":
                s += " (a data defect that helped: against expectation)"
            elif row["significant"] and row["direction"] == "worse" and expect == "gain":
                s += " (a fix that hurt: against expectation)"
            s += "."
            if _two_sided(df, factor):
                s += (" Its levels lie on both sides of the baseline, so the test is of the trend per step up: "
                      "'better' means that more of it helps, 'worse' that less of it does.")
            if row.get("broken"):
                s += (f" It takes {row['metric']} beyond {analysis['plan'].broken_ratio:g}x the baseline: a setting "
                      "nobody would keep here, so the answer sets it aside from its comparison of harms.")
        crow = analysis.get("copy", {}).get(factor)
        if crow is not None:
            s += (f" Copy signal ({METRICS.get(crow['metric'], (crow['metric'],))[0]}, its dose trend): "
                  f"{primary_text(crow)}")
            if crow["significant"] and crow["effect"] > 0:
                s += "; the duplicated images draw the generator's samples as their dose rises"
            s += "."
        for (f, lvc, m), why in copying.items():
            if f == factor and math.isclose(lvc, float(lv)):
                s += f" {why[0].upper()}{why[1:]}."
        out[factor] = s
    return out


def _two_sided(df: Any, factor: str) -> bool:
    """The factor ran levels on both sides of its baseline (its primary test is a trend per step up)."""
    lv = df.loc[df["factor"] == factor, "level"].astype(float)
    b = baseline_level(factor)
    return bool((lv < b).any() and (lv > b).any())


def _n_train_note(df: Any, factor: str, level: float) -> str:
    """" (N training images)" where the factor's arms at ``level`` train on another number than the baseline."""
    if "n_train" not in df.columns:
        return ""
    n_lv = df.loc[(df["factor"] == factor) & np.isclose(df["level"].astype(float), level), "n_train"].astype(float)
    n_base = df.loc[df["factor"] == "baseline", "n_train"].astype(float)
    if not len(n_lv) or not len(n_base) or abs(float(n_lv.mean()) - float(n_base.mean())) < 0.5:
        return ""
    return f" ({int(round(float(n_lv.mean())))} training images)"


def headline(df: Any, analysis: Mapping[str, Any]) -> str | None:
    """One sentence first: what the primary family found (significant after Holm, at the plan's alpha)."""
    rows = analysis["rows"]
    if not rows:
        return None
    plan = analysis["plan"]
    worse = [r["factor"] for r in rows if r["significant"] and r["direction"] == "worse"]
    better = [r["factor"] for r in rows if r["significant"] and r["direction"] == "better"
              and not r["copying"]]
    copied = [r["factor"] for r in rows if r["significant"] and r["direction"] == "better" and r["factor"] not in better]
    rest = len(rows) - len(worse) - len(better) - len(copied)

    def names(xs: list[str]) -> str:
        return f" ({', '.join(xs)})" if xs else ""
    return (f"In short: of {len(rows)} factors tested on {plan.metric} (one primary test each, Holm at "
            f"{plan.alpha:g}), {len(worse)} made it significantly worse{names(worse)}, {len(better)} significantly "
            f"better{names(better)}" + (f", {len(copied)} better only by copying{names(copied)}" if copied else "")
            + f" and {rest} had no significant effect." + "".join(
                f" The copy signal of {f} ({c['metric']}, its dose trend) was "
                + ("significant: the duplicated images draw the generator's samples." if c["significant"] and c["effect"] > 0
                   else "significant, the other way." if c["significant"] else "not significant.")
                for f, c in analysis.get("copy", {}).items()))


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
