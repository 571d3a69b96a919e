"""How long a study's remaining arms will take here: a short probe of each model's step time and one
arm's evaluation, fused groups divided by their measured speedup (`reports ablate --dry-run`)."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np


from .store import StudyPlan
from .factors import apply_factor, get_factor
from .study import Arm, StudyConfig, StudyData, arm_training, level_str, model_options, prepare_data, resolve_features

log = logging.getLogger(__name__)


def estimate(config: StudyConfig, todo: list[Arm], *, workers: int = 1,
             data: StudyData | None = None, speedups: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Seconds the arms in ``todo`` should take, from a short measured probe: each model trained for
    a few steps twice on the real pool (seconds per step and per-run overhead), one evaluation timed
    on the real reference (after a first one that pays the one-off setup), and each factor's
    transform (``cleaned`` runs the audit). Returns the parts and the total (arms spread evenly over
    ``workers``; assumes each worker has a core to itself). ``speedups``: model -> measured fused/solo
    throughput for the models that train as fused groups (their steps and per-run overhead are divided
    by it)."""
    import torch

    from . import study_adapters as adapters

    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _estimate(config, todo, workers, data, adapters, dict(speedups or {}))
    finally:
        torch.set_num_threads(old_threads)


def _estimate(config: StudyConfig, todo: list[Arm], workers: int, data: StudyData | None, adapters: Any,
              speedups: dict[str, float]) -> dict[str, Any]:
    t_setup = time.perf_counter()
    data = data or prepare_data(config)
    config = resolve_features(config, data)
    # evaluation: first call pays the one-off setup (e.g. the classifier extractor's training)
    fake = data.pool.images[: config.n_samples]
    labels = data.pool.labels[: config.n_samples] if data.pool.labeled else None
    adapters.evaluate(reference=data.reference, fake=fake, train=data.pool, features=config.features,
                      n=config.n_samples, labels=labels)
    setup_s = time.perf_counter() - t_setup
    # an arm's evaluation also embeds its own (new) training set: time it with a different one
    other = data.pool.subset(np.arange(len(data.pool) - 1))
    t = time.perf_counter()
    adapters.evaluate(reference=data.reference, fake=fake[::-1].copy(), train=other, features=config.features,
                      n=config.n_samples, labels=None if labels is None else labels[::-1].copy())
    eval_s = time.perf_counter() - t
    # Each model trains twice on the real pool (k1 and k2 steps, the trainer's own loop with its
    # per-run overhead): the difference gives the seconds per step, the rest the per-run overhead.
    per_step: dict[str, float] = {}
    run_overhead: dict[str, float] = {}
    default_steps: dict[str, int] = {}
    k1, k2 = 10, 40
    with tempfile.TemporaryDirectory(prefix="dm-probe-") as tmp:
        for m in sorted({a.model for a in todo} or set(config.models)):
            opts = model_options(config, m, data.pool)
            # a first short run pays one-off costs (lazy initialisation, allocator warm-up)
            adapters.train_model(m, data.pool, Path(tmp) / f"{m}-warm", steps=2, batch_size=config.batch_size,
                                 seed=0, device=config.device, options=opts)
            times = []
            for k in (k1, k2):
                t = time.perf_counter()
                adapters.train_model(m, data.pool, Path(tmp) / f"{m}-{k}", steps=k, batch_size=config.batch_size,
                                     seed=0, device=config.device, options=opts)
                times.append(time.perf_counter() - t)
            per_step[m] = max((times[1] - times[0]) / (k2 - k1), 1e-6)
            run_overhead[m] = max(times[0] - k1 * per_step[m], 0.0)
            default_steps[m] = adapters.default_steps(m)
    factor_s: dict[str, float] = {}
    for f in sorted({a.factor for a in todo} - {"baseline"}):
        lv = max(config.levels[f])
        t = time.perf_counter()
        apply_factor(f, data.pool, lv, seed=0, **dict(config.factor_options.get(f, {})))
        factor_s[f] = time.perf_counter() - t
    total = 0.0
    for a in todo:
        opts, steps = arm_training(config, a, data.pool)  # a model tweak changes steps or width
        per = per_step[a.model]
        if a.factor == "capacity":
            per *= float(a.level) ** 2  # convolution work grows with the square of the width (an approximation)
        train = (steps * per + run_overhead[a.model]) / max(speedups.get(a.model, 1.0), 1e-9)
        total += train + eval_s + factor_s.get(a.factor, 0.0)
    wall = total / max(workers, 1) + setup_s
    return {"arms": len(todo), "seconds": wall, "setup_seconds": setup_s, "eval_seconds": eval_s,
            "step_seconds": per_step, "run_overhead_seconds": run_overhead,
            "steps": {m: config.steps_for(m) or default_steps[m] for m in default_steps},
            "factor_seconds": factor_s, "workers": workers}


def describe_grid(pl: StudyPlan) -> str:
    """A plain-text table of the grid: factor, levels, models, seeds, and how many arms are done."""
    from .study_adapters import default_steps

    cfg = pl.config
    lines = [f"data: {cfg.data}; models: {', '.join(cfg.models)}; seeds: {', '.join(map(str, cfg.seeds))}; "
             f"steps: {', '.join(f'{m} {cfg.steps_for(m) or default_steps(m)}' for m in cfg.models)}; samples per arm: {cfg.n_samples}; features: {cfg.features}",
             f"{'factor':<12} {'levels':<30} {'arms':>5} {'done':>5}"]
    done_ids = {a.arm_id for a in pl.done}
    rows = [("baseline", "(shared by every factor)")] + [
        (f, ", ".join(level_str(x) for x in cfg.levels[f] if not get_factor(f).is_baseline(x))
         + (f" ({get_factor(f).scope})" if get_factor(f).scope else ""))
        for f in cfg.factors]
    for f, lv in rows:
        arms = [a for a in pl.arms if a.factor == f]
        lines.append(f"{f:<12} {lv:<30} {len(arms):>5} {sum(a.arm_id in done_ids for a in arms):>5}")
    lines.append(f"{'total':<12} {'':<30} {len(pl.arms):>5} {len(pl.done):>5}")
    return "\n".join(lines)
