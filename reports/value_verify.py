"""The checked half of ``reports value``: retraining arms on paired seeds, and the groups.

Arms (each a fused-population member, trained from verification seed s = 0..S-1, the same seed for
every arm of a block, so arms differ only in their data):

- ``full``: the whole training set;
- ``top`` at fraction k: without the k·n items the estimate ranks most harmful;
- ``random`` at k: without k·n items drawn at random (a new draw per seed);
- ``audit`` at k: without the k·n items datacheck's audit flags worst (lowest audit score first; fewer
  when it flags fewer, said in ``n_removed``);
- ``without:<group>`` (class and cluster groups, the first ``group_seeds`` seeds): the group thinned to
  ``group_keep`` of its items (0: removed).

Every arm is sampled and scored against the held-out reference (FID, coverage, recall), and per group
of the reference (its class, or its nearest cluster centre) the generator's coverage and recall of that
group: the share of the group's real images with a sample inside their k-NN ball (coverage), and the
share inside the samples' k-NN balls (recall), k = 5.

Tests (`compare`): per fraction, top vs random, top vs audit and top vs full, each a paired difference
of FID over the seeds, with the exact sign-flip p and the interval that inverts it
(`reports.analysis`). The primary family, declared here before any arm runs, is the three comparisons at
the largest fraction, Holm-adjusted; the other fractions are descriptive (paired t interval, never
called significant).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from datacheck.dataset import Dataset

from .analysis import ALPHA, holm, min_p, sign_flip_interval, sign_flip_p, t_interval

log = logging.getLogger(__name__)

REMOVALS = ("top", "random", "audit")
K_NN = 5


@dataclass(frozen=True)
class ValueArm:
    """One retraining arm: ``kind`` full/top/random/audit/without, ``fraction`` removed (NaN for full and
    group arms), ``group`` (group arms), ``seed``, and the pool indices it keeps."""

    kind: str
    fraction: float
    group: str
    seed: int
    keep: tuple[int, ...]

    @property
    def arm_id(self) -> str:
        lv = "" if not math.isfinite(self.fraction) else f"-{self.fraction:g}"
        g = f"-{self.group}" if self.group else ""
        return f"{self.kind}{lv}{g}-s{self.seed}"


def n_removed(fraction: float, n: int) -> int:
    """Items a removal arm at ``fraction`` of ``n`` removes."""
    return int(round(fraction * n))


def random_order(n: int, seed: int, draw_seed: int) -> np.ndarray:
    """(n,) the order in which the random arm of seed ``seed`` removes items: its first k go (one draw per
    seed, shared by every fraction, so the sets are nested). `removal_arms` and `verified_calibration` both
    read it, so the calibration's gaps are those of the sets actually removed."""
    return np.random.default_rng([int(draw_seed), int(seed), 7]).permutation(n)


def removal_arms(n: int, ranking: np.ndarray, audit_order: np.ndarray, fractions: Sequence[float],
                 seeds: Sequence[int], draw_seed: int) -> list[ValueArm]:
    """The full, top, random and audit arms. ``ranking``: pool indices, most harmful first;
    ``audit_order``: flagged indices, worst first (may be shorter than k)."""
    arms = []
    every = np.arange(n)
    for s in seeds:
        arms.append(ValueArm("full", math.nan, "", int(s), tuple(every.tolist())))
        perm = random_order(n, s, draw_seed)
        for k in fractions:
            m = n_removed(k, n)
            for kind, gone in (("top", ranking[:m]), ("random", perm[:m]), ("audit", audit_order[:m])):
                keep = np.setdiff1d(every, gone)
                arms.append(ValueArm(kind, float(k), "", int(s), tuple(keep.tolist())))
    return arms


def group_arms(n: int, groups: Mapping[str, tuple[str, np.ndarray]], seeds: Sequence[int], keep_share: float,
               draw_seed: int) -> list[ValueArm]:
    """One arm per (class or cluster) group and seed, with the group thinned to ``keep_share``."""
    arms = []
    for s in seeds:
        for name, (kind, idx) in groups.items():
            if kind not in ("class", "cluster"):
                continue
            rng = np.random.default_rng([int(draw_seed), int(s), 11])
            gone = rng.permutation(idx)[:len(idx) - int(round(keep_share * len(idx)))]
            arms.append(ValueArm("without", math.nan, name, int(s), tuple(np.setdiff1d(np.arange(n), gone).tolist())))
    return arms


