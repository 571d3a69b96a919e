"""Calibration of the study's analysis plan, through the real analysis code (`reports.analysis`).

For each preset (its real grid: factors, levels, the models each factor applies to, seeds), simulates
studies whose results tables have the preset's shape and feeds them to `reports.analysis.primary_tests`
under the preset's declared plan (`reports.effects.default_plan`):

- **null**: no factor does anything. Every arm of a block (one seed of one model) is the block's own level
  plus independent noise (normal, or Student t with 3 degrees of freedom for heavy tails). The copy signal
  of the duplicate dose (``dup_excess``, tested as a second primary where the preset has ``dup_dose``) is
  simulated the same way: the share of samples nearest the duplicated sources is the placebo share plus
  noise of the same kind, at every dose. ``cleaned`` is tested against ``dirty``, as the plan declares. The share of
  studies with any significant primary test is the family-wise false-alarm rate; the plan promises at
  most alpha (Holm).
- **planted**: one factor (``--planted``, default corruption) moves FID at its farthest level by twice
  the standard deviation of the paired differences (noise sd x sqrt 2 x 2), intermediate levels by
  their share of the dose rank; power is the share of studies in which that factor's primary test is
  significant in the right direction.

    python benchmarks/bench_calibration.py [--sims 2000] [--presets quick,standard] [--planted corruption]

Prints one line per preset and noise, then ``calibration: fwer=F power=P sims=N`` for the standard preset
(F the largest false-alarm rate over the noise kinds, P the power with normal noise).
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import pandas as pd


def results_table(arms: list, effects: dict[str, float], ranks: dict[str, dict[float, float]],
                  rng: np.random.Generator, heavy: bool) -> pd.DataFrame:
    """One simulated results.csv for the grid ``arms``: FID = block level + planted shift + noise (sd 1)."""
    block: dict[tuple[int, str], float] = {}
    rows = []
    for a in arms:
        key = (a.seed, a.model)
        if key not in block:
            block[key] = 50.0 + 10.0 * rng.normal()
        noise = rng.standard_t(3) / math.sqrt(3.0) if heavy else rng.normal()  # both with sd 1
        shift = 0.0
        if a.factor in effects:
            r = ranks[a.factor]
            shift = effects[a.factor] * r[float(a.level)] / max(abs(v) for v in r.values())
        row = {"factor": a.factor, "level": math.nan if a.level is None else float(a.level), "model": a.model,
               "seed": a.seed, "fid": block[key] + shift + noise}
        if a.factor in ("baseline", "dup_dose"):  # the copy signal: no attraction of the duplicated sources
            extra = rng.standard_t(3) / math.sqrt(3.0) if heavy else rng.normal()
            row.update(dup_placebo_share=0.01, dup_source_share=0.01 + 0.003 * extra)
        rows.append(row)
    return pd.DataFrame(rows)


def simulate(preset_name: str, sims: int, planted: str | None, heavy: bool, seed: int) -> tuple[float, float, float]:
    """(share of studies with any significant primary test, power for ``planted``, seconds)."""
    from reports.analysis import dose_ranks, primary_tests
    from reports.effects import default_plan, factor_baselines
    from reports.study import grid, preset

    cfg = preset(preset_name)
    arms = grid(cfg)
    plan = default_plan(cfg.factors)
    baselines = factor_baselines()
    ranks = {f: dose_ranks(cfg.levels[f], baselines[f]) for f in cfg.factors}
    rng = np.random.default_rng(seed)
    effects = {planted: 2.0 * math.sqrt(2.0)} if planted else {}
    any_sig = hits = 0
    t = time.perf_counter()
    for _ in range(sims):
        rows = primary_tests(results_table(arms, effects, ranks, rng, heavy), plan, baselines, intervals=False)
        others = [r for r in rows if r["factor"] != planted]
        any_sig += any(r["significant"] for r in others)
        hits += any(r["factor"] == planted and r["significant"] and r["direction"] == "worse" for r in rows)
    return any_sig / sims, hits / sims, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sims", type=int, default=2000)
    ap.add_argument("--presets", default="quick,standard")
    ap.add_argument("--planted", default="corruption")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from reports.effects import default_plan
    from reports.study import preset

    fwer_std, power_std = 0.0, math.nan
    for name in args.presets.split(","):
        cfg = preset(name)
        for heavy in (False, True):
            fwer, _, s = simulate(name, args.sims, None, heavy, args.seed)
            _, power, s2 = simulate(name, args.sims, args.planted, heavy, args.seed + 1)
            se = math.sqrt(max(fwer * (1 - fwer), 1e-12) / args.sims)
            n_tests = len(default_plan(cfg.factors).tests())
            print(f"{name}: {len(cfg.seeds)} seeds x {len(cfg.models)} models, {n_tests} primary tests, "
                  f"{'t3' if heavy else 'normal'} noise: any significant under the null {fwer:.3f} (+- {se:.3f}), "
                  f"power for {args.planted} at 2 sd of the paired differences {power:.3f} "
                  f"({args.sims} studies each, {s + s2:.0f} s)", flush=True)
            if name == "standard":
                fwer_std = max(fwer_std, fwer)
                if not heavy:
                    power_std = power
    print(f"calibration: fwer={fwer_std:.3f} power={power_std:.3f} sims={args.sims}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
