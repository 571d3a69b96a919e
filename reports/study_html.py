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
    "ct_score": ("C_T copying score (< 0 copies, >> 0 underfits)", True),
    "dup_source_share": ("share of samples nearest a duplicated source", False),
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
    ci: tuple[float, float] | None = None  # paired bootstrap 95% interval of (arm - baseline), seeds paired

    @property
    def unchanged(self) -> bool:
        return abs(self.b.mean - self.a.mean) < 1e-12

    @property
    def worse(self) -> bool:
        return not self.unchanged and ((self.b.mean > self.a.mean) != METRICS[self.metric][1])

    @property
    def clear(self) -> bool | None:
        """Does the paired 95% interval exclude 0 (None with fewer than 2 paired seeds)?"""
        if self.ci is None:
            return None
        return not self.unchanged and (self.ci[0] > 0 or self.ci[1] < 0)

    def text(self) -> str:
        if self.unchanged:
            return f"{self.model} {self.a.fmt()} (unchanged)"
        how = "worse" if self.worse else "better"
        if self.copies and not self.worse and self.metric in COPY_REWARDED:
            how = "better, but it copies its training data: not an improvement"
        c = self.clear
        tag = how if c is None else f"{how}, {'clear' if c else 'paired interval includes 0'}"
        return f"{self.model} {self.a.fmt()} → {self.b.fmt()} ({tag})"

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
    from .effects import holm

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
}


def changes(df: Any, factor: str, metric: str, level: float) -> list[Change]:
    out = []
    if metric not in df.columns:
        return out
    for m in dict.fromkeys(df["model"]):
        a = _at(df, factor, metric, m, baseline_level(factor))
        b = _at(df, factor, metric, m, level)
        if a is not None and b is not None:
            out.append(Change(m, metric, a, b, ci=_paired_ci(df, factor, metric, m, level)))
    return out


def _paired_ci(df: Any, factor: str, metric: str, model: str, level: float) -> tuple[float, float] | None:
    """The seeded bootstrap 95% interval of the per-seed differences arm - baseline (seed s with seed s),
    as effects.csv has it; None with fewer than 2 pairs."""
    from .effects import bootstrap_ci

    rows = df[df["model"] == model]
    base = rows[rows["factor"] == "baseline"].set_index("seed")[metric]
    arm = rows[(rows["factor"] == factor) & np.isclose(rows["level"].astype(float), level)].set_index("seed")[metric]
    seeds = [s for s in sorted(set(base.index) & set(arm.index)) if np.isfinite(float(base[s])) and np.isfinite(float(arm[s]))]
    if len(seeds) < 2:
        return None
    return bootstrap_ci([float(arm[s]) - float(base[s]) for s in seeds])


