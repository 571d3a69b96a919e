"""The ``dirty`` and ``cleaned`` factors: a training set with planted corruption and duplicates, and the
same set after datacheck's audit and dedupe removed what they flagged (registered in `reports.factors`).

``dirty`` at a level and seed plants the very same items that ``cleaned`` at that level and seed starts
from, so a study compares the two directly: the recovery cleaning buys."""
from __future__ import annotations

from typing import Any

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError

from .base import _count, _fraction, _register
from .data import CORRUPTIONS, _plant_corruption, _plant_duplicates


def _dirty(ds: Dataset, level: float, rng: np.random.Generator, corrupt_share: float = 0.5,
           kinds: tuple[str, ...] | list[str] = CORRUPTIONS, per_source: int = 25,
           exact_share: float = 0.5) -> tuple[Dataset, dict[str, Any]]:
    k = _count(_fraction(level, "dirty"), len(ds))
    k_c = int(round(k * corrupt_share))
    idx = rng.permutation(len(ds))[:k]
    c_idx, d_idx = np.sort(idx[:k_c]), np.sort(idx[k_c:])
    out, man_c = _plant_corruption(ds, c_idx, rng, tuple(kinds))
    # copy sources are never corrupted items, so each planted copy is a copy of a clean image
    out, man_d = _plant_duplicates(out, d_idx, rng, per_source, exact_share, exclude=c_idx)
    return out, {"changed": k, "corrupted": man_c["corrupted"], "kinds": man_c["kinds"],
                 "sources": man_d["sources"], "copies": man_d["copies"]}


_register("dirty", 0.0, "fraction affected by corruption and duplicates (half each), before any cleaning",
          default_levels=(0.4,), axis="fraction corrupted or duplicated",
          phrase="Corrupting or duplicating {pct} of the training set (half each)", metrics=("fid", "precision"))(_dirty)

DEFAULT_CLEAN_CHECKS = ("exact_duplicate", "near_duplicate", "dark", "light", "blurry",
                        "low_information", "noisy", "outlier")


def audit_and_remove(ds: Dataset, checks: tuple[str, ...] = DEFAULT_CLEAN_CHECKS) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Run datacheck's audit and dedupe on ``ds``; returns (keep mask, {id: [reasons]} of removed items).

    Removed: every item flagged by a non-duplicate check, and every duplicate that dedupe does not
    keep as its group's representative (one copy of each group stays)."""
    from datacheck.auditing import audit
    from datacheck.deduplication import dedupe

    from datacheck.checks import CHECKS

    reasons: dict[str, list[str]] = {}
    unknown = [c for c in checks if c not in CHECKS and c not in ("exact_duplicate", "near_duplicate")]
    if unknown:
        raise UserError(f"the cleaned factor asks for check(s) datacheck does not have: {', '.join(unknown)}; "
                        f"expected some of: {', '.join(sorted(_registered_checks()))}")
    other = tuple(c for c in checks if c not in ("exact_duplicate", "near_duplicate"))
    if other:
        findings = audit(ds, checks=list(other))
        crashed = findings.attrs.get("summary", {}).get("errors", {})
        if crashed:  # cleaning with fewer checks than asked would pass off a partial clean as the factor
            raise UserError("the cleaned factor stopped: audit check(s) crashed ("
                            + "; ".join(f"{k}: {v}" for k, v in crashed.items()) + ")")
        for rid, chk in zip(findings["id"], findings["check"]):
            reasons.setdefault(str(rid), []).append(str(chk))
    if any(c in checks for c in ("exact_duplicate", "near_duplicate")):
        dd = dedupe(ds)
        for rid, keep, why in zip(dd["id"], dd["keep"], dd["reason"]):
            if not _truthy(keep):
                reasons.setdefault(str(rid), []).append(f"duplicate:{why}")
    pos = {i: j for j, i in enumerate(ds.ids)}
    mask = np.ones(len(ds), bool)
    for rid in reasons:
        if rid in pos:
            mask[pos[rid]] = False
    return mask, reasons


def _registered_checks() -> set[str]:
    from datacheck.checks import CHECKS

    return set(CHECKS.names()) | {"exact_duplicate", "near_duplicate"}


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


# its primary test compares it with 'dirty' at the same level and seed (the recovery cleaning buys), when
# the study runs both: cleaning is the data's fix, so its gain is what it recovers, not how close it
# comes to a clean set nobody has
@_register("cleaned", 0.0, "'dirty' at the level, then what datacheck's audit and dedupe flagged removed",
           default_levels=(0.4,), axis="fraction planted before cleaning",
           phrase="Cleaning a set with {pct} planted problems", metrics=("fid", "precision"),
           reference="dirty", expect="gain")
def _cleaned(ds: Dataset, level: float, rng: np.random.Generator, checks: tuple[str, ...] | list[str] = DEFAULT_CLEAN_CHECKS,
             **dirty_options: Any) -> tuple[Dataset, dict[str, Any]]:
    dirty, man = _dirty(ds, level, rng, **dirty_options)
    mask, reasons = audit_and_remove(dirty, tuple(checks))
    corrupted = {it["index"] for it in man["corrupted"]}
    copies = {it["index"] for it in man["copies"]}
    removed = set(np.flatnonzero(~mask).tolist())
    # A planted duplicate group is a source plus its copies; the ideal cleaning keeps exactly one of
    # them, and which one survives does not matter. So per group, removals up to the number of
    # copies count as copies removed, and only removals beyond that as clean items lost.
    groups: dict[int, set[int]] = {}
    for it in man["copies"]:
        groups.setdefault(it["source_index"], set()).add(it["index"])
    copies_removed = 0
    clean_lost = 0
    for src, members in groups.items():
        r = len(({src} | members) & removed)
        copies_removed += min(r, len(members))
        clean_lost += max(0, r - len(members))
    in_groups = set(groups) | copies
    clean = set(range(len(dirty))) - corrupted - copies
    clean_lost += len((clean - in_groups) & removed)
    planted = len(corrupted) + len(copies)
    by_kind: dict[str, list[int]] = {}
    for it in man["corrupted"]:
        by_kind.setdefault(it["kind"], []).append(it["index"])
    man.update({
        "checks": [c for c in checks if c in _registered_checks()],
        "removed": len(removed),
        "removed_ids": {dirty.ids[i]: reasons.get(dirty.ids[i], []) for i in sorted(removed)},
        "corrupted_planted": len(corrupted),
        "corrupted_removed": len(corrupted & removed),
        "copies_planted": len(copies),
        "copies_removed": copies_removed,
        "clean_items": len(clean),
        "clean_lost": clean_lost,
        "recall_corrupted": len(corrupted & removed) / len(corrupted) if corrupted else None,
        "recall_copies": copies_removed / len(copies) if copies else None,
        "recall": (len(corrupted & removed) + copies_removed) / planted if planted else None,
        "clean_lost_fraction": clean_lost / len(clean) if clean else 0.0,
        "recall_by_kind": {k: len(set(v) & removed) / len(v) for k, v in sorted(by_kind.items())},
    })
    return dirty.subset(mask), man
