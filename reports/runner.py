"""The study driver: `run_study` runs a study's unfinished arms into its folder, holding the
folder's lock, planning fused groups (`reports.fusion`), saving each arm as it ends and rendering
the report (`reports.study_html`). It sits above the study's definitions (`reports.study`), so
those never import the driver's helpers back."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from datacheck.errors import UserError
from datacheck.io import refuse_inside_source, write_json, write_text

from .effects import default_plan
from .executors import LocalExecutor
from .factors import FACTORS
from .fusion import FUSE_MODES, GroupTask, clean_work, plan_training, write_manifest
from .study_html import render_study
from .store import (_check_arm_protocols, _check_protocol, _save_arm, finished_arms, plan, protocol_hash,
                    read_results, versions, write_results)
from .study import StudyConfig, StudyData, prepare_data, protocol, resolve_features

log = logging.getLogger(__name__)


LOCK_NAME = ".lock"


@contextlib.contextmanager
def study_lock(study: Path):
    """Hold ``STUDY/.lock`` (host, pid, since) while a driver works on the folder. A second driver gets a
    one-line UserError naming the holder; a lock whose process is gone (a driver killed with kill -9) is
    stale and taken over. Locks from another host cannot be checked from here and are refused."""
    import socket

    study.mkdir(parents=True, exist_ok=True)
    path = study / LOCK_NAME
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}
            if holder and not _stale(holder):
                raise UserError(f"{study} is in use by another reports driver (host {holder.get('host')}, pid "
                                f"{holder.get('pid')}, since {holder.get('since')}); wait for it, or delete "
                                f"{path} if that driver is gone") from None
            if not holder and time.time() - path.stat().st_mtime < 5:
                time.sleep(0.5)  # a lock being written right now: look again
                continue
            log.warning("taking over the stale lock %s (%s)", path, holder or "unreadable")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me))
        break
    else:
        raise UserError(f"could not take the lock {path}; another driver keeps replacing it")
    try:
        yield
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == me["pid"]:
                path.unlink()
        except (OSError, ValueError):
            pass


def _stale(holder: Mapping[str, Any]) -> bool:
    """True when the lock's process is gone (same host only)."""
    import socket

    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, TypeError, OverflowError):
        return False
    return False


def run_study(config: StudyConfig, study: str | os.PathLike, *, executor: Any = None,
              command: str = "", on_progress: Callable[[str], None] | None = None,
              render: bool = True, fuse: str = "auto", retry_failed: bool = False) -> Any:
    """Run every unfinished arm of ``config`` into ``study`` and return results.csv as a DataFrame.

    Finished arms (``arms/<id>/result.json``) are skipped, so a killed study resumes. Each arm's
    result is saved and results.csv rewritten the moment it finishes. ``fuse``: "auto" trains arms
    that share model, options and shape as fused groups where that is faster (see
    `reports.fusion`), "on" always, "off" each arm alone. Arms that fail (a non-finite loss in
    a fused group, or any error in an arm) are results: ``arms/<id>/result.json`` says ``status: failed``
    and why, the study goes on, the report lists them, and a resume leaves them alone unless
    ``retry_failed``."""

    if fuse not in FUSE_MODES:
        raise UserError(f"fuse must be one of {', '.join(FUSE_MODES)}, got {fuse!r}")

    study = Path(study)
    say = on_progress or (lambda s: log.info(s))
    data = prepare_data(config)
    refuse_inside_source(study, data.full.root, "--out", "a study never writes into its data, pick a place outside it")
    config = resolve_features(config, data)
    proto = protocol(config, data)
    _check_protocol(study, proto)  # before the lock too: a wrong folder is refused without touching it
    study.mkdir(parents=True, exist_ok=True)
    with study_lock(study):
        _check_protocol(study, proto)  # again: another driver may have finished in between
        for cut in study.rglob(".*.tmp"):  # temp files of writes a kill cut short (datacheck.io.atomic_path)
            cut.unlink(missing_ok=True)
        return _run_study(config, study, data, proto, executor, command, say, render, fuse, retry_failed)


