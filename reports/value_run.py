"""``reports value`` end to end: `value` (the Python front door, also ``reports.value``) and its driver
`run` (estimate, groups, retraining arms, tests, outputs), and the ``reports value`` command line.
What the values and tests mean is in `reports.valuation`."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError

from .valuation import ValueConfig, audit_flags, check_groups, group_table, load_sets, make_groups
from .value_estimate import estimate
from .value_verify import (compare, curves, verified_calibration, group_arms, group_coverage, group_effects, n_removed, power_note, removal_arms,
                           run_arms)

log = logging.getLogger(__name__)

VALUE_VERSION = 1


def model_options(cfg: ValueConfig, shape: tuple[int, int, int]) -> dict[str, Any]:
    """The study's CPU width rule (`reports.study.StudyConfig.widths`, width "cpu") for every member."""
    from .study import StudyConfig

    w = StudyConfig(device=cfg.device, width="cpu").widths(shape)
    return {} if w is None else {"g_width": w, "d_width": w}


def make_measure(ev: Any, cfg: ValueConfig, reference: Dataset, members: dict[str, np.ndarray]) -> Callable[[Any, int], dict[str, Any]]:
    """``measure(model, seed)``: sample ``n_samples`` (conditional models: the reference's class mix), score
    FID, precision, recall, coverage against the reference, and each group's coverage and recall."""
    import torch

    from . import metrics as M
    from .arms import _reference_labels

    def measure(model: Any, seed: int, fid_only: bool = False) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(10_000 + int(seed))
        labels = _reference_labels(reference, cfg.n_samples, gen) if model.conditional else None
        fake = np.asarray(model.sample(cfg.n_samples, generator=gen, labels=labels) if labels is not None
                          else model.sample(cfg.n_samples, generator=gen))
        # the samples' features once, for every metric here (ev.evaluate would also compute KID and mode
        # coverage, which this run never reports, and group_coverage would extract them again)
        ff, rf = ev.extractor(fake), ev.real_feats
        row: dict[str, Any] = {"fid": M.frechet_distance(real=rf, fake=ff)}
        if fid_only:  # the estimate population's calibration reads FID alone
            return row
        row.update({k: None for k in ("precision", "recall", "coverage", "density")})
        if ev.k < min(len(rf), len(ff)):
            row.update({k: v for k, v in M.prdc(real=rf, fake=ff, k=ev.k).items() if k in row})
        if members:
            row["groups"] = group_coverage(rf, ff, members)
        return row

    return measure


def value(data: str | Dataset = "digits", model: str = "cvae", out: str | os.PathLike | None = None,
          progress: Callable[[str], None] | None = None, **settings: Any) -> dict[str, Any]:
    """Value every item and group of ``data`` for ``model`` and verify the ranking by retraining; see the
    module docstring. ``settings``: the other `ValueConfig` fields (``reference`` may be a Dataset). Writes into ``out`` when given.
    Returns value.json's content plus ``items`` (DataFrame), ``groups`` and ``verification`` (lists)."""
    ds = data if isinstance(data, Dataset) else None
    ref = settings.pop("reference", None)
    ref_ds = ref if isinstance(ref, Dataset) else None
    if ref is not None:
        settings["reference"] = ref if ref_ds is None else (ref_ds.source or "reference dataset")
    cfg = ValueConfig.from_dict({"data": data if ds is None else (data.source or "dataset"), "model": model, **settings})
    return run(cfg, ds, None if out is None else Path(out), progress, ref_ds)


