"""How a study's arms are trained: alone (one arm per task) or as fused groups (one task trains a
group of arms as one job, `generative.population.train_population`).

``fuse="auto"`` (the default of ``reports ablate``) fuses the arms that share model, options and image
shape, in groups sized to a memory budget and so that every worker gets work; on a CPU only the models
whose fused step measures faster than their solo step here (a short probe, `fusion_speedup`),
since on a CPU fusion saves per-operation overhead but not arithmetic. ``fuse="off"`` trains each arm
alone, as before. The results agree within the seed spread (a member's gradients equal its solo run's
to float rounding; long trajectories drift as any two float orders do).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError
from datacheck.io import write_json
from generative.population import MAX_MEMBERS  # members per fused group (reports value fuses by it too)

from .arms import ArmTask, arm_data, arm_result, failed_result
from .study import Arm, StudyConfig, arm_training

log = logging.getLogger(__name__)

FUSE_MODES = ("auto", "on", "off")
MIN_SPEEDUP = 1.1  # fuse="auto" on a CPU: fuse a model only where the probe measured at least this
_SPEEDUPS: dict[str, float] = {}


@dataclass(frozen=True)
class GroupTask:
    """A fused group: arms of one model (same options and image shape) trained as one job.
    ``work_dir``: where the group's manifest, population checkpoint and members' runs live until
    every arm of the group is saved (in the study folder when the executor's workers share this
    filesystem, so a killed study resumes the group; None: a temp dir). ``done``: ids of arms whose
    results the study already saved (a resumed group trains them as members, if its checkpoint has
    not already ended them, but returns no result for them)."""

    arms: tuple[Arm, ...]
    config: StudyConfig
    work_dir: str | None = None
    done: tuple[str, ...] = ()

    @property
    def group_id(self) -> str:
        h = hashlib.sha256("\n".join(a.arm_id for a in self.arms).encode()).hexdigest()[:12]
        return f"{self.arms[0].model}-{len(self.arms)}-{h}"

    def run(self, pool: Dataset, reference: Dataset) -> list[dict[str, Any]]:
        return run_group(self, pool, reference)


def run_group(task: GroupTask, pool: Dataset, reference: Dataset) -> list[dict[str, Any]]:
    """Train the group's arms as one fused job, then sample and evaluate each like a solo arm.
    Errors are results, as for a solo arm (`reports.arms.run_arm`): a member that failed (non-finite
    loss) or whose evaluation raised comes back as `reports.arms.failed_result` with the reason; an
    error of the fused job itself, which no member can be blamed for alone, fails every arm of the
    group that had not ended, with that reason. The study goes on either way."""
    import torch

    cfg = task.config
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tmp = None
    try:
        if task.work_dir is None:
            tmp = tempfile.mkdtemp(prefix="dm-group-")
        root = Path(task.work_dir or tmp)  # type: ignore[arg-type]
        return _run_group(task, pool, reference, root)
    finally:
        torch.set_num_threads(old_threads)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _run_group(task: GroupTask, pool: Dataset, reference: Dataset, root: Path) -> list[dict[str, Any]]:
    import generative
    from generative.population import Member, train_population

    cfg, arms = task.config, task.arms
    model = arms[0].model
    training = [arm_training(cfg, a, pool) for a in arms]  # (options, steps) per arm: model tweaks differ
    t0 = time.perf_counter()
    made = [arm_data(a, cfg, pool) for a in arms]
    factor_s = (time.perf_counter() - t0) / len(arms)
    members = [Member(ds, root / "runs" / a.arm_id, seed=a.seed, steps=st, options=opts)
               for a, (ds, _), (opts, st) in zip(arms, made, training)]
    t1 = time.perf_counter()
    wanted = [i for i, a in enumerate(arms) if a.arm_id not in task.done]
    try:
        # every member of the group, always: the population checkpoint is the one record of which have
        # ended (they are not trained again); it is kept after the last member ends, so a study killed
        # while it evaluates or saves the arms gets them back without training (the driver deletes it
        # once every arm of the group is saved, `clean_work`)
        status = train_population(model, members, batch_size=cfg.batch_size, device=cfg.device, log_every=50,
                                  checkpoint_every=100, state=root / f"{task.group_id}.pt",
                                  keep_state=task.work_dir is not None, journal=journal_path(task.work_dir))
    except Exception as e:  # the fused job itself failed: no member can be told apart
        log.warning("fused group %s failed: %s", task.group_id, e)
        return [failed_result(arms[i], e) for i in wanted]
    train_s = (time.perf_counter() - t1) / max(len(wanted), 1)
    out: list[dict[str, Any]] = []
    for i in wanted:
        arm, (ds, manifest), r = arms[i], made[i], status[i]
        if r.status != "finished":
            out.append(failed_result(arm, r.error))
            continue
        try:
            trained = generative.load(members[i].out)
            trained._dm_steps = int(members[i].steps)  # type: ignore[attr-defined]
            out.append(arm_result(arm, cfg, trained, ds, manifest, reference,
                                  {"factor": factor_s, "train": train_s}, trained=f"fused x{len(arms)}"))
        except Exception as e:  # this arm's evaluation: the others' results stand
            log.warning("arm %s failed: %s", arm.arm_id, e)
            out.append(failed_result(arm, e))
    return out


# ------------------------------------------------------------------------------ the work folder
# STUDY/work holds, per fused group that has not been saved whole: <group_id>.json (its manifest: the
# arms, in member order, written by the driver before the group runs), <group_id>.pt (its population
# checkpoint) and runs/<arm_id>/ (its members' exported runs). A re-run rebuilds the same group from the
# manifest, so the checkpoint matches; the driver deletes all three once every arm of the group is saved.
MANIFEST_FORMAT = "datamatters-fused-group"


def journal_path(work_dir: str | os.PathLike | None) -> Path | None:
    """STUDY/logs/training.jsonl: every fused group's training events (start, resume, each member's end and
    export), appended across kills and never read back by the study: how an operator sees what trained
    where. None without a shared work folder."""
    return None if work_dir is None else Path(work_dir).parent / "logs" / "training.jsonl"


def group_manifest_path(work_dir: str | os.PathLike, group_id: str) -> Path:
    return Path(work_dir) / f"{group_id}.json"


def write_manifest(task: GroupTask) -> None:
    """Record the group's arms in its work folder (atomic; before it runs), so a re-run rebuilds it."""
    if task.work_dir is None:
        return
    p = group_manifest_path(task.work_dir, task.group_id)
    if not p.exists():
        write_json(p, {"format": MANIFEST_FORMAT, "group_id": task.group_id,
                       "arms": [dataclasses.asdict(a) for a in task.arms]})