def verdict(df: Any, manifests: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Plain sentences, one per factor, each with numbers from the results (mean ± std over seeds);
    says so where an effect is not clear (its paired interval includes 0) or goes against the thesis."""
    out: list[str] = []
    models = list(dict.fromkeys(df["model"]))
    has = set(df["factor"])
    if "baseline" not in has:
        return ["No baseline arm has finished yet, so no effect can be measured."]
    n_seeds = int(df.loc[df["factor"] == "baseline", "seed"].nunique())
    copying = copying_arms(df)
    for factor, (metrics, words) in VERDICT_SPECS.items():
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
        main_metric, main = per_metric[0]
        label = METRICS[main_metric][0]
        if all(c.unchanged for c in main):
            s += f" {label} did not move at all here."
        elif all(c.worse for c in main) and all(c.clear for c in main):
            s += f" It made {label} worse for every model, each paired interval excluding 0 ({n_seeds} seeds)."
        elif all(c.worse for c in main):
            k = sum(bool(c.clear) for c in main)
            s += (f" {label} got worse for every model" +
                  (f", {k} of {len(main)} clearly (paired interval excluding 0)." if k else
                   f", but no paired interval excludes 0 ({n_seeds} seed{'s' if n_seeds != 1 else ''}): not a clear effect here."))
        else:
            worse = [c.model for c in main if c.worse]
            same = [c.model for c in main if c.unchanged]
            better = [c.model for c in main if c.improved]
            copied = [c.model for c in main if not c.worse and not c.unchanged and not c.improved]
            bits = []
            if worse:
                bits.append(f"{label} got worse for {', '.join(worse)}")
            if same:
                bits.append(f"did not move for {', '.join(same)}")
            if better:
                tweak = factor in FACTORS and FACTORS.get(factor).kind == "model"
                bits.append(f"got better for {', '.join(better)}" + ("" if tweak else " (against expectation)"))
            if copied:
                bits.append(f"looks better for {', '.join(copied)} only because it copies its training data")
            s += " " + "; ".join(bits)[0].upper() + "; ".join(bits)[1:] + "."
        for m, ch in per_metric[1:]:
            if all(c.unchanged for c in ch):
                s += f" {METRICS[m][0]} did not move (it stayed at {ch[0].a.fmt()})."
        if factor == "size":
            fid = dict(per_metric).get("fid", [])
            ct = {c.model: c for c in dict(per_metric).get("ct_score", [])}
            for c in fid:
                if not c.worse and not c.unchanged and c.model in ct and ct[c.model].worse:
                    s += (f" Where FID improved ({c.model}), C_T fell: its samples sit closer to the training images "
                          f"than held-out images do, so the better FID comes from copying a small set, not from learning the data.")
        for (f, lvc, m), why in copying.items():
            if f == factor and math.isclose(lvc, float(lv)):
                s += f" {why[0].upper()}{why[1:]}."
        out.append(s)
    for (f, lvc, m), why in copying.items():
        if f == "baseline":
            out.append(f"Even at baseline, {why}.")
    if "cleaned" in has:
        out.extend(_cleaning_verdict(df, models, manifests or {}))
    out.extend(data_vs_model_sentences(df))
    head = headline(df, n_seeds)
    return ([head] if head else []) + out


def headline(df: Any, n_seeds: int) -> str | None:
    """One sentence first: how many factor x model cells clearly hurt their headline metric, and
    data against model effect on FID."""
    worse = better = spread = copied = 0
    copying = copying_arms(df)
    for factor, (metrics, _) in VERDICT_SPECS.items():
        lv = _extreme_level(df, factor) if factor in set(df["factor"]) else None
        if lv is None:
            continue
        for m in metrics:
            ch = [dataclasses.replace(c, copies=(factor, float(lv), c.model) in copying)
                  for c in changes(df, factor, m, lv)]
            # A clear gain whose C_T clearly fell (samples nearer their training images than held-out images
            # are) is copying too, as the factor's own sentence says; never count it as an improvement.
            ct = ({c.model: c for c in changes(df, factor, "ct_score", lv)}
                  if "ct_score" in df.columns and m != "ct_score" else {})
            if ch:
                for c in ch:
                    c_t = ct.get(c.model)
                    if c.clear and c.worse:
                        worse += 1
                    elif c.clear and c.improved and c_t is not None and c_t.clear and c_t.worse:
                        copied += 1
                    elif c.clear and c.improved:
                        better += 1
                    elif c.clear and not c.unchanged and not c.worse:
                        copied += 1
                    else:
                        spread += 1
                break  # the headline metric only
    total = worse + better + spread + copied
    if not total:
        return None
    s = (f"In short: of {total} factor × model cells, {worse} made the headline metric clearly worse, "
         f"{better} clearly better" + (f", {copied} looked better only by copying their training data" if copied else "")
         + f" and {spread} were not clear (paired interval including 0; {n_seeds} seed{'s' if n_seeds != 1 else ''}).")
    e = effects(df, "fid")
    if e["factors"] and (e["model"] is not None or e["tweaks"]):
        f, (d, lv) = max(e["factors"].items(), key=lambda kv: kv[1][0])
        s += f" The data moved FID by up to {_num(d)} ({f} at {lv:g})"
        if e["model"] is not None:
            s += f"; the choice of model by {_num(e['model'])}"
        if e["tweaks"]:
            t, (dt, lvt) = max(e["tweaks"].items(), key=lambda kv: kv[1][0])
            s += f"; the largest model tweak by {_num(dt)} ({t} at {lvt:g})"
        s += "."
    return s


def _cleaning_verdict(df: Any, models: list[str], manifests: Mapping[str, Mapping[str, Any]]) -> list[str]:
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
            ci = _paired_ci(df, ref_factor, "fid", m, lv)  # seeds paired, as the other sentences
            if loss <= 0 or (ci is not None and ci[0] <= 0):
                parts.append(f"{m}: the {ref_factor} set did not clearly raise FID ({base.fmt()} clean, "
                             f"{dirty.fmt()} {ref_factor}, paired interval including 0), so there was no clear loss to "
                             f"recover; cleaned {cl.fmt()}")
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


def effects(df: Any, metric: str) -> dict[str, Any]:
    """Per data factor (``factors``) and per model tweak (``tweaks``), the largest |change| of ``metric``
    from the baseline (mean over seeds, averaged over models); the model effect (spread of the baseline
    means across models); the seed spread (mean std of the baseline over seeds)."""
    models = list(dict.fromkeys(df["model"]))
    out: dict[str, Any] = {"factors": {}, "model": None, "seed": None}
    if metric not in df.columns:
        return out
    out["tweaks"] = {}
    base = {m: _at(df, "baseline", metric, m, 0.0) for m in models}
    for f in [f for f in dict.fromkeys(df["factor"]) if f != "baseline"]:
        kind = FACTORS.get(f).kind if f in FACTORS else "data"
        best = None
        for lv in sorted(set(df.loc[df["factor"] == f, "level"].astype(float))):
            ds = [abs(s.mean - base[m].mean) for m in models
                  if base.get(m) and (s := _at(df, f, metric, m, lv)) is not None]
            if ds and (best is None or np.mean(ds) > best[0]):
                best = (float(np.mean(ds)), lv)
        if best:
            out["factors" if kind == "data" else "tweaks"][f] = best
    means = [b.mean for b in base.values() if b is not None]
    if len(means) > 1:
        out["model"] = float(max(means) - min(means))
    stds = [b.std for b in base.values() if b is not None and b.n > 1]
    if stds:
        out["seed"] = float(np.mean(stds))
    return out


def data_vs_model_sentences(df: Any) -> list[str]:
    out = []
    for metric in ("fid", "recall", "memorization"):
        e = effects(df, metric)
        if not e["factors"]:
            continue
        f, (d, lv) = max(e["factors"].items(), key=lambda kv: kv[1][0])
        label = METRICS[metric][0]
        vals = df[metric].dropna().astype(float) if metric in df.columns else []
        if len(vals) and metric in ("memorization", "recall") and float(vals.max() - vals.min()) < 0.05:
            out.append(f"{label} hardly moved in any arm (between {_num(float(vals.min()))} and "
                       f"{_num(float(vals.max()))}), so it cannot rank data against model choice here.")
            continue
        s = f"{label}: the largest data effect was {f} at {lv:g} (moved it by {_num(d)} on average over models)"
        model_side = []
        if e["model"] is not None:
            s += f"; choosing {' vs '.join(dict.fromkeys(df['model']))} moved it by {_num(e['model'])}"
            model_side.append(e["model"])
        if e["tweaks"]:
            t, (dt, lvt) = max(e["tweaks"].items(), key=lambda kv: kv[1][0])
            s += f"; the largest model tweak, {t} at {lvt:g}, moved it by {_num(dt)}"
            model_side.append(dt)
        if model_side:
            s += (" — the data mattered more." if d > max(model_side) else " — the model mattered more.")
        else:
            s += "."
        if e["seed"] is not None:
            s += f" Seed spread (std at baseline): {_num(e['seed'])}."
        out.append(s)
    return out


# ============================================================================ SVG
def svg_chart(series: Mapping[str, Sequence[tuple[float, Stat]]], *, title: str, xlabel: str,
              log_x: bool = False, width: int = 300, height: int = 210, lower_better: bool | None = None) -> str:
    """A line chart, one line per series, error bars = ±1 std over seeds. Returns an <svg> string."""
    ml, mr, mt, mb = 46, 10, 24, 38
    pw, ph = width - ml - mr, height - mt - mb
    pts = [(x, s) for ser in series.values() for x, s in ser]
    esc = html.escape
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">'
            f'<text x="{width / 2}" y="15" text-anchor="middle" font-size="12" font-weight="bold">{esc(title)}'
            + (f' <tspan font-weight="normal" fill="#666">({"lower" if lower_better else "higher"} is better)</tspan>'
               if lower_better is not None else "") + "</text>")
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


def svg_bars(items: Sequence[tuple[str, float, str]], *, title: str, width: int = 420) -> str:
    """Horizontal bars (label, value, color)."""
    esc = html.escape
    h = 24 + 18 * len(items) + 8
    vmax = max([v for _, v, _ in items] + [1e-12])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" '
             f'role="img" aria-label="{esc(title)}"><text x="4" y="14" font-size="12" font-weight="bold">{esc(title)}</text>']
    for i, (label, v, col) in enumerate(items):
        y = 24 + 18 * i
        w = (width - 200) * v / vmax
        parts.append(f'<text x="130" y="{y + 11}" text-anchor="end" font-size="10">{esc(label)}</text>'
                     f'<rect x="136" y="{y}" width="{w:.1f}" height="13" fill="{col}"/>'
                     f'<text x="{140 + w:.1f}" y="{y + 11}" font-size="10">{esc(_num(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_forest(rows: Sequence[Mapping[str, Any]], *, title: str, width: int = 620) -> str:
    """A forest plot: one row per test (label, effect, ci_low, ci_high, kind), the effect as a dot and
    its interval as a line around a zero line; data factors blue, model tweaks orange; rows in the order
    given (sorted by size by the caller)."""
    esc = html.escape
    colors = {"data": "#1f77b4", "model": "#ff7f0e"}
    ml, mr, top, step = 250, 60, 34, 16
    h = top + step * len(rows) + 26
    lo = min([0.0] + [float(r["ci_low"]) for r in rows])
    hi = max([0.0] + [float(r["ci_high"]) for r in rows])
    span = (hi - lo) or 1.0
    tx = lambda v: ml + (width - ml - mr) * (float(v) - lo) / span  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" '
             f'role="img" aria-label="{esc(title)}"><text x="4" y="14" font-size="12" font-weight="bold">{esc(title)}</text>'
             f'<text x="4" y="28" font-size="10" fill="#666">dot: mean paired effect; line: 95% bootstrap interval; '
             f'blue: data factor, orange: model tweak</text>'
             f'<line x1="{tx(0):.1f}" y1="{top - 4}" x2="{tx(0):.1f}" y2="{h - 22}" stroke="#999" stroke-dasharray="3,3"/>']
    for i, r in enumerate(rows):
        y = top + step * i + 8
        col = colors.get(str(r.get("kind", "data")), "#555")
        parts.append(f'<text x="{ml - 6}" y="{y + 4}" text-anchor="end" font-size="10">{esc(str(r["label"]))}</text>'
                     f'<line x1="{tx(r["ci_low"]):.1f}" y1="{y}" x2="{tx(r["ci_high"]):.1f}" y2="{y}" stroke="{col}" '
                     f'stroke-width="2"/><circle cx="{tx(r["effect"]):.1f}" cy="{y}" r="3.5" fill="{col}"/>'
                     f'<text x="{width - mr + 4}" y="{y + 4}" font-size="9" fill="#444">{esc(_num(float(r["effect"])))}</text>')
    for v in (lo, 0.0, hi):
        parts.append(f'<text x="{tx(v):.1f}" y="{h - 8}" text-anchor="middle" font-size="9" fill="#666">{esc(_num(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def effects_answer(eff: Any, metric: str = "fid") -> str | None:
    """One sentence from effects.csv: did the data matter more than the model tweaks, on ``metric``,
    with the largest effect of each kind, its interval and its tests."""
    if eff is None or not len(eff) or "kind" not in eff.columns:
        return None
    e = eff[eff["metric"] == metric]
    if not len(e) or set(e["kind"]) != {"data", "model"}:
        return None
    best = {k: g.loc[g["effect"].abs().idxmax()] for k, g in e.groupby("kind")}
    d, m = best["data"], best["model"]

    def say(r: Any) -> str:
        return (f"{r.factor} at {_num(float(r.level))} on {r.model}: {_num(float(r.effect))} "
                f"(95% CI {_num(float(r.ci_low))} to {_num(float(r.ci_high))}, p = {_num(float(r.p_value))}, "
                f"Holm {_num(float(r.p_holm))}, {int(r.n_pairs)} pairs)")
    label = METRICS.get(metric, (metric,))[0]
    winner = "the data" if abs(float(d.effect)) > abs(float(m.effect)) else "the model tweaks"
    return (f"Did the data matter more than the model tweaks? On {label}, the largest data effect was "
            f"{say(d)}; the largest model-tweak effect was {say(m)}: here {winner} moved it more.")


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
</style></head><body>
<h1>Data-ablation study</h1>
<p class="meta">data <b>{{ data }}</b> · {{ n_arms }} finished arms of {{ n_grid }} · models {{ models|join(", ") }} ·
seeds {{ seeds|join(", ") }} · {{ n_samples }} generated samples per arm, scored against {{ n_ref }} held-out real images
with the <b>{{ features_name }}</b> extractor{% if accuracy is not none %} (held-out accuracy {{ accuracy }}){% endif %}</p>
{% if incomplete %}<p class="warn">This study is not finished: {{ n_grid - n_arms }} arms have not run yet; numbers below use what has.</p>{% endif %}
{% for w in warnings %}<p class="warn">{{ w }}</p>{% endfor %}

<h2 id="verdict">Verdict</h2>
<div class="verdict"><ul>{% for s in verdict %}<li>{{ s }}</li>{% endfor %}</ul></div>
<p class="meta">"clear" means the paired bootstrap 95% interval of the change (seed s of the arm against seed s of its
baseline, as in effects.csv) excludes 0; ± is one standard deviation over seeds. With few seeds that interval is only as
wide as the seeds' differences: read it with the sign-flip p of the paired effects (at best 0.5 with 2 seeds, 1/32 with
6). Each factor's seed also draws which items it affects, so the spread includes that luck.</p>

<h2 id="factors">Effect of each data factor</h2>
{% for f in factor_sections %}
<h3>{{ f.name }} <span class="meta">— {{ f.meaning }}</span></h3>
<p class="legend">{% for m in legend %}<span style="color:{{ m.color }}">&#9632;</span> {{ m.name }} &nbsp; {% endfor %}<span class="meta">(bars: ±1 std over seeds)</span></p>
<div class="panels">{% for svg in f.svgs %}{{ svg }}{% endfor %}</div>
{% endfor %}

<h2 id="data-vs-model">Data factors beside model choice</h2>
<p>Each bar is the largest change of the metric from the baseline that a factor caused (mean over seeds, averaged over
models), beside how far apart the models' baselines are and the seed spread at baseline.</p>
<div class="panels">{% for svg in effect_svgs %}{{ svg }}{% endfor %}</div>

{% if failed %}<h2 id="failed">Failed arms</h2>
<p>These arms ended with an error instead of a result; every other arm is unaffected. <code>reports ablate --retry-failed</code>
(same settings) runs them again.</p>
<table><tr><th class="l">arm</th><th class="l">reason</th></tr>
{% for f in failed %}<tr><td class="l">{{ f.arm }}</td><td class="l">{{ f.error }}</td></tr>{% endfor %}
</table>{% endif %}

{% if effect_rows %}<h2 id="effects">Paired effects</h2>
<p>Seed s of each arm paired with seed s of its model's baseline: the effect is the mean per-seed difference, with a
seeded bootstrap 95% interval, the exact paired sign-flip test and Holm's adjustment over all {{ n_tests }} tests of the
study (every factor, level, model and headline metric, in <code>effects.csv</code>); "direction" comes from the
interval. With n pairs the smallest possible p is 2/2<sup>n</sup> (0.5 with 2 seeds, 1/32 with 6): more seeds, not
larger effects, make a change significant.</p>
{% if forest %}{{ forest }}{% endif %}
<div class="scroll"><table><tr><th class="l">factor · model · metric</th><th>baseline</th><th>arm</th><th>effect</th><th>95% CI</th><th>p</th><th>p (Holm)</th><th>pairs</th><th class="l">direction</th></tr>
{% for r in effect_rows %}<tr><td class="l">{{ r.test }}</td><td>{{ r.base }}</td><td>{{ r.arm }}</td><td>{{ r.effect }}</td><td>{{ r.ci }}</td><td>{{ r.p }}</td><td>{{ r.holm }}</td><td>{{ r.n }}</td><td class="l">{{ r.dir }}</td></tr>{% endfor %}
</table></div>{% endif %}

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
        factor_sections.append({"name": f, "xlabel": LEVEL_WORDS.get(f, "level"),
                                "meaning": meta.get("factors", {}).get(f, ""), "svgs": svgs})

    effect_svgs = []
    for metric in ("fid", "recall", "coverage", "memorization"):
        e = effects(df, metric) if len(df) else {"factors": {}}
        if not e["factors"]:
            continue
        items = [(f"{f} @ {lv:g}", d, "#1f77b4") for f, (d, lv) in e["factors"].items()]
        if e.get("model") is not None:
            items.append(("model choice", e["model"], "#d62728"))
        if e.get("seed") is not None:
            items.append(("seed spread (std)", e["seed"], "#999999"))
        effect_svgs.append(svg_bars(items, title=f"{METRICS[metric][0]}: size of effect"))

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

    effect_rows, n_tests, forest, answer = [], 0, None, None
    if (study / "effects.csv").exists():
        eff = pd.read_csv(study / "effects.csv")
        n_tests = len(eff)
        answer = effects_answer(eff)
        fid = eff[eff["metric"] == "fid"] if n_tests else eff
        if len(fid):
            fid = fid.reindex(fid["effect"].abs().sort_values(ascending=False).index)
            forest = svg_forest([{"label": f"{r.factor} {_num(float(r.level))} · {r.model}", "effect": r.effect,
                                  "ci_low": r.ci_low, "ci_high": r.ci_high, "kind": r.kind}
                                 for r in fid.itertuples(index=False)], title="FID: paired effects, largest first")
        if n_tests:
            eff = eff.reindex(eff["effect"].abs().sort_values(ascending=False).index)
            shown = eff[eff["metric"].isin(["fid", "recall", "label_agreement", "copy_rate"])]
            for r in shown.itertuples(index=False):
                effect_rows.append({"test": f"{r.factor} {_cell(r.level)} · {r.model} · {r.metric}",
                                    "base": _cell(r.baseline_mean), "arm": _cell(r.arm_mean), "effect": _cell(r.effect),
                                    "ci": f"[{_cell(r.ci_low)}, {_cell(r.ci_high)}]", "p": _cell(r.p_value),
                                    "holm": _cell(r.p_holm), "n": int(r.n_pairs), "dir": r.direction})

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
        "verdict": (([answer] if answer else []) + verdict(df, manifests)) if len(df) else ["No arm has finished yet."],
        "factor_sections": factor_sections, "effect_svgs": effect_svgs, "grid_sections": grid_sections,
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
    ctx["effect_svgs"] = [Markup(s) for s in ctx["effect_svgs"]]
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
