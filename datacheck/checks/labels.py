"""Label checks: ``label_issue`` (confident learning) and ``class_imbalance``."""
from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..dataset import Dataset
from .base import CheckContext, CheckResult, register_check

if TYPE_CHECKING:
    from ..neighbors import NeighborGraph

log = logging.getLogger(__name__)

#: images with at most this many values (C*H*W) use raw pixels as label-issue features by default
PIXEL_FEATURES_MAX_DIM = 1024


def resolve_features(ds: Dataset, ctx: CheckContext, features: str) -> tuple[str, np.ndarray]:
    """(name, float32 (N, D)) for a ``features`` option: ``"auto"`` = ``pixels`` for tiny images
    (C*H*W <= 1024, where pixels beat the random CNN on digits), else the context's default
    extractor; any other value names a registered extractor."""
    if features == "auto":
        features = "pixels" if int(np.prod(ds.images.shape[1:])) <= PIXEL_FEATURES_MAX_DIM else ctx.features_name
    return features, ctx.features(features)


#: below this many labeled items label_issue flags nothing (and says so in its summary)
MIN_LABELED = 20

#: above this many labeled items the SVC half of the default ensemble is skipped (its fit is O(N^2))
SVC_MAX_ITEMS = 4000


def out_of_fold_probs(x: np.ndarray, y: np.ndarray, n_classes: int, *, folds: int = 5, seed: int = 0,
                      model: str = "auto", graph: "NeighborGraph | None" = None, items: np.ndarray | None = None,
                      space: np.ndarray | None = None) -> np.ndarray:
    """float64 (N, K) predicted probabilities, each row from models that did not see that item
    (stratified K-fold, seeded). Features are centred and divided by one global std per fold.

    ``model``: ``knn`` (10 nearest neighbours, distance-weighted), ``svc`` (RBF SVM with Platt
    probabilities), ``knn+svc`` (their average) or ``auto`` (``knn+svc`` up to
    `SVC_MAX_ITEMS` items, else ``knn``). Measured on digits with 5% planted flips, the
    ensemble gave the best recall/precision balance (logistic regression on the same pixels reached
    only 0.73 / 0.75 with confident learning).

    ``graph``: the run's shared neighbour graph over all N items (`CheckContext.neighbor_graph`);
    ``items`` (len(y),) the rows of x/y in it and ``space`` (N, D) the space it was built in. Given,
    the kNN model takes each item's neighbours from the graph (those labeled and outside its fold)
    instead of searching again per fold; an item with too few such neighbours in the graph is
    searched exactly in ``space``.
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    if model == "auto":
        model = "knn+svc" if len(y) <= SVC_MAX_ITEMS else "knn"
    parts = model.split("+")
    if not parts or set(parts) - {"knn", "svc"}:
        from ..errors import UserError

        raise UserError(f"label_issue model must be knn, svc, knn+svc or auto, got {model!r}")
    probs = np.zeros((len(y), n_classes))
    counts = np.bincount(y, minlength=n_classes)
    k = int(max(2, min(folds, counts[counts > 0].max(initial=2))))
    fold_of = y_all = None
    if graph is not None:
        assert items is not None and space is not None
        fold_of = np.full(len(graph.idx), -1, np.int64)  # fold of each graph row (-1: unlabeled)
        y_all = np.full(len(graph.idx), -1, np.int64)
        y_all[items] = y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rare classes: StratifiedKFold warns about too few members
        splits = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y))
        if fold_of is not None:
            for f, (_tr, te) in enumerate(splits):
                fold_of[items[te]] = f
        for f, (train, test) in enumerate(splits):
            classes = np.unique(y[train])
            if len(classes) == 1:
                probs[np.ix_(test, classes)] = 1.0
                continue
            # one global scale, not per dimension: per-dimension scaling inflates near-constant
            # pixels (digit borders) and cost recall on digits
            mu, sd = x[train].mean(0), float(x[train].std()) or 1.0
            xtr, xte = (x[train] - mu) / sd, (x[test] - mu) / sd
            acc = np.zeros((len(test), len(classes)))
            for part in parts:
                if part == "knn" and graph is not None:
                    acc += _graph_knn_proba(graph, items[test], f, fold_of, y_all, classes,  # type: ignore[arg-type,index]
                                            min(10, len(train)), space, items[train])  # type: ignore[arg-type,index]
                    continue
                if part == "knn":
                    m = KNeighborsClassifier(n_neighbors=min(10, len(train)), weights="distance")
                else:
                    m = SVC(probability=True, random_state=seed)
                acc += m.fit(xtr, y[train]).predict_proba(xte)
            probs[np.ix_(test, classes)] = acc / len(parts)
    return probs


def _graph_knn_proba(graph: "NeighborGraph", rows: np.ndarray, fold: int, fold_of: np.ndarray, y_all: np.ndarray,
                     classes: np.ndarray, n_nb: int, space: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """float64 (len(rows), len(classes)): distance-weighted kNN class probabilities of graph rows
    ``rows`` from their ``n_nb`` nearest labeled neighbours outside ``fold`` (what
    KNeighborsClassifier(weights="distance") fitted on the other folds gives: the global centring and
    scaling it saw do not change neighbour ranks, and the weights' scale cancels)."""
    from ..neighbors import exact_knn, row_distances

    nb, dd = graph.idx[rows], graph.dist[rows]
    ok = (fold_of[nb] >= 0) & (fold_of[nb] != fold)
    rank = np.cumsum(ok, 1)
    sel = ok & (rank <= n_nb)
    short = np.flatnonzero(rank[:, -1] < n_nb)
    if len(short):  # too few usable neighbours in the graph: search those items exactly
        loc = exact_knn(space[rows[short]], space[train_rows], n_nb)
        sub = train_rows[loc]
        nb = np.concatenate([nb, np.zeros((len(rows), n_nb), np.int64)], 1)
        dd = np.concatenate([dd, np.ones((len(rows), n_nb))], 1)
        sel = np.concatenate([sel, np.zeros((len(rows), n_nb), bool)], 1)
        sel[short] = False
        nb[short, -n_nb:] = sub
        dd[short, -n_nb:] = row_distances(space[rows[short]], space, sub)
        sel[short, -n_nb:] = True
    zero = sel & (dd == 0)
    # sklearn: a row with a neighbour at distance 0 weighs only those neighbours
    w = np.where(zero.any(1, keepdims=True), zero.astype(np.float64),
                 np.where(sel, 1.0 / np.where(dd > 0, dd, 1.0), 0.0))
    col = np.searchsorted(classes, np.where(sel, y_all[nb], classes[0]))
    out = np.zeros((len(rows), len(classes)))
    np.add.at(out, (np.repeat(np.arange(len(rows)), nb.shape[1]), col.ravel()), w.ravel())
    return out / np.maximum(out.sum(1, keepdims=True), 1e-300)


def confident_learning(probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Confident learning (Northcutt et al. 2021) on out-of-fold ``probs`` (N, K) and given labels
    ``y`` (N,): per-class thresholds t_j = mean self-confidence of class j; each item counts towards
    the confident joint entry (given label, argmax of the classes whose probability reaches their
    threshold). The joint, calibrated to the class counts, estimates the noise rate; then, as in
    cleanlab's ``prune_by_noise_rate``, that many items are flagged among those whose predicted
    class differs from the given label, largest margin (best other class minus given) first.
    (Flagging only off-diagonal confident-joint entries gave recall 0.8 on digits with 5% flips.)

    Returns flags, suggested (N,), thresholds (K,), joint (K, K) calibrated confident joint and
    noise_rate (its off-diagonal mass).
    """
    n, k = probs.shape
    counts = np.bincount(y, minlength=k)
    thr = np.full(k, np.inf)
    for j in range(k):
        if counts[j]:
            thr[j] = probs[y == j, j].mean()
    above = probs >= thr[None, :] - 1e-12
    masked = np.where(above, probs, -1.0)
    conf = np.where(above.any(1), masked.argmax(1), -1)
    joint = np.zeros((k, k))
    ok = conf >= 0
    np.add.at(joint, (y[ok], conf[ok]), 1)
    rows = joint.sum(1, keepdims=True)
    cal = np.divide(joint, rows, out=np.zeros_like(joint), where=rows > 0) * counts[:, None]
    total = cal.sum()
    noise = float((total - np.trace(cal)) / total) if total else 0.0
    # prune by noise rate: the estimated number of issues, taken from the items the model
    # disagrees with, most confidently wrong first (margin of the best other class over the label)
    argmax = probs.argmax(1)
    other = probs.copy()
    other[np.arange(n), y] = -1.0
    margin = other.max(1) - probs[np.arange(n), y]
    n_issues = int(round(noise * n))
    cand = np.flatnonzero(argmax != y)
    cand = cand[np.argsort(-margin[cand], kind="stable")][:n_issues]
    flags = np.zeros(n, bool)
    flags[cand] = True
    suggested = argmax
    return {"flags": flags, "suggested": suggested, "thresholds": thr, "joint": cal, "noise_rate": noise}


@register_check("label_issue", defaults={"features": "auto", "folds": 5, "model": "auto", "min_skill": 0.5},
                description="given label disagrees with a confident out-of-fold prediction (confident learning)",
                needs_labels=True)
def check_label_issue(ds: Dataset, ctx: CheckContext, features: str, folds: int, model: str,
                      min_skill: float) -> CheckResult:
    """Likely wrong labels by confident learning on out-of-fold probabilities of ``model`` (default
    ``auto``: kNN + RBF-SVM average, kNN alone above 4000 items) on ``features`` (default
    ``"auto"``: raw pixels for images of at most 1024 values, else the context's extractor,
    ``random`` unless the context says otherwise), ``folds``-fold (default 5, seeded by the
    context). Threshold: per-class mean self-confidence, then prune by the estimated noise rate.
    Nothing is flagged when the classifier's skill, (accuracy - majority share) / (1 - majority
    share), is below ``min_skill`` (default 0.5): a weak model disagrees with correct labels. Score = the model's probability of the given label; details
    name the suggested label; the summary carries the estimated noise rate."""
    n = len(ds)
    params = {"features": features, "folds": folds, "model": model, "min_skill": min_skill}
    name, x = resolve_features(ds, ctx, features)
    labeled = np.flatnonzero(ds.labels >= 0)
    y = ds.labels[labeled]
    k = max(ds.n_classes, int(y.max(initial=-1)) + 1)
    scores = np.ones(n)
    flags = np.zeros(n, bool)
    details = [""] * n
    summary: dict[str, Any] = {"threshold": "per-class mean self-confidence", "features": name}
    counts = np.bincount(y, minlength=k)
    if (counts >= 2).sum() < 2 or len(y) < MIN_LABELED:
        # out-of-fold predictions need two classes with two members each; on a handful of items
        # any "confident" disagreement is noise
        summary.update(score=1.0, estimated_noise_rate=0.0,
                       note=f"too few labeled items to judge labels (need {MIN_LABELED} and two classes of 2+)")
        return CheckResult("label_issue", scores, flags, summary, params=params,
                           details=details)
    # the run's shared neighbour graph in the raw feature space (the classifier's global centring and
    # scaling keep its neighbour ranks; per-dimension standardizing cost precision on digits)
    graph = ctx.neighbor_graph(name, False) if "knn" in (model if model != "auto" else "knn") else None
    probs = out_of_fold_probs(x[labeled], y, k, folds=folds, seed=ctx.seed, model=model, graph=graph, items=labeled,
                              space=ctx.neighbor_space(name, False) if graph is not None else None)
    acc = float((probs.argmax(1) == y).mean())
    base = float(counts.max() / len(y))
    skill = (acc - base) / (1 - base) if base < 1 else 0.0
    summary.update(out_of_fold_accuracy=round(acc, 4), skill=round(skill, 4))
    if graph is not None:
        summary["neighbors"] = graph.summary()
    if skill < min_skill:
        # a classifier that barely beats "always the largest class" disagrees with most labels;
        # confident learning would then flag a large share of correct labels
        summary.update(score=1.0, estimated_noise_rate=None,
                       note=f"the classifier on {name} features is too weak to judge labels "
                            f"(out-of-fold accuracy {acc:.2f}, skill {skill:.2f} < {min_skill}); try other features")
        return CheckResult("label_issue", scores, flags, summary, params=params, details=details)
    cl = confident_learning(probs, y)
    scores[labeled] = np.clip(probs[np.arange(len(y)), y], 0.0, 1.0)
    flags[labeled] = cl["flags"]
    names = list(ds.class_names) or [str(i) for i in range(k)]
    for pos in np.flatnonzero(cl["flags"]):
        details[labeled[pos]] = f"suggested label: {names[cl['suggested'][pos]]}"
    summary.update(
        score=1 - float(flags.mean()),
        estimated_noise_rate=round(cl["noise_rate"], 4),
        per_class_threshold={names[j]: round(float(t), 4) for j, t in enumerate(cl["thresholds"]) if np.isfinite(t)},
    )
    return CheckResult("label_issue", scores, flags, summary, params=params,
                       details=details)


@register_check("class_imbalance", defaults={"ratio": 0.5},
                description="members of classes with fewer than ratio x N/K items", needs_labels=True)
def check_class_imbalance(ds: Dataset, ctx: CheckContext, ratio: float) -> CheckResult:
    """Classes far below their fair share: count < ``ratio`` (default 0.5) x labeled N / K. Every
    member of such a class is flagged; score = 0.5 x (share / ratio) below the threshold, rising to
    1 at the fair share. The summary lists each class's count and share of the fair share (empty
    classes are listed there; they have no items to flag)."""
    n = len(ds)
    k = max(ds.n_classes, int(ds.labels.max(initial=-1)) + 1)
    lab = ds.labels >= 0
    counts = np.bincount(ds.labels[lab], minlength=k).astype(np.float64)
    fair = lab.sum() / max(k, 1)
    share = counts / fair if fair else np.ones(k)
    small = share < ratio
    per_item_share = np.where(lab, share[np.where(lab, ds.labels, 0)], 1.0)
    flags = lab & small[np.where(lab, ds.labels, 0)]
    scores = np.where(per_item_share < ratio, 0.5 * per_item_share / ratio,
                      0.5 + 0.5 * np.clip((per_item_share - ratio) / max(1 - ratio, 1e-9), 0, 1))
    names = list(ds.class_names) or [str(i) for i in range(k)]
    details = [f"class {names[ds.labels[i]]} has {int(counts[ds.labels[i]])} items ({per_item_share[i]:.2f} x its fair share)"
               if flags[i] else "" for i in range(n)]
    per_class = {names[j]: {"count": int(counts[j]), "share_of_fair": round(float(share[j]), 4), "flagged": bool(small[j])}
                 for j in range(k)}
    return CheckResult("class_imbalance", np.clip(scores, 0, 1), flags,
                       {"score": 1 - float(flags.mean()) if n else 1.0, "threshold": ratio, "fair_share": fair,
                        "classes": per_class, "small_classes": [names[j] for j in range(k) if small[j]]},
                       params={"ratio": ratio}, details=details)