def read_manifests(work_dir: str | os.PathLike | None) -> dict[str, tuple[Arm, ...]]:
    """group_id -> its arms, for every readable manifest in ``work_dir`` (an unreadable one is skipped
    and later removed as stale by `clean_work`)."""
    out: dict[str, tuple[Arm, ...]] = {}
    if work_dir is None or not Path(work_dir).is_dir():
        return out
    for p in sorted(Path(work_dir).glob("*.json")):
        try:
            doc = json.loads(p.read_text())
            if doc.get("format") != MANIFEST_FORMAT:
                continue
            arms = tuple(Arm(str(a["factor"]), None if a["level"] is None else float(a["level"]), str(a["model"]),
                             int(a["seed"])) for a in doc["arms"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable group manifest %s", p)
            continue
        if arms and GroupTask(arms, None).group_id == doc.get("group_id") == p.stem:  # type: ignore[arg-type]
            out[p.stem] = arms
    return out


def clean_work(work_dir: str | os.PathLike, ended: set[str] | Any, known: set[str] | Any,
               only: str | None = None) -> list[str]:
    """Delete what no group needs any more: the manifest, checkpoint and member runs of every group
    whose arms have all ended (``ended``: arm ids with a saved result.json, finished or failed) or that
    names an arm outside the study (``known``), and anything in ``work_dir`` that no live manifest
    claims (cut temp files, an old layout's files). ``only``: look at that group alone (after saving
    one arm). Returns the deleted paths (relative to ``work_dir``)."""
    root = Path(work_dir)
    if not root.is_dir():
        return []
    groups = read_manifests(root)
    live: dict[str, tuple[Arm, ...]] = {}
    gone: list[str] = []
    for gid, arms in groups.items():
        ids = [a.arm_id for a in arms]
        if all(i in ended for i in ids) or any(i not in known for i in ids):
            continue
        live[gid] = arms
    keep = {f"{gid}.json" for gid in live} | {f"{gid}.pt" for gid in live}
    keep_runs = {a.arm_id for arms in live.values() for a in arms}
    if only is not None:  # one group: its own files only (others may be training right now)
        if only in live or only not in groups:
            return []
        arms = groups[only]
        paths = [root / f"{only}.pt", *(root / "runs" / a.arm_id for a in arms), root / f"{only}.json"]
    else:
        paths = [p for p in root.iterdir() if p.name != "runs" and p.name not in keep]
        runs = root / "runs"
        if runs.is_dir():
            paths += [p for p in runs.iterdir() if p.name not in keep_runs]
            if not keep_runs:
                paths.append(runs)
        # the manifest last: while it exists, a kill during this clean-up leaves the group findable
        paths.sort(key=lambda p: p.suffix == ".json")
    for p in paths:
        if not p.exists() and not p.is_symlink():
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(str(p.relative_to(root)))
    return gone


# ------------------------------------------------------------------------------ planning
def memory_budget(device: str) -> int:
    """Bytes a fused group may use: half the machine's RAM on a CPU (the workers share it), 80% of
    the GPU's memory on CUDA."""
    if str(device).startswith("cuda"):
        import torch

        return int(0.8 * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = 8 << 30
    return int(0.5 * total)


def fusion_speedup(model: str, shape: tuple[int, int, int], n_classes: int, batch_size: int,
                   options: dict[str, Any], device: str = "cpu", threads: int | None = 1, members: int = 4,
                   steps: int = 3, cache: bool = True) -> float:
    """Measured throughput of a fused group of ``members`` over solo runs of the same model (solo
    seconds per step x members / fused seconds per step), on random data of ``shape``, after one
    warm-up step each. Kept per process and, with ``cache``, on disk
    (``$DATAMATTERS_CACHE/fusion-probes.json``, keyed by the machine, torch version and every argument),
    so a machine measures each configuration once (~0.5 s)."""
    import platform

    import torch

    key = json.dumps([model, list(shape), n_classes, batch_size, sorted((k, str(v)) for k, v in options.items()),
                      device, threads, members, torch.__version__, platform.machine(), platform.processor(),
                      os.cpu_count()])
    if key in _SPEEDUPS:
        return _SPEEDUPS[key]
    path = _probe_cache() if cache else None
    if path is not None:
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        if isinstance(known, dict) and isinstance(known.get(key), (int, float)):
            _SPEEDUPS[key] = float(known[key])
            return _SPEEDUPS[key]
    _SPEEDUPS[key] = _measure_speedup(model, shape, n_classes, batch_size, options, device, threads, members, steps)
    if path is not None:
        try:
            known = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            known = {}
        known = known if isinstance(known, dict) else {}
        known[key] = round(_SPEEDUPS[key], 4)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, known)
        except OSError:  # a read-only home: measure again next time
            log.debug("could not write %s", path)
    return _SPEEDUPS[key]


def _probe_cache() -> Path:
    from datacheck.features import cache_dir

    return cache_dir().parent / "fusion-probes.json"  # beside the trained extractors' cache


def _measure_speedup(model: str, shape: tuple[int, int, int], n_classes: int, batch_size: int,
                     options: dict[str, Any], device: str, threads: int | None, members: int, steps: int) -> float:
    import torch

    import generative
    from generative.population import fused_model

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        spec = generative.MODELS.get(model)
        names = tuple(str(k) for k in range(n_classes))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            models = [spec.build(shape, n_classes, names, options) for _ in range(members)]
        dev = torch.device(device)
        for m in models:
            m.to(dev)
        b = batch_size * models[0].batches_per_step
        g = torch.Generator().manual_seed(0)
        x = models[0].to_float(torch.randint(0, 256, (b, members, *shape), dtype=torch.uint8, generator=g).to(dev))
        y = (torch.arange(b * members) % max(n_classes, 1)).view(members, b).to(dev)
        gens = [torch.Generator(device=dev).manual_seed(k) for k in range(members)]
        fm = fused_model(models, dev)

        def clock(fn: Any) -> float:
            """Best of two rounds of seconds per call, each round at least ``steps`` calls and 0.1 s
            (a few tiny steps alone are at the mercy of the scheduler)."""
            fn()  # warm-up
            best = float("inf")
            for _ in range(2):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t, n = time.perf_counter(), 0
                while n < steps or time.perf_counter() - t < 0.1:
                    fn()
                    n += 1
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, (time.perf_counter() - t) / n)
            return best

        fused = clock(lambda: (fm.step(x, y, gens), fm.update_ema()))
        solo = clock(lambda: models[0].train_step(x[:, 0].contiguous(), y[0], gens[0]))
    finally:
        torch.set_num_threads(old)
    return solo * members / max(fused, 1e-9)


@dataclass
class TrainingPlan:
    """The executor's tasks and, per model, how its arms train (for --dry-run, study.json, the report)."""

    tasks: list[Any]
    models: dict[str, dict[str, Any]]

    def describe(self) -> str:
        parts = []
        for m, d in self.models.items():
            if d["fused"]:
                why = f" (fused step measured {d['speedup']:.2f}x solo here)" if d.get("speedup") else ""
                alone = f"; {d['alone']} alone ({d['reason']})" if d.get("alone") else ""
                resumed = f", {d['resumed']} of them resumed from the work folder" if d.get("resumed") else ""
                parts.append(f"{m}: {d['arms']} arms, {sum(d['groups'])} in {len(d['groups'])} fused group(s) of "
                             f"{', '.join(map(str, d['groups']))}{resumed}{why}{alone}")
            else:
                parts.append(f"{m}: {d['arms']} arms, each alone ({d['reason']})")
        return "training: " + "; ".join(parts) if parts else "training: nothing to run"


def plan_training(config: StudyConfig, todo: Sequence[Arm], pool: Dataset, *, fuse: str = "auto",
                  workers: int = 1, work_dir: str | os.PathLike | None = None,
                  budget: int | None = None) -> TrainingPlan:
    """Split the to-do arms into tasks: fused groups (``fuse`` "on", or "auto" where it pays) or
    one task per arm. A group holds arms of one model and one set of shape-changing options (a model
    tweak such as capacity makes its own groups; a steps tweak does not), at most
    ``MAX_MEMBERS`` for the device and what fits ``budget`` bytes (default `memory_budget`), and each model's
    arms are spread over at least ``workers`` groups so every worker has work.

    ``work_dir``: groups that an earlier, interrupted run left there (their manifests, see `write_manifest`)
    come back as they were, whatever ``fuse`` and ``workers`` say now, so their population checkpoints
    match; their to-do arms join no other group. Reads only: the runner writes the new groups' manifests."""
    import generative
    from generative.population import group_key, member_bytes

    if fuse not in FUSE_MODES:
        raise UserError(f"--fuse must be one of {', '.join(FUSE_MODES)}, got {fuse!r}")
    budget = memory_budget(config.device) if budget is None else int(budget)
    tasks: list[Any] = []
    models: dict[str, dict[str, Any]] = {}
    todo_ids = {a.arm_id for a in todo}
    claimed: set[str] = set()
    for gid, arms in read_manifests(work_dir).items():
        if not todo_ids & {a.arm_id for a in arms} or claimed & {a.arm_id for a in arms}:
            continue  # nothing left to do (clean_work removes it), or an overlapping copy
        group = GroupTask(arms, config, str(work_dir), done=tuple(a.arm_id for a in arms if a.arm_id not in todo_ids))
        tasks.append(group)
        claimed |= {a.arm_id for a in arms}
        info = models.setdefault(arms[0].model, {"arms": 0, "fused": True, "groups": [], "reason": ""})
        info["fused"] = True
        info["arms"] += len(todo_ids & {a.arm_id for a in arms})
        info["groups"].append(len(arms))
        info["resumed"] = info.get("resumed", 0) + 1
    todo = [a for a in todo if a.arm_id not in claimed]
    # arms fuse when they share the model and every option that changes the networks (a capacity or
    # augment tweak makes its own group; a steps tweak does not: members may train for different steps)
    by_key: dict[tuple, list[Arm]] = {}
    opts_of: dict[tuple, dict[str, Any]] = {}
    for a in todo:
        opts, _ = arm_training(config, a, pool)
        key = (a.model, group_key(a.model, opts))
        by_key.setdefault(key, []).append(a)
        opts_of[key] = opts
    n_classes = pool.n_classes
    for key, arms in by_key.items():
        model, opts = key[0], opts_of[key]
        info: dict[str, Any] = models.get(model) or {"arms": 0, "fused": False, "groups": [], "reason": ""}
        info["arms"] += len(arms)
        models[model] = info
        def alone(why: str, arms: list[Arm] = arms) -> None:
            # Arms of this option set train one per task; the model's summary says how many and why.
            info["reason"] = why
            info["alone"] = info.get("alone", 0) + len(arms)
            tasks.extend(ArmTask(a, config) for a in arms)

        if fuse == "off" or len(arms) < 2:
            alone("--fuse off" if fuse == "off" else "a single arm with these options")
            continue
        cond = bool(generative.MODELS.get(model).make_config(opts).conditional)
        speedup = None
        if fuse == "auto" and not str(config.device).startswith("cuda"):
            speedup = fusion_speedup(model, pool.shape, n_classes if cond else 0, config.batch_size, opts,
                                     config.device, config.threads, members=min(4, len(arms)))
            if speedup < MIN_SPEEDUP:
                alone(f"fusion measured {speedup:.2f}x, below {MIN_SPEEDUP}x, on this CPU")
                continue
        per = member_bytes(model, pool.shape, n_classes if cond else 0, config.batch_size, opts)
        fit = max(1, int(budget // max(per, 1)))
        if fit < 2:
            alone(f"one member needs ~{per / 2**20:.0f} MiB of a {budget / 2**20:.0f} MiB budget")
            continue
        if speedup is not None:  # the estimate divides fused training by it: keep the least favourable
            info["speedup"] = min(speedup, info.get("speedup", speedup))
        cap = MAX_MEMBERS["cuda" if str(config.device).startswith("cuda") else "cpu"]
        size = min(cap, fit, max(1, math.ceil(len(arms) / max(workers, 1))))
        n_groups = math.ceil(len(arms) / size)
        bounds = np.linspace(0, len(arms), n_groups + 1).round().astype(int)  # even sizes
        info["fused"] = True
        info["member_mib"] = round(per / 2**20, 1)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            group = tuple(arms[lo:hi])
            if len(group) == 1:
                alone("a group of one", [group[0]])
                continue
            tasks.append(GroupTask(group, config, None if work_dir is None else str(work_dir)))
            info["groups"].append(len(group))
    return TrainingPlan(tasks, models)
