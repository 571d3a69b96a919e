"""The study folder as a store: results.csv and each arm's files (written atomically, ``result.json``
last), which arms are finished or failed, the plan of what is left to run, and the protocol checks that
keep a folder from mixing arms made under different settings."""
from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


from datacheck.errors import UserError
from datacheck.io import write_bytes, write_json, write_text

from .study import ARM_COLUMNS, EXTRA_COLUMNS, METRIC_COLUMNS, Arm, StudyConfig, grid

log = logging.getLogger(__name__)


def read_results(study: str | os.PathLike):
    """results.csv as a DataFrame (empty with the arm columns when there is none)."""
    import pandas as pd

    p = Path(study) / "results.csv"
    if not p.exists():
        return pd.DataFrame(columns=list(ARM_COLUMNS + METRIC_COLUMNS))
    return pd.read_csv(p)


def finished_arms(study: Path) -> dict[str, dict[str, Any]]:
    """arm_id -> result.json for every ended arm (result.json is written last): finished ones, and
    failed ones (``status: failed``; see `failed_arms`)."""
    out = {}
    arms = study / "arms"
    if arms.is_dir():
        for p in sorted(arms.glob("*/result.json")):
            try:
                out[p.parent.name] = json.loads(p.read_text())
            except (OSError, ValueError):
                log.warning("ignoring unreadable %s (the arm will run again)", p)
    return out


def failed_arms(results: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """arm_id -> reason, for the arms whose result.json says ``status: failed``."""
    return {k: str(r.get("error", "")) for k, r in results.items() if r.get("status") == "failed"}


def write_results(study: Path, results: Mapping[str, Mapping[str, Any]]) -> None:
    """Rewrite results.csv atomically from the finished arms' rows, in a stable order (failed arms
    have no row: the report lists them)."""
    import pandas as pd

    rows = [r["row"] for r in results.values() if r.get("status") != "failed" and "row" in r]
    cols = list(ARM_COLUMNS + METRIC_COLUMNS)
    for r in rows:
        for k in r:
            if k not in cols and k not in EXTRA_COLUMNS:
                cols.append(k)
    cols += [c for c in EXTRA_COLUMNS if c not in cols]
    df = pd.DataFrame(rows, columns=cols)
    if len(df):
        df["_base"] = (df["factor"] != "baseline").astype(int)
        df = df.sort_values(["seed", "model", "_base", "factor", "level"], kind="stable").drop(columns="_base")
    write_text(study / "results.csv", df.to_csv(index=False, float_format="%.6g"))


def _save_arm(study: Path, res: Mapping[str, Any]) -> None:
    d = study / "arms" / res["row"]["arm_id"]
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "manifest.json", res["manifest"])
    write_bytes(d / "samples.png", res["samples_png"])
    write_bytes(d / "samples.npz", res["samples_npz"])
    if res.get("copies_png"):
        write_bytes(d / "copies.png", res["copies_png"])
    # last: its presence marks the arm finished
    write_json(d / "result.json", {"arm": res["arm"], "row": res["row"], "metrics": res["metrics"],
                                   "provenance": res.get("provenance", {})})


# ============================================================================ the runner
@dataclass
class StudyPlan:
    config: StudyConfig
    arms: list[Arm]
    todo: list[Arm]
    done: list[Arm]


def plan(config: StudyConfig, study: str | os.PathLike,
         finished: Mapping[str, Any] | None = None, retry_failed: bool = False) -> StudyPlan:
    """The grid split into finished and to-do arms (``finished``: `finished_arms`, if already read).
    Failed arms count as done unless ``retry_failed``."""
    arms = grid(config)
    fin = finished_arms(Path(study)) if finished is None else finished
    if retry_failed:
        fin = {k: v for k, v in fin.items() if v.get("status") != "failed"}
    done = [a for a in arms if a.arm_id in fin]
    todo = [a for a in arms if a.arm_id not in fin]
    return StudyPlan(config, arms, todo, done)


def _check_protocol(study: Path, proto: Mapping[str, Any]) -> None:
    """Refuse a study folder made under another protocol, or one whose record of it is damaged (a
    study.json that does not parse, or none beside finished arms): such arms are never adopted blindly."""
    p = study / "study.json"
    if not p.exists():
        if any((study / "arms").glob("*/result.json")) if (study / "arms").is_dir() else False:
            raise UserError(f"{p} is missing but {study / 'arms'} holds finished arms; their protocol is unknown, "
                            "so they cannot be resumed: restore study.json or use a new --out")
        return
    try:
        doc = json.loads(p.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("protocol", {}), dict):
            raise ValueError("not a study record")
        old = doc.get("protocol", {})
    except (OSError, ValueError) as e:
        raise UserError(f"{p} does not parse ({str(e).splitlines()[0][:80]}); the study's settings are unknown, so "
                        "its arms cannot be resumed: restore the file or use a new --out") from None
    diff = sorted(k for k in set(old) | set(proto) if old.get(k) != _jsonable(proto.get(k)))
    if diff:
        raise UserError(
            f"{study} holds a study made with different settings ({', '.join(diff)}); "
            f"use a new --out or the same settings to resume it"
        )


def protocol_hash(proto: Mapping[str, Any]) -> str:
    """A short hash of the protocol: every arm's result.json records the one it was made under."""
    import hashlib

    return hashlib.sha256(json.dumps(_jsonable(proto), sort_keys=True).encode()).hexdigest()[:16]


def _check_arm_protocols(study: Path, results: Mapping[str, Mapping[str, Any]], phash: str) -> None:
    """Refuse to resume when finished arms record another protocol than the study's (a study.json edited
    or swapped under them): their numbers are not comparable with new arms'."""
    other = sorted(k for k, r in results.items()
                   if r.get("provenance", {}).get("protocol_hash") not in (None, phash))
    if other:
        raise UserError(f"{len(other)} arm(s) in {study / 'arms'} were made under another protocol than "
                        f"{study / 'study.json'} records ({', '.join(other[:3])}{' ...' if len(other) > 3 else ''}); "
                        "use a new --out, or remove those arms to run them again")


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("datamatters", "torch", "numpy", "scipy", "pandas", "scikit-learn", "ray"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
