"""``outlier``: items far from their neighbours in a feature space computed offline."""
from __future__ import annotations

import numpy as np

from ..dataset import Dataset
from .base import CheckContext, CheckResult, register_check
from .labels import resolve_features


#: below this many items the outlier check flags nothing (and says so in its summary)
MIN_ITEMS = 20


@register_check("outlier", defaults={"features": "auto", "k": 10, "threshold": 4.0},
                description="k-NN distance in feature space more than threshold robust z-scores above typical")
def check_outlier(ds: Dataset, ctx: CheckContext, features: str, k: int, threshold: float) -> CheckResult:
    """Outliers: the mean distance to the ``k`` (default 10) nearest neighbours in ``features``
    space (default ``auto``: raw pixels for images of at most 1024 values, else the context's
    extractor, the seeded random CNN by default) has a robust z-score
    above ``threshold`` (default 4.0): z = (log d - median log d) / (1.4826 MAD of log d).
    Score = 2 ** -((z / threshold) ** 2) for z > 0 (0.5 at the threshold), else 1.

    Learned/CNN features are standardized per dimension (their scales are arbitrary); pixels are
    not, because that inflates rarely-inked border pixels (robust z up to 11 on clean digits, vs
    3.1 unscaled). On digits with 24 planted non-digits, clean items reach z 3.1 (pixels) / 2.4
    (random CNN) and the planted ones start at 4.6. Limitation: kNN distance finds isolated items;
    a cluster of k or more similar odd images is a small cluster, not an outlier, and in a very
    diverse dataset pure noise is not far from its neighbours either."""
    n = len(ds)
    params = {"features": features, "k": k, "threshold": threshold}
    if n < MIN_ITEMS:  # a robust z-score over a handful of distances is noise
        return CheckResult("outlier", np.ones(n), np.zeros(n, bool), {"score": 1.0, "threshold": threshold,
                           "note": f"fewer than {MIN_ITEMS} items"}, params=params, details=[""] * n)
    name, _x = resolve_features(ds, ctx, features)
    k = min(k, n - 1)
    # the run's shared neighbour graph (built once for outlier, label_issue and near_duplicate)
    graph = ctx.neighbor_graph(name, name != "pixels", k)
    d = np.log(graph.dist[:, :k].mean(1) + 1e-9)
    med = float(np.median(d))
    mad = float(np.median(np.abs(d - med))) * 1.4826 or 1e-9
    z = (d - med) / mad
    flags = z > threshold
    scores = np.where(z > 0, 2.0 ** -((np.maximum(z, 0) / threshold) ** 2), 1.0)
    details = [f"{z[i]:.1f} robust z above the typical neighbour distance" if flags[i] else "" for i in range(n)]
    return CheckResult("outlier", np.clip(scores, 0, 1), flags,
                       {"score": 1 - float(flags.mean()), "threshold": threshold, "features": name,
                        "neighbors": graph.summary()},
                       params=params, details=details)
