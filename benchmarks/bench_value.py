"""Benchmark of ``reports value`` (issue 22): does the harmful ranking find planted bad items, does
removing them beat removing random items and the audit's flags, and how long does a run take?

    python benchmarks/bench_value.py planted --out /tmp/value-planted   # digits + 10% planted bad items
    python benchmarks/bench_value.py clean --out /tmp/value-clean       # clean digits, through the CLI

``planted``: digits is split into the clean held-out reference and the pool (datacheck's split, as
``reports value`` does); in the pool 10% of the items are made bad, half of them by a corruption
(noise, blur, blank, pure noise; `reports.factors.corrupt_image`) and half by a flipped label (to a
uniformly drawn other class), with plant seed 2026 (``--plant-seed`` draws another set; nothing was tuned
on either). Then the
quick budget runs with the clean reference. Printed: the AUC of the harmful ranking (score, low =
harmful) for the planted items, per kind, beside the audit score's AUC, and the verification tests.

``clean``: ``reports value --data digits --model cvae --out OUT`` (quick budget) with its wall time and
the machine's load average before and after (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PLANT_SEED = 2026


def auc(bad: np.ndarray, harm: np.ndarray) -> float:
    """AUC of ``harm`` (higher = more harmful) for the ``bad`` mask (Mann-Whitney, ties half)."""
    from scipy.stats import rankdata

    r = rankdata(harm)
    n1, n0 = int(bad.sum()), int((~bad).sum())
    return float((r[bad].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def planted(out: Path, budget: str, settings: dict, plant_seed: int = PLANT_SEED) -> dict:
    import datacheck
    import reports
    from reports.factors import CORRUPTIONS, corrupt_image
    from reports.study import _split

    full = datacheck.load("digits")
    table = _split(full, 0.3, 0)
    by_id = dict(zip(table["id"].astype(str), table["split"].astype(str)))
    test = np.array([by_id.get(i, "train") == "test" for i in full.ids])
    pool, ref = full.subset(np.flatnonzero(~test)), full.subset(np.flatnonzero(test))
    rng = np.random.default_rng(plant_seed)
    k = int(round(0.1 * len(pool)))
    idx = rng.permutation(len(pool))[:k]
    c_idx, f_idx = idx[:k // 2], idx[k // 2:]
    images, labels = pool.images.copy(), pool.labels.copy()
    kinds = {}
    for j, i in enumerate(c_idx):
        kind = CORRUPTIONS[j % len(CORRUPTIONS)]
        images[i] = corrupt_image(images[i], kind, rng)
        kinds[int(i)] = kind
    labels[f_idx] = (labels[f_idx] + rng.integers(1, 10, len(f_idx))) % 10
    for i in f_idx:
        kinds[int(i)] = "flipped"
    dirty = pool.replace(images=images, labels=labels, source="digits+planted")
    t0 = time.perf_counter()
    res = reports.value(dirty, model="cvae", out=out, reference=ref, budget=budget, **settings,
                        progress=lambda s: print(s, file=sys.stderr, flush=True))
    wall = time.perf_counter() - t0
    items = res["items"]
    pos = {rid: j for j, rid in enumerate(items["id"])}
    bad = np.zeros(len(items), bool)
    kind_of = np.array([""] * len(items), dtype=object)
    for i, kd in kinds.items():
        bad[pos[dirty.ids[i]]] = True
        kind_of[pos[dirty.ids[i]]] = kd
    harm = -items["score"].to_numpy()
    out_doc = {"n_items": len(items), "n_planted": int(bad.sum()), "wall_seconds": round(wall, 1),
               "auc": auc(bad, harm), "auc_fit": auc(bad, -items["fit"].to_numpy()),
               "auc_margin": auc(bad, -items["margin"].to_numpy()),
               "auc_audit": auc(bad, -items["audit_score"].to_numpy()),
               # each kind against the clean items only
               "auc_by_kind": {kd: auc((kind_of == kd)[(kind_of == kd) | ~bad], harm[(kind_of == kd) | ~bad])
                               for kd in sorted(set(kinds.values()))},
               "planted_in_top10pct": int(bad[items["rank"].to_numpy() <= k].sum()),
               "audit_flagged": int((items["audit_score"] < 1).sum()),
               "planted_in_audit_top10pct": int(bad[np.argsort(items["audit_score"].to_numpy(), kind="stable")[:k]].sum()),
               "headline": res["headline"], "tests": res["tests"], "seconds": res["seconds"],
               "calibration": res["calibration"]}
    return out_doc


def clean(out: Path, budget: str, settings: dict) -> dict:
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "reports", "value", "--data", "digits", "--model", "cvae", "--out", str(out),
           "--budget", budget, *[f"--{k.replace('_', '-')}=" + (",".join(f"{x:g}" for x in v) if isinstance(v, tuple) else str(v))
                                  for k, v in settings.items()]]
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    doc = json.loads((out / "value.json").read_text()) if p.returncode == 0 else {}
    return {"command": " ".join(cmd[1:]), "rc": p.returncode, "wall_seconds": round(wall, 1),
            "load_before": load0, "load_after": os.getloadavg(), "stdout": p.stdout[-2000:],
            "stderr": p.stderr[-1500:] if p.returncode else "", "headline": doc.get("headline"),
            "tests": doc.get("tests"), "seconds": doc.get("seconds"), "calibration": doc.get("calibration")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=("planted", "clean"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", default="quick")
    ap.add_argument("--plant-seed", type=int, default=PLANT_SEED, help="planted: another draw of the bad items")
    # overrides of the budget (a smaller run on a busy machine), e.g. --set members=8 --set steps=300
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    settings: dict = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        if k == "fractions":
            settings[k] = tuple(float(x) for x in v.split(","))
        elif k == "groups":
            settings[k] = v
        else:
            settings[k] = int(v)
    res = (planted(Path(a.out), a.budget, settings, a.plant_seed) if a.which == "planted"
           else clean(Path(a.out), a.budget, settings))
    res["settings"] = settings
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
