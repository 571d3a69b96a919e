"""``reports value`` (`reports.value_run.value`): which training images help or hurt a generator, estimated cheaply and checked by
retraining.

``value(data, model=..., out=...)`` (and ``reports value --data TRAIN --model M --out VALUE``):

1. holds out a clean reference (``reference``: a fraction of ``data`` split off by datacheck's
   duplicate-aware split, or another source), the set every FID is measured against;
2. estimates a value for every training item from a fused population trained on random halves
   (`reports.value_estimate`: the out-of-bag score, calibrated to FID points);
3. values groups of items: by class, by k-means cluster in the evaluator's feature space, by audit
   finding, by source folder (the sum of their items' values), and for classes and clusters measures
   by retraining how FID and the generator's coverage and recall of the group change when the group is
   removed (or thinned);
4. verifies the ranking by retraining on paired seeds: removing the k items ranked most harmful against
   removing k at random and the k the audit flags worst (`reports.value_verify`);
5. writes VALUE/items.csv, groups.csv, verification.csv, arms.csv, value.json and report.html (atomic).

``value`` (items.csv) is the estimated FID points that keeping the item saves compared with an average
item (positive helps, lowest = most harmful); ``rank`` 1 is the item the estimate calls most harmful.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError, check_keys

log = logging.getLogger(__name__)

GROUP_KINDS = ("class", "cluster", "finding", "folder")
BUDGETS: dict[str, dict[str, Any]] = {
    # sized for digits on 2 CPU cores within 15 minutes (benchmarks/RESULTS.md): 16 + 8 x 7 + 2 x 18 members
    "quick": dict(members=16, steps=500, seeds=8, fractions=(0.05, 0.1), group_seeds=2),
    "standard": dict(members=32, steps=600, seeds=10, fractions=(0.025, 0.05, 0.1), group_seeds=3),
}
MIN_GROUP = 2  # a group of one item is an item (items.csv), not a group


@dataclass(frozen=True)
class ValueConfig:
    """What ``reports value`` runs. Unknown keys are an error (`from_dict`).

    Attributes:
        data: the training set (a source `datacheck.load` reads).
        model: a `generative` model name (conditional models also score label flips).
        groups: group kinds, some of ``GROUP_KINDS``; None: all that apply (stated when one does not).
        budget: ``quick`` or ``standard``: the defaults of the five fields below.
        members: estimate population size (each trained on a random half).
        steps: training steps of every member and arm.
        seeds: verification seeds (0..seeds-1), paired across arms.
        fractions: the k of the verification, as fractions of the training set.
        group_seeds: seeds of the leave-group-out arms (the first of the verification seeds).
        group_keep: the share of a group its arm keeps (0: removed; 0.5: thinned to half).
        reference: the held-out fraction of ``data`` (a number in (0, 0.9)) or a separate reference source.
        clusters: k of the k-means groups.
        n_samples: generated samples per arm (and real reference images per FID).
        features: extractor (``auto``: classifier for labeled data, else random).
        estimate_seed: first seed of the estimate population (apart from the verification seeds).
        batch_size, device, split_seed: as in a study.
    """

    data: str = "digits"
    model: str = "cvae"
    groups: tuple[str, ...] | None = None
    budget: str = "quick"
    members: int | None = None
    steps: int | None = None
    seeds: int | None = None
    fractions: tuple[float, ...] | None = None
    group_seeds: int | None = None
    group_keep: float = 0.0
    reference: float | str = 0.3
    clusters: int = 8
    n_samples: int = 500
    features: str = "auto"
    estimate_seed: int = 1000
    batch_size: int = 64
    device: str = "cpu"
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise UserError(f"budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        for k, v in BUDGETS[self.budget].items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        if self.groups is not None:
            g = tuple(str(x) for x in ([self.groups] if isinstance(self.groups, str) else self.groups))
            bad = [x for x in g if x not in GROUP_KINDS]
            if bad or not g:
                raise UserError(f"groups must be some of {', '.join(GROUP_KINDS)}, got {', '.join(bad) or 'none'}")
            object.__setattr__(self, "groups", g)
        object.__setattr__(self, "fractions", tuple(float(x) for x in self.fractions))  # type: ignore[union-attr]
        if not self.fractions or any(not 0 < k < 0.5 for k in self.fractions):
            raise UserError(f"fractions must be numbers in (0, 0.5), got {list(self.fractions)}")
        for name, low in (("members", 2), ("steps", 1), ("seeds", 1), ("group_seeds", 0), ("clusters", 2),
                          ("n_samples", 10), ("batch_size", 1)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
                raise UserError(f"{name} must be a whole number >= {low}, got {v!r}")
        if self.members % 2:  # type: ignore[operator]
            raise UserError(f"members must be an even number >= 2 (complementary halves), got {self.members}")
        if self.group_seeds > self.seeds:  # type: ignore[operator]
            raise UserError(f"group_seeds ({self.group_seeds}) must be at most seeds ({self.seeds})")
        if not 0 <= self.group_keep < 1:
            raise UserError(f"group_keep must be in [0, 1), got {self.group_keep}")
        if isinstance(self.reference, (int, float)) and not 0 < float(self.reference) < 0.9:
            raise UserError(f"reference must be a fraction in (0, 0.9) or a data source, got {self.reference}")
        import generative

        generative.MODELS.get(self.model)  # unknown -> one line with the allowed names

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ValueConfig":
        check_keys(d, (f.name for f in dataclasses.fields(cls)), "value setting")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fractions"] = list(self.fractions)  # type: ignore[arg-type]
        d["groups"] = None if self.groups is None else list(self.groups)
        return d


# ============================================================================ data and groups
def load_sets(cfg: ValueConfig, data: Dataset | None = None,
              reference: Dataset | None = None) -> tuple[Dataset, Dataset, str]:
    """(pool to value, reference, what was done) with the study's CPU resolution rule (<= 16 px).
    ``data``/``reference``: in-memory sets instead of ``cfg.data``/``cfg.reference``."""
    import datacheck

    from .study import StudyConfig, _split, reduce_resolution

    side = StudyConfig(device=cfg.device, resolution="cpu").max_side()
    full = reduce_resolution(data if data is not None else datacheck.load(cfg.data), side)
    if reference is not None or isinstance(cfg.reference, str):
        ref = reduce_resolution(reference if reference is not None else datacheck.load(str(cfg.reference)), side)
        if ref.shape != full.shape:
            raise UserError(f"reference images have shape {ref.shape}, the training set {full.shape}; they must match")
        how = f"every item of the training set is valued; FID against the separate reference {cfg.reference!r}"
        pool = full
    else:
        if len(full) < 40:
            raise UserError(f"data has {len(full)} images; reports value needs at least 40 (or --reference another set)")
        table = _split(full, float(cfg.reference), cfg.split_seed)
        by_id = dict(zip(table["id"].astype(str), table["split"].astype(str)))
        test = np.array([by_id.get(i, "train") == "test" for i in full.ids])
        pool, ref = full.subset(np.flatnonzero(~test)), full.subset(np.flatnonzero(test))
        how = (f"{len(ref)} images ({cfg.reference:g}) held out as the FID reference (datacheck's split) and not "
               f"valued; {len(pool)} valued. A reference split from a dirty set is dirty too: pass --reference CLEAN")
    if len(pool) < 20:
        raise UserError(f"the training set has {len(pool)} images; reports value needs at least 20")
    return pool, ref, how


def audit_flags(pool: Dataset, seed: int = 0) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """datacheck's audit on the pool: (per-item worst audit score, 1 = unflagged; per-item checks;
    check -> flagged indices)."""
    from datacheck.auditing import audit

    findings = audit(pool, seed=seed)
    pos = {i: j for j, i in enumerate(pool.ids)}
    worst = np.ones(len(pool))
    checks: list[list[str]] = [[] for _ in range(len(pool))]
    for rid, chk, sc in zip(findings["id"].astype(str), findings["check"].astype(str), findings["score"]):
        j = pos.get(rid)
        if j is None:
            continue
        worst[j] = min(worst[j], float(sc) if np.isfinite(sc) else 0.0)
        checks[j].append(chk)
    by_check: dict[str, list[int]] = {}
    for j, cs in enumerate(checks):
        for c in sorted(set(cs)):
            by_check.setdefault(c, []).append(j)
    return worst, [";".join(sorted(set(c))) for c in checks], {c: np.array(v) for c, v in by_check.items()}


def check_groups(pool: Dataset, kinds: tuple[str, ...] | None, clusters: int) -> None:
    """The one-line errors of group kinds asked for explicitly that this set cannot have, raised before
    anything costly runs."""
    if kinds and "class" in kinds and not pool.labeled:
        raise UserError("--groups class needs labels, and this training set has none; "
                        "use --groups cluster,finding,folder")
    if (kinds is None or "cluster" in kinds) and len(pool) < 5 * clusters:
        raise UserError(f"--groups cluster: {len(pool)} items are too few for {clusters} clusters of about 5 or "
                        f"more; use --clusters {max(2, len(pool) // 5)} or fewer, or drop cluster from --groups")


def make_groups(pool: Dataset, kinds: tuple[str, ...] | None, feats: np.ndarray, clusters: int, seed: int,
                by_check: Mapping[str, np.ndarray]) -> tuple[dict[str, tuple[str, np.ndarray]], np.ndarray, list[str]]:
    """name -> (kind, pool indices), the k-means centres (empty without clusters) and the notes of
    stated fallbacks. Kinds asked for explicitly that cannot apply are one-line errors."""
    asked = kinds is not None
    kinds = kinds or GROUP_KINDS
    out: dict[str, tuple[str, np.ndarray]] = {}
    notes: list[str] = []
    centres = np.zeros((0, feats.shape[1]))
    if "class" in kinds:
        if not pool.labeled:
            if asked:
                raise UserError("--groups class needs labels, and this training set has none; "
                                "use --groups cluster,finding,folder")
            notes.append("class groups: the set has no labels; grouped by cluster, finding and folder only.")
        else:
            for c in np.unique(pool.labels[pool.labels >= 0]):
                out[f"class:{pool.label_name(int(c))}"] = ("class", np.flatnonzero(pool.labels == c))
    if "cluster" in kinds:
        if len(pool) < 5 * clusters:
            raise UserError(f"--groups cluster: {len(pool)} items are too few for {clusters} clusters of about 5 or "
                            f"more; use --clusters {max(2, len(pool) // 5)} or fewer, or drop cluster from --groups")
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit(feats)
        centres = km.cluster_centers_
        for c in range(clusters):
            out[f"cluster:{c}"] = ("cluster", np.flatnonzero(km.labels_ == c))
    if "finding" in kinds:
        for chk, idx in sorted(by_check.items()):
            out[f"finding:{chk}"] = ("finding", np.asarray(idx, int))
        if not by_check:
            notes.append("finding groups: the audit flagged nothing, so there are none.")
    if "folder" in kinds:
        folders = np.array([os.path.dirname(i) if pool.root else "" for i in pool.ids])
        names = np.unique(folders)
        if len(names) < 2:
            if asked and "folder" in (kinds or ()) and pool.root:
                notes.append("folder groups: every image is in one folder; none made.")
            else:
                notes.append("folder groups: the set does not come from sub-folders; none made.")
        else:
            for f in names:
                out[f"folder:{f or '.'}"] = ("folder", np.flatnonzero(folders == f))
    small = [g for g, (_, idx) in out.items() if len(idx) < MIN_GROUP]
    for g in small:
        del out[g]
    if small:
        notes.append(f"{len(small)} group(s) of one item left out of groups.csv (an item is valued in items.csv): "
                     + ", ".join(small[:5]) + (" ..." if len(small) > 5 else ""))
    if asked and not out:
        raise UserError(f"--groups {','.join(kinds)}: no group of at least {MIN_GROUP} items could be made from this set")
    return out, centres, notes


def group_table(groups: Mapping[str, tuple[str, np.ndarray]], values: np.ndarray,
                effects: Mapping[str, Mapping[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """groups.csv rows: the estimated value (sum of the items' values; a bootstrap interval over its
    items) and, where measured, the leave-group-out effects (`reports.value_verify.group_effects`)."""
    rng = np.random.default_rng([seed, 5])
    rows = []
    for name, (kind, idx) in groups.items():
        v = values[idx]
        boots = rng.choice(v, size=(400, len(v))).sum(1)
        row = {"group": name, "kind": kind, "n": len(idx), "value": float(v.sum()),
               "value_low": float(np.quantile(boots, 0.025)), "value_high": float(np.quantile(boots, 0.975)),
               "value_per_item": float(v.mean())}
        row.update(effects.get(name, {}))
        rows.append(row)
    return rows
