"""effects.csv: the study's analysis as a table (`reports.analysis` does the statistics).

One row per primary test (``primary`` true: one per factor of the declared plan, on its headline metric,
pooled over models, with the sign-flip test, the matching interval, Holm's adjustment within the family
and ``significant``), then the descriptive rows (``primary`` false): every factor x level x model x
headline metric, the mean paired difference arm - baseline (seed s with seed s) with a paired t interval
and the unadjusted sign-flip p; ``p_holm`` is empty there, ``significant`` false and ``direction``
``none``, since nothing outside the family is ever called significant. ``kind`` is ``data``,
``model`` or ``control`` (the negative control).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

# holm and sign_flip_p are re-exported: effects.csv's tests are these
from .analysis import (PRIMARY_COLUMNS, AnalysisPlan, descriptive_rows, holm, plan_for, primary_tests,  # noqa: F401
                       sign_flip_p)

log = logging.getLogger(__name__)

COLUMNS = PRIMARY_COLUMNS


def descriptive_metrics() -> dict[str, bool]:
    """The metrics of the descriptive rows and whether higher is better: every metric the report names."""
    from .study_metrics import METRICS

    return {m: hib for m, (_, hib) in METRICS.items()}


def factor_kinds() -> dict[str, str]:
    from .factors import FACTORS

    return {f: FACTORS.get(f).kind for f in FACTORS}


def factor_baselines() -> dict[str, float]:
    from .factors import FACTORS

    return {f: FACTORS.get(f).baseline for f in FACTORS}


def default_plan(factors: Any) -> AnalysisPlan:
    """The plan for a study of these factors (those the registry knows), on FID; each factor's registry entry
    says what its test compares with (`Factor.reference`) and which copy signal gets a dose-trend test."""
    from .factors import FACTORS

    kinds = factor_kinds()
    known = [f for f in factors if f in kinds]
    refs = {f: FACTORS.get(f).reference for f in known if FACTORS.get(f).reference != "baseline"}
    copies = {f: FACTORS.get(f).copy_test for f in known if FACTORS.get(f).copy_test}
    return plan_for(known, kinds, references=refs, copy_tests=copies)


def paired_effects(df: Any, *, plan: AnalysisPlan | None = None) -> Any:
    """The effects table (columns `COLUMNS`) of a study's results (results.csv as a DataFrame): the
    primary tests first (in the plan's order), then the descriptive rows sorted by factor, level, model,
    metric. Without ``plan``, the default plan over the factors in ``df``."""
    import pandas as pd

    if not len(df):
        return pd.DataFrame(columns=list(COLUMNS))
    plan = plan or default_plan([f for f in dict.fromkeys(df["factor"]) if f != "baseline"])
    prim = [{k: r[k] for k in COLUMNS} for r in primary_tests(df, plan, factor_baselines())]
    desc = descriptive_rows(df, descriptive_metrics(), factor_kinds())
    return pd.DataFrame(prim + desc, columns=list(COLUMNS))


def study_plan(study: str | Path) -> tuple[AnalysisPlan, str | None]:
    """The plan recorded in STUDY/study.json, or (for a study made before plans were declared) the
    default plan of its factors and a note saying the study was re-analysed under it."""
    p = Path(study) / "study.json"
    meta: Mapping[str, Any] = json.loads(p.read_text()) if p.exists() else {}
    if isinstance(meta.get("analysis"), Mapping):
        return AnalysisPlan.from_dict(meta["analysis"]), None
    factors = meta.get("config", {}).get("factors", [])
    return default_plan(factors), ("This study was run before analysis plans were declared (analysis v2: bootstrap "
                                   "intervals, Holm over every test); its arms are valid and it is re-analysed here "
                                   "under plan v3 only.")


def write_effects(study: str | Path) -> Path:
    """STUDY/effects.csv from STUDY/results.csv under the study's plan (written atomically); returns its path."""
    import pandas as pd

    from datacheck.io import write_text

    study = Path(study)
    df = pd.read_csv(study / "results.csv") if (study / "results.csv").exists() else pd.DataFrame()
    plan, _ = study_plan(study)
    eff = paired_effects(df, plan=plan)
    path = study / "effects.csv"
    write_text(path, eff.to_csv(index=False, float_format="%.6g"))
    return path