def group_coverage(real: np.ndarray, fake: np.ndarray, member: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per group of real items (``member``: name -> bool mask over ``real``): coverage (share of the
    group's real items with a fake inside their k-NN ball among all real) and recall (share of them
    inside some fake's k-NN ball among the fakes). real (R, D), fake (F, D) features."""
    from scipy.spatial.distance import cdist

    rr = cdist(real, real)
    r_rad = np.sort(rr, 1)[:, K_NN]  # column 0 is the point itself
    ff = cdist(fake, fake)
    f_rad = np.sort(ff, 1)[:, K_NN]
    rf = cdist(real, fake)  # (R, F)
    covered = (rf <= r_rad[:, None]).any(1)
    recalled = (rf <= f_rad[None, :]).any(1)
    return {g: {"coverage": float(covered[m].mean()) if m.any() else math.nan,
                "recall": float(recalled[m].mean()) if m.any() else math.nan} for g, m in member.items()}


def run_arms(arms: Sequence[ValueArm], pool: Dataset, model_name: str, options: dict[str, Any], steps: int,
             batch_size: int, device: str, work: Path, measure: Callable[[Any, int], dict[str, Any]],
             progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Train every arm (fused groups), then ``measure(model, seed)`` each; one row per arm (failed
    arms have ``fid`` NaN and ``error``)."""
    import generative
    from generative.population import Member

    from .value_estimate import _train_chunks

    members = [Member(pool.subset(np.asarray(a.keep, int)), work / a.arm_id, seed=a.seed, steps=steps,
                      options=options) for a in arms]
    res = _train_chunks(model_name, members, batch_size, device, progress, "verification")
    rows = []
    for a, r in zip(arms, res):
        row: dict[str, Any] = {"arm_id": a.arm_id, "kind": a.kind, "fraction": a.fraction, "group": a.group,
                               "seed": a.seed, "n_train": len(a.keep), "n_removed": len(pool) - len(a.keep)}
        if r.status != "finished":
            rows.append({**row, "fid": math.nan, "error": r.error})
            continue
        try:
            row.update(measure(generative.load(r.path), a.seed))
        except Exception as e:  # one arm's evaluation: the others' results stand
            log.warning("arm %s failed: %s", a.arm_id, e)
            row.update(fid=math.nan, error=f"{type(e).__name__}: {e}")
        rows.append(row)
    return rows


def _paired(rows: Sequence[Mapping[str, Any]], a: tuple[str, float], b: tuple[str, float],
            metric: str = "fid") -> tuple[list[int], np.ndarray]:
    """Seeds where both arms (kind, fraction) have a finite ``metric``, and the differences a - b."""
    def pick(kind: str, frac: float) -> dict[int, float]:
        return {int(r["seed"]): float(r[metric]) for r in rows if r["kind"] == kind and not r.get("group")
                and (math.isnan(frac) and math.isnan(float(r["fraction"])) or math.isclose(float(r["fraction"]), frac))
                and np.isfinite(float(r.get(metric, math.nan)))}
    x, y = pick(*a), pick(*b)
    seeds = sorted(set(x) & set(y))
    return seeds, np.array([x[s] - y[s] for s in seeds])


def compare(rows: Sequence[Mapping[str, Any]], fractions: Sequence[float], alpha: float = ALPHA) -> list[dict[str, Any]]:
    """verification.csv: per fraction, the mean FID of each arm and the paired comparisons of ``top``
    with ``random``, ``audit`` and ``full`` (effect = FID(top) - FID(other): negative = removing the
    top-ranked items gives the better FID). Primary (Holm over three) at the largest fraction only."""
    out = []
    big = max(fractions)
    for k in fractions:
        for other in ("random", "audit", "full"):
            ref = (other, math.nan if other == "full" else float(k))
            seeds, d = _paired(rows, ("top", float(k)), ref)
            if not len(d):
                continue
            primary = math.isclose(k, big)
            lo, hi = sign_flip_interval(d, alpha) if primary else t_interval(d, alpha)
            mean_of = {kind: float(np.mean([float(r["fid"]) for r in rows if r["kind"] == kind and int(r["seed"]) in seeds
                                            and (kind == "full" or math.isclose(float(r["fraction"]), k))]))
                       for kind in ("top", other)}
            removed = {kind: float(np.mean([float(r.get("n_removed", math.nan)) for r in rows if r["kind"] == kind
                                            and (kind == "full" or math.isclose(float(r["fraction"]), k))]))
                       for kind in ("top", other)}
            out.append({"fraction": float(k), "comparison": f"top vs {other}", "metric": "fid",
                        "top_mean": mean_of["top"], "other_mean": mean_of[other],
                        "n_removed_top": removed["top"], "n_removed_other": removed[other], "effect": float(d.mean()),
                        "ci_low": lo, "ci_high": hi, "p_value": sign_flip_p(d), "p_holm": math.nan,
                        "n_pairs": len(d), "primary": primary, "significant": False, "direction": "none",
                        "interval": "sign-flip inversion" if primary else "paired t (descriptive)"})
    prim = [r for r in out if r["primary"]]
    for r, p in zip(prim, holm([r["p_value"] for r in prim])):
        r["p_holm"] = float(p)
        r["significant"] = bool(p < alpha)
        r["direction"] = ("better" if r["effect"] < 0 else "worse") if r["significant"] else "none"
    return out


def curves(rows: Sequence[Mapping[str, Any]], fractions: Sequence[float], metric: str = "fid") -> dict[str, list[tuple[float, list[float]]]]:
    """kind -> [(fraction, per-seed values)], with the full arm at fraction 0 of every curve."""
    full = [float(r[metric]) for r in rows if r["kind"] == "full" and np.isfinite(float(r.get(metric, math.nan)))]
    out: dict[str, list[tuple[float, list[float]]]] = {}
    for kind in REMOVALS:
        pts = [(0.0, full)] if full else []
        for k in fractions:
            v = [float(r[metric]) for r in rows if r["kind"] == kind and math.isclose(float(r["fraction"]), k)
                 and np.isfinite(float(r.get(metric, math.nan)))]
            if v:
                pts.append((float(k), v))
        out[kind] = pts
    return out


def group_effects(rows: Sequence[Mapping[str, Any]], groups: Mapping[str, tuple[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Per class/cluster group, from its ``without`` arms paired with the ``full`` arm of the same seed:
    the FID change and the change of the group's own coverage and recall (mean over seeds, paired t
    interval for the FID change; a negative coverage change = the model needs this group's images)."""
    full = {int(r["seed"]): r for r in rows if r["kind"] == "full"}
    out: dict[str, dict[str, Any]] = {}
    for name in groups:
        arms = [r for r in rows if r["kind"] == "without" and r["group"] == name and int(r["seed"]) in full]
        if not arms:
            continue
        rec: dict[str, Any] = {"arm_seeds": len(arms)}
        d_fid = [float(r["fid"]) - float(full[int(r["seed"])]["fid"]) for r in arms]
        rec["fid_change"] = float(np.mean(d_fid))
        rec["fid_change_low"], rec["fid_change_high"] = t_interval(d_fid)
        for m in ("coverage", "recall"):
            a = [r.get("groups", {}).get(name, {}).get(m, math.nan) for r in arms]
            b = [full[int(r["seed"])].get("groups", {}).get(name, {}).get(m, math.nan) for r in arms]
            rec[f"{m}_full"] = float(np.nanmean(b)) if np.isfinite(b).any() else math.nan
            rec[f"{m}_without"] = float(np.nanmean(a)) if np.isfinite(a).any() else math.nan
            rec[f"{m}_change"] = rec[f"{m}_without"] - rec[f"{m}_full"]
        out[name] = rec
    return out


def verified_calibration(rows: Sequence[Mapping[str, Any]], ranking: np.ndarray, score: np.ndarray, fraction: float,
                         draw_seed: int) -> dict[str, Any]:
    """FID points per item per unit of score, measured by retraining: removing set S moves FID by about
    the sum of its items' values, so per seed c = (FID(random) - FID(top)) / (m * (mean score of the random
    set - mean score of the top set)) at ``fraction`` (the random sets redrawn exactly as `removal_arms`
    drew them). Returns the mean c over seeds, its paired t interval and the seeds used."""
    n = len(score)
    m = n_removed(fraction, n)
    top_mean = float(score[ranking[:m]].mean())
    seeds, d = _paired(rows, ("random", float(fraction)), ("top", float(fraction)))
    cs = []
    for s, dfid in zip(seeds, d):
        gap = float(score[random_order(n, s, draw_seed)[:m]].mean()) - top_mean
        if gap > 0:
            cs.append(dfid / (m * gap))
    if not cs:
        return {"per_item": math.nan, "low": math.nan, "high": math.nan, "seeds": 0}
    lo, hi = t_interval(cs)
    return {"per_item": float(np.mean(cs)), "low": lo, "high": hi, "seeds": len(cs), "fraction": float(fraction)}


def power_note(n_seeds: int, tests: int = 3, alpha: float = ALPHA) -> str | None:
    """Said when the seeds cannot make any primary test significant after Holm."""
    if min_p(n_seeds) <= alpha / tests:
        return None
    return (f"With {n_seeds} seeds the smallest possible p is {min_p(n_seeds):.3g}, above Holm's {alpha / tests:.3g}: "
            "no comparison can come out significant; use more --seeds (7 or more).")
