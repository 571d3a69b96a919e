"""``reports ablate`` and ``reports render`` (added to the ``reports`` parser by reports/cli.py)."""
from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from datacheck.errors import UserError


def add_study_commands(sub: Any) -> None:
    a = sub.add_parser("ablate", help="run a data-ablation study (dataset x factors x levels x models x seeds)",
                       description="Run a data-ablation study; finished arms are skipped, so re-running resumes.")
    a.add_argument("--data", default=None, help="data source (default: the preset's, digits)")
    a.add_argument("--preset", default="quick",
                   help="quick (digits, ~1-2 min on 2 cores), standard (data factors and model tweaks, 6 seeds: "
                        "planned for 60 min on 2 cores or 10 on a GPU) or full")
    a.add_argument("--out", required=True, help="study folder (results.csv, report.html, arms/)")
    a.add_argument("--factors", default=None, help="comma-separated factors (default: the preset's)")
    a.add_argument("--levels", default=None,
                   help="per-factor levels, e.g. 'size=0.5,0.25;corruption=0.3' (default: the preset's)")
    a.add_argument("--models", default=None, help="comma-separated models (default: the preset's)")
    a.add_argument("--seeds", type=int, default=None, help="number of seeds, 0..N-1 (default: the preset's)")
    a.add_argument("--steps", type=int, default=None, help="training steps per arm (default: the preset's)")
    a.add_argument("--n-samples", type=int, default=None, help="generated samples per arm (default: the preset's)")
    a.add_argument("--device", default=None, help="training device: cpu (default) or cuda[:N]")
    a.add_argument("--features", default=None,
                   help="feature extractor for every metric: auto (default: classifier for labeled data, else "
                        "random), classifier, random or pixels")
    a.add_argument("--executor", default="local", help="local (default) or ray")
    a.add_argument("--address", default=None,
                   help="Ray cluster address (with --executor ray; default RAY_ADDRESS when set, else a local Ray)")
    a.add_argument("--workers", type=int, default=None,
                   help="local: worker processes, one torch thread each (default: one per CPU core; "
                        "1 = in-process); ray: CPUs of a local Ray instance (default all)")
    a.add_argument("--retry-failed", action="store_true",
                   help="run again the arms that failed before (by default a resume leaves them as failed)")
    a.add_argument("--fuse", default="auto", choices=("auto", "on", "off"),
                   help="train arms that share model, options and image shape as fused groups (one job each): "
                        "auto (default) where a short probe measures it faster on this device, on, or off")
    a.add_argument("--dry-run", action="store_true",
                   help="print the grid, how the arms would train (fused groups) and a measured time estimate; "
                        "train nothing")
    a.set_defaults(func=cmd_ablate)

    r = sub.add_parser("render", help="rebuild STUDY/report.html from STUDY/results.csv")
    r.add_argument("study", help="study folder")
    r.set_defaults(func=cmd_render)


def _csv(s: str | None, what: str) -> tuple[str, ...] | None:
    if s is None:
        return None
    items = tuple(x.strip() for x in s.split(",") if x.strip())
    if not items:
        raise UserError(f"--{what} needs a comma-separated list, got {s!r}")
    return items


def _levels(s: str | None) -> dict[str, tuple[float, ...]] | None:
    if s is None:
        return None
    out: dict[str, tuple[float, ...]] = {}
    for part in s.split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise UserError(f"--levels expects 'factor=l1,l2;factor=l3', got {part!r}")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = tuple(float(x) for x in v.split(",") if x.strip())
        except ValueError:
            raise UserError(f"--levels: levels must be numbers, got {v!r}") from None
    return out


def config_from_args(args: argparse.Namespace) -> Any:
    from .study import PRESETS, STUDY_FEATURES, preset

    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; expected one of: {', '.join(PRESETS)}")
    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    features = getattr(args, "features", None)
    if features is not None and features not in STUDY_FEATURES:
        raise UserError(f"unknown --features {features!r}; expected one of: {', '.join(STUDY_FEATURES)}"
                        + (" (inception needs a weights file, which a study does not take)" if features == "inception" else ""))
    base = PRESETS[args.preset]
    levels = dict(base.get("levels", {}))
    levels.update(_levels(args.levels) or {})
    return preset(
        args.preset,
        data=args.data,
        factors=_csv(args.factors, "factors"),
        models=_csv(args.models, "models"),
        seeds=tuple(range(args.seeds)) if args.seeds is not None else None,
        steps=args.steps,
        n_samples=args.n_samples,
        levels=levels,
        device=args.device,
        features=features,
    )