def _run_study(config: StudyConfig, study: Path, data: StudyData, proto: dict[str, Any], executor: Any, command: str,
               say: Callable[[str], None], render: bool, fuse: str, retry_failed: bool) -> Any:

    prev: dict[str, Any] = {}
    if (study / "study.json").exists():
        prev = json.loads((study / "study.json").read_text())  # _check_protocol has parsed it already
    prev_cmds = prev.get("commands", [])
    # the analysis plan is declared before the first arm runs and never changes afterwards; a folder that
    # has arms but no plan was made under the v2 analysis and stays without one (the report re-analyses it
    # under the default plan and says so: reports.effects.study_plan)
    results = finished_arms(study)
    analysis = prev.get("analysis")
    if analysis is None and not results:
        analysis = default_plan(config.factors).to_dict()
    write_json(study / "study.json", {
        "config": config.to_dict(), "protocol": proto,
        "commands": prev_cmds + ([command] if command and command not in prev_cmds else []),
        "versions": versions(),
        "reference": {"n": len(data.reference), "class_counts": data.reference.class_counts()},
        "pool": {"n": len(data.pool), "class_counts": data.pool.class_counts()},
        "factors": {f: FACTORS.get(f).level_meaning for f in config.factors},
        "images": {"original_shape": list(data.original_shape or data.full.shape), "trained_shape": list(data.full.shape)},
        "training": prev.get("training", []),
        **({"analysis": analysis} if analysis is not None else {}),
    })
    if not (study / "split.csv").exists():
        write_text(study / "split.csv", data.split.to_csv(index=False))
    phash = protocol_hash(proto)
    _check_arm_protocols(study, results, phash)
    pl = plan(config, study, results, retry_failed=retry_failed)
    write_results(study, results)
    say(f"{len(pl.arms)} arms: {len(pl.done)} already finished, {len(pl.todo)} to run")
    executor = executor or LocalExecutor()
    # workers that share this filesystem (a local pool, a local Ray instance) keep a fused group's
    # manifest, population checkpoint and member runs in STUDY/work, so a killed study resumes the group
    shared_fs = bool(getattr(executor, "shared_filesystem", False))
    work = study / "work"
    known = {a.arm_id for a in pl.arms}
    _clean(work, results, known)  # groups saved whole by a run killed before it tidied up; cut temp files
    training = plan_training(config, pl.todo, data.pool, fuse=fuse, workers=executor_slots(executor),
                             work_dir=work if shared_fs else None)
    group_of: dict[str, str] = {}
    for t in training.tasks:
        if isinstance(t, GroupTask) and t.work_dir is not None:
            write_manifest(t)  # before it runs: a re-run rebuilds this group, so its checkpoint matches
            group_of.update({a.arm_id: t.group_id for a in t.arms})
    if pl.todo:
        say(training.describe())
    _record_training(study, fuse, training)
    start = time.perf_counter()
    n_done = 0

    def on_result(res: Mapping[str, Any]) -> None:
        nonlocal n_done
        res = {**res, "provenance": {**res.get("provenance", {}), "protocol_hash": phash}}
        _save_arm(study, res)
        results[res["row"]["arm_id"]] = dict(res)
        write_results(study, results)
        n_done += 1
        r = res["row"]
        say(f"[{n_done}/{len(pl.todo)}] {r['arm_id']}: fid {_fmt(r.get('fid'))}, "
            f"memorization {_fmt(r.get('memorization'))} ({r['seconds']:.1f} s; "
            f"{time.perf_counter() - start:.0f} s so far)")

    failed: list[dict[str, Any]] = []

    def on_any(res: Mapping[str, Any]) -> None:
        if res.get("failed"):
            failed.append(dict(res))
            d = study / "arms" / res["arm_id"]
            d.mkdir(parents=True, exist_ok=True)
            for stale in ("samples.png", "samples.npz", "copies.png"):  # a retried arm's old files
                (d / stale).unlink(missing_ok=True)
            doc = {"arm": res["arm"], "status": "failed", "error": res["error"]}
            write_json(d / "result.json", doc)
            results[res["arm_id"]] = doc
            write_results(study, results)
            say(f"{res['arm_id']} failed: {res['error']} (kept as a failed arm; --retry-failed runs it again)")
        else:
            on_result(res)
        gid = group_of.get(res["arm_id"] if res.get("failed") else res["row"]["arm_id"])
        if gid is not None:  # the group's work files go once its every arm is saved
            clean_work(work, set(results), known, only=gid)

    if pl.todo:
        executor.run(training.tasks, data.pool, data.reference, on_any)
        _clean(work, results, known)
    if render:
        render_study(study)
    return read_results(study)


def _clean(work: Path, results: Mapping[str, Any], known: set[str]) -> None:
    """Tidy STUDY/work between runs (no worker is running): see `reports.fusion.clean_work`."""
    gone = clean_work(work, set(results), known)
    if gone:
        log.info("removed from %s what no unfinished group needs: %s", work, ", ".join(gone[:8]))
    try:
        work.rmdir()  # only when empty
    except OSError:
        pass


def executor_slots(executor: Any) -> int:
    """How many tasks the executor runs at once (local workers, or a Ray instance's CPUs)."""
    n = getattr(executor, "workers", None) or getattr(executor, "num_cpus", None)
    return int(n or os.cpu_count() or 1)


def _record_training(study: Path, fuse: str, training: Any) -> None:
    """study.json's ``training``: how this run's arms train (fused groups or alone), per model."""
    p = study / "study.json"
    doc = json.loads(p.read_text())
    doc.setdefault("training", []).append({"fuse": fuse, "models": training.models, "summary": training.describe()})
    write_json(p, doc)


def _fmt(v: Any) -> str:
    try:
        return f"{float(v):.3g}"
    except (TypeError, ValueError):
        return "n/a"
