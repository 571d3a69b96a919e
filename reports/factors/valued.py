"""The ``valued`` factor: the training set less the share that ``reports value``'s estimate calls most
harmful (registered in `reports.factors`, beside ``cleaned``).

At level k the arm's own training pool is scored by the estimate of `reports.value_estimate` (a fused
population of ``members`` models of ``model`` on complementary halves, ``steps`` each, seeded from the
arm's seed), and the k·n items with the lowest out-of-bag score are removed. The estimate costs
``members`` short trainings per arm, so its defaults are small."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError

from .base import _count, _register


@_register("valued", 0.0, "fraction of items removed: those reports value's estimate ranks most harmful",
           levels=(lambda lv: 0 <= lv < 0.5, "a fraction in [0, 0.5)"), default_levels=(0.1,),
           axis="fraction removed as most harmful", phrase="Removing the {pct} of items valued most harmful",
           metrics=("fid", "recall"), expect="gain")
def _valued(ds: Dataset, level: float, rng: np.random.Generator, model: str | None = None, members: int = 8,
            steps: int = 300, batch_size: int = 64, device: str = "cpu") -> tuple[Dataset, dict[str, Any]]:
    from ..value_estimate import estimate

    if not 0 <= level < 0.5:
        raise UserError(f"level for factor 'valued' is a fraction in [0, 0.5), got {level}")
    k = _count(level, len(ds))
    if k == 0:
        return ds, {"changed": 0, "removed_ids": [], "estimate": "nothing to remove at this level"}
    name = model or ("cvae" if ds.labeled else "vae")
    work = Path(tempfile.mkdtemp(prefix="dm-valued-"))
    try:
        est = estimate(ds, name, {}, int(members), int(steps), int(rng.integers(1 << 30)), batch_size, device, work,
                       scorer=None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    order = np.lexsort((np.arange(len(ds)), est["score"]))
    gone = np.sort(order[:k])
    keep = np.setdiff1d(np.arange(len(ds)), gone)
    return ds.subset(keep), {"changed": int(k), "removed_ids": [ds.ids[i] for i in gone], "estimate_model": name,
                             "members": int(members), "steps": int(steps),
                             "removed_scores": [round(float(est["score"][i]), 4) for i in gone]}