def run(cfg: ValueConfig, ds: Dataset | None, out: Path | None,
        progress: Callable[[str], None] | None = None, reference_ds: Dataset | None = None) -> dict[str, Any]:
    """Everything `value` does, for a resolved config."""
    import pandas as pd

    from .evaluation import get_evaluator

    t0 = time.perf_counter()
    say = progress or (lambda s: log.info("%s", s))
    pool, reference, how = load_sets(cfg, ds, reference_ds)
    if out is not None:  # any source with files (a folder, a CSV manifest's image folder): never write into it
        from datacheck.io import refuse_inside_source

        refuse_inside_source(out, pool.root, "--out", "reports value never writes into its training data, pick a place outside it")
    import generative

    if generative.MODELS.get(cfg.model).make_config({}).conditional and not pool.labeled:
        raise UserError(f"--model {cfg.model} is conditional and needs labels, and this training set has none; "
                        "use --model vae or dcgan")
    check_groups(pool, cfg.groups, int(cfg.clusters))
    features = cfg.features if cfg.features != "auto" else ("classifier" if reference.labeled else "random")
    ev = get_evaluator(real=reference, features=features, n=cfg.n_samples, seed=0)
    feats = ev.extractor(pool.images)
    say("auditing the training set")
    audit_score, audit_checks, by_check = audit_flags(pool)
    groups, centres, notes = make_groups(pool, cfg.groups, feats, cfg.clusters, cfg.split_seed, by_check)
    notes.insert(0, how)
    members: dict[str, np.ndarray] = {}  # group -> mask over the evaluator's real images
    near = ((ev.real_feats[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1) if len(centres) else None
    for name, (kind, _) in groups.items():
        if kind == "class":
            members[name] = np.array([f"class:{reference.label_name(int(c))}" == name for c in ev.real.labels])
        elif kind == "cluster" and near is not None:
            members[name] = near == int(name.split(":")[1])
    measure = make_measure(ev, cfg, reference, members)
    opts = model_options(cfg, pool.shape)
    work = Path(tempfile.mkdtemp(prefix="dm-value-"))
    timings: dict[str, float] = {}
    try:
        t1 = time.perf_counter()
        est = estimate(pool, cfg.model, opts, int(cfg.members), int(cfg.steps), cfg.estimate_seed, cfg.batch_size,
                       cfg.device, work, lambda m: float(measure(m, cfg.estimate_seed, fid_only=True)["fid"]), say)
        timings["estimate"] = time.perf_counter() - t1
        ranking = np.lexsort((np.arange(len(pool)), est["score"]))  # most harmful (lowest score) first
        flagged = np.flatnonzero(np.array(audit_checks) != "")  # the audit's own flags (a flag may score 1)
        audit_order = flagged[np.lexsort((flagged, audit_score[flagged]))]
        short = [k for k in cfg.fractions if len(audit_order) < n_removed(k, len(pool))]  # type: ignore[union-attr]
        if short:
            notes.append(f"The audit flagged {len(audit_order)} items, fewer than k at fraction(s) "
                         f"{', '.join(f'{k:g}' for k in short)}: the audit arm there removes only those (n_removed in "
                         "arms.csv), so it changes the training set less than the other arms.")
        seeds = list(range(int(cfg.seeds)))
        arms = removal_arms(len(pool), ranking, audit_order, cfg.fractions, seeds, cfg.estimate_seed)  # type: ignore[arg-type]
        arms += group_arms(len(pool), groups, seeds[:int(cfg.group_seeds)], cfg.group_keep, cfg.estimate_seed)
        t2 = time.perf_counter()
        rows = run_arms(arms, pool, cfg.model, opts, int(cfg.steps), cfg.batch_size, cfg.device, work, measure, say)
        timings["verification"] = time.perf_counter() - t2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # the values in FID points: calibrated by the retraining (top vs random at the largest fraction) where
    # that comparison is significant, else by the estimate population's regression (flagged in the notes)
    verification = compare(rows, cfg.fractions)  # type: ignore[arg-type]
    big = max(cfg.fractions)  # type: ignore[type-var]
    ver_cal = verified_calibration(rows, ranking, est["score"], big, cfg.estimate_seed)
    tvr = next((t for t in verification if t["primary"] and t["comparison"] == "top vs random"), None)
    centred = est["score"] - est["score"].mean()
    if tvr is not None and tvr["significant"] and tvr["direction"] == "better" and ver_cal["per_item"] > 0:
        values, source = ver_cal["per_item"] * centred + 0.0, "retraining"
    else:
        values, source = est["value"], "population"
        notes.append("The retraining did not show removing the top-ranked items to be significantly better than removing "
                     "random ones, so the values' FID points come from the estimate population alone (below).")
    rank = np.empty(len(pool), int)
    rank[ranking] = np.arange(1, len(pool) + 1)
    group_of = {i: [] for i in range(len(pool))}
    for name, (kind, idx) in groups.items():
        if kind == "cluster":
            for i in idx:
                group_of[int(i)].append(name)
    items = pd.DataFrame({"id": list(pool.ids), "label": [pool.label_name(int(c)) for c in pool.labels],
                          "value": values, "rank": rank, "score": est["score"], "fit": est["fit"],
                          "margin": est["margin"], "n_oob": est["n_oob"], "audit_score": audit_score,
                          "audit_checks": audit_checks, "cluster": [";".join(group_of[i]) for i in range(len(pool))]})
    effects = group_effects(rows, groups)
    gtable = group_table(groups, values, effects)
    cal = est["calibration"]
    if source == "population" and not cal["supported"]:
        notes.append(f"Calibration: across the {cal['members']} estimate members, FID did not fall significantly with "
                     f"the mean score of their training items (slope {cal['slope']:.3g}, 95% interval "
                     f"[{cal['slope_low']:.3g}, {cal['slope_high']:.3g}])"
                     + (": the values in FID points are an extrapolation, the rank is the estimate's finding."
                        if cal["per_item"] > 0 else "; every value is 0 and only the rank carries information."))
    pn = power_note(int(cfg.seeds))
    if pn:
        notes.append(pn)
    timings["total"] = time.perf_counter() - t0
    doc = {"format": "datamatters-value", "version": VALUE_VERSION, "config": cfg.to_dict(),
           "n_items": len(pool), "n_reference": len(reference), "features": ev.identity,
           "model_options": opts, "calibration": cal, "value_calibration": {"source": source, **ver_cal}, "estimate_fids": est["fids"],
           "headline": headline(verification), "tests": verification, "curves": curves(rows, cfg.fractions),  # type: ignore[arg-type]
           "notes": notes, "seconds": {k: round(v, 1) for k, v in timings.items()},
           "value_meaning": "FID points that keeping the item saves compared with an average item (positive helps; "
                            "lowest = most harmful): its out-of-bag score times the FID points per unit of score that "
                            + ("the retraining measured (top vs random removal)" if source == "retraining" else
                               "the estimate population's regression gives")}
    result = {**doc, "items": items, "groups": gtable, "verification": verification, "arms": rows}
    if out is not None:
        write_outputs(out, result, pool)
    return result


def headline(tests: list[dict[str, Any]]) -> str:
    """One honest sentence on the primary comparisons (the largest fraction)."""
    prim = [t for t in tests if t["primary"]]
    if not prim:
        return "No verification comparison could be made (arms failed)."
    k = prim[0]["fraction"]
    parts = []
    for t in prim:
        other = t["comparison"].split(" vs ")[1]
        what = {"random": f"removing {k * 100:g}% at random", "audit": f"removing the audit's {k * 100:g}% worst flags",
                "full": "keeping every item"}[other]
        word = "significantly better than" if t["direction"] == "better" else (
            "significantly worse than" if t["direction"] == "worse" else "not significantly different from")
        parts.append(f"{word} {what} (FID {t['effect']:+.3g}, Holm p {t['p_holm']:.3g})")
    lead = f"Removing the {k * 100:g}% of items ranked most harmful was "
    return lead + "; ".join(parts) + "."


def write_outputs(out: Path, result: dict[str, Any], pool: Dataset) -> None:
    """VALUE/items.csv, groups.csv, verification.csv, arms.csv, value.json, report.html (each atomic)."""
    import pandas as pd

    from datacheck.io import write_json, write_text

    from .value_html import render_value

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "items.csv", result["items"].to_csv(index=False))
    write_text(out / "groups.csv", pd.DataFrame(result["groups"]).to_csv(index=False))
    write_text(out / "verification.csv", pd.DataFrame(result["verification"]).to_csv(index=False))
    flat = [{k: v for k, v in r.items() if k != "groups"} for r in result["arms"]]
    write_text(out / "arms.csv", pd.DataFrame(flat).to_csv(index=False))
    doc = {k: v for k, v in result.items() if k not in ("items", "groups", "verification", "arms")}
    write_json(out / "value.json", {**doc, "groups": result["groups"]})
    write_text(out / "report.html", render_value(result, pool))


# ============================================================================ command line
def add_value_command(sub: Any) -> None:
    v = sub.add_parser("value", help="which training images help or hurt a generator, checked by retraining",
                       description="Value every training item and group for a model (a cheap estimate from a fused "
                                   "population on random halves), then verify the ranking by retraining on paired seeds.")
    v.add_argument("--data", required=True, help="training set (a folder, .npz, digits ...)")
    v.add_argument("--model", default="cvae", help="generative model (default cvae)")
    v.add_argument("--out", required=True, help="output folder (items.csv, groups.csv, report.html ...)")
    v.add_argument("--groups", default=None, help="comma-separated: class, cluster, finding, folder (default: all that apply)")
    v.add_argument("--budget", default="quick", help="quick (default; digits in ~15 min on 2 cores) or standard")
    v.add_argument("--seeds", type=int, default=None, help="verification seeds (default: the budget's)")
    v.add_argument("--steps", type=int, default=None, help="training steps per member (default: the budget's)")
    v.add_argument("--members", type=int, default=None, help="estimate population size (default: the budget's)")
    v.add_argument("--group-seeds", type=int, default=None,
                   help="seeds of the leave-group-out arms (default: the budget's; 0 = no group arms)")
    v.add_argument("--fractions", default=None, help="comma-separated removal fractions, e.g. 0.05,0.1")
    v.add_argument("--reference", default=None,
                   help="a clean reference set for FID, or a fraction of --data to hold out (default 0.3)")
    v.add_argument("--clusters", type=int, default=None, help="k-means groups (default 8)")
    v.add_argument("--n-samples", type=int, default=None, help="generated samples per arm (default 500)")
    v.add_argument("--device", default=None, help="cpu (default) or cuda[:N]")
    v.set_defaults(func=cmd_value)


def cmd_value(args: Any) -> int:
    import sys

    settings: dict[str, Any] = {"budget": args.budget}
    if args.groups is not None:
        settings["groups"] = tuple(x.strip() for x in args.groups.split(",") if x.strip())
    for k in ("seeds", "steps", "members", "clusters", "device", "group_seeds"):
        if getattr(args, k) is not None:
            settings[k] = getattr(args, k)
    if args.n_samples is not None:
        settings["n_samples"] = args.n_samples
    if args.fractions is not None:
        try:
            settings["fractions"] = tuple(float(x) for x in args.fractions.split(",") if x.strip())
        except ValueError:
            raise UserError(f"--fractions expects numbers like 0.05,0.1, got {args.fractions!r}") from None
    if args.reference is not None:
        try:
            settings["reference"] = float(args.reference)
        except ValueError:
            settings["reference"] = args.reference
    t0 = time.perf_counter()
    res = value(args.data, model=args.model, out=args.out,
                progress=lambda s: print(f"reports value: {s}", file=sys.stderr), **settings)
    print(res["headline"])
    for n in res["notes"]:
        print(f"note: {n}")
    print(f"wrote {args.out}/items.csv, groups.csv, verification.csv, report.html ({time.perf_counter() - t0:.0f} s)")
    return 0