def _check_models(models: tuple[str, ...]) -> None:
    import generative

    for m in models:
        generative.MODELS.get(m)  # unknown -> UserError listing the models


def canonical_command(args: argparse.Namespace, cfg: Any) -> str:
    parts = ["reports", "ablate", "--preset", args.preset, "--data", cfg.data, "--out", args.out]
    for flag, val in (("--factors", args.factors), ("--levels", args.levels), ("--models", args.models),
                      ("--seeds", args.seeds), ("--steps", args.steps), ("--n-samples", args.n_samples),
                      ("--device", args.device), ("--features", getattr(args, "features", None))):
        if val is not None:
            parts += [flag, str(val)]
    if args.executor != "local":
        parts += ["--executor", args.executor]
    if getattr(args, "fuse", "auto") != "auto":
        parts += ["--fuse", args.fuse]
    return " ".join(shlex.quote(p) for p in parts)


def cmd_ablate(args: argparse.Namespace) -> int:
    from .executors import make_executor
    from .fusion import plan_training
    from .runner import executor_slots, run_study
    from .estimate import describe_grid, estimate
    from .store import plan
    from .study import prepare_data, resolve_features

    cfg = config_from_args(args)
    _check_models(cfg.models)
    executor = make_executor(args.executor, workers=args.workers, address=args.address)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if args.dry_run:
        pl = plan(cfg, out)
        print(describe_grid(pl))
        if not pl.todo:
            print("nothing to run: every arm is finished")
            return 0
        print("measuring a short probe for the time estimate ...", flush=True)
        workers = executor_slots(executor)
        data = prepare_data(cfg)
        training = plan_training(resolve_features(cfg, data), pl.todo, data.pool, fuse=args.fuse, workers=workers)
        print(training.describe())
        speedups = {m: d["speedup"] for m, d in training.models.items() if d["fused"] and d.get("speedup")}
        est = estimate(cfg, pl.todo, workers=workers, data=data, speedups=speedups)
        steps = ", ".join(f"{m} {est['steps'][m]} steps x {est['step_seconds'][m] * 1000:.1f} ms "
                          f"+ {est['run_overhead_seconds'][m]:.1f} s per run" for m in est["step_seconds"])
        fused = "; fused arms' training divided by their measured speedup" if speedups else ""
        print(f"estimate: {est['seconds'] / 60:.1f} min for {est['arms']} arms on {workers} worker(s) "
              f"({steps}; sampling + evaluation {est['eval_seconds']:.1f} s per arm; "
              f"one-off setup {est['setup_seconds']:.1f} s{fused})")
        from .study import PRESET_PLANS

        kind = "cuda" if str(cfg.device).startswith("cuda") else "cpu"
        planned = PRESET_PLANS.get(args.preset, {})
        if planned:
            where = {"cpu": "CPU", "cuda": "GPU"}
            plans = " or ".join(f"{v / 60:g} min on {'2 CPU cores' if k == 'cpu' else 'one GPU'}" for k, v in planned.items())
            if kind in planned:
                verdict = "within" if est["seconds"] <= planned[kind] else "over"
                print(f"plan: the {args.preset} preset is planned for {plans}; this {where[kind]} estimate is "
                      f"{verdict} its plan")
            else:
                print(f"plan: the {args.preset} preset is planned for {plans}, not for this device")
        return 0
    restore = _sigterm_interrupts()
    t0 = time.perf_counter()
    try:
        df = run_study(cfg, out, executor=executor, command=canonical_command(args, cfg),
                       on_progress=lambda s: print(s, flush=True), fuse=args.fuse,
                       retry_failed=args.retry_failed)
    finally:
        restore()
    print(f"{len(df)} arms in {out / 'results.csv'} ({time.perf_counter() - t0:.0f} s)")
    from .store import failed_arms, finished_arms

    bad = failed_arms(finished_arms(out))
    if bad:
        print(f"{len(bad)} arm(s) failed and are listed in the report: {', '.join(sorted(bad))} "
              "(--retry-failed runs them again)")
    print(f"report: {out / 'report.html'}")
    return 0


def _sigterm_interrupts() -> Any:
    """Treat SIGTERM like Ctrl-C while a study runs, so a killed study stops its worker processes
    (finished arms stay saved). Returns a function that restores the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, old)


def cmd_render(args: argparse.Namespace) -> int:
    from .study_html import render_study

    path = render_study(args.study)
    print(f"report: {path}")
    return 0
