"""Chaos run: a fused study of mixed step counts under repeated random SIGKILLs, resumed until it ends.

What it does, for each executor asked for (a local process pool, a local Ray instance):

1. runs the study once uninterrupted (the reference) and times it (T);
2. single kills: ``--points`` times, runs the study in a fresh folder, sends one SIGKILL at a random
   moment (uniform over 5-95% of T) to the driver or to one of its worker processes (chosen at random),
   and runs the same command again until it exits 0;
3. chaos: runs the study once more and sends SIGKILL again and again (each uniform over ``--span``,
   default 3-15%, of T after the driver's start or the last kill) to the driver or a worker; a killed driver is started
   again with the same command, as an operator would, until it exits 0, with at most ``--kills`` kills;
4. compares, for every run of 2 and 3: every arm's result.json (metrics, rows, manifests; timings aside) and results.csv (timing
   columns aside) with the reference's, bitwise; that each arm was trained to its end once
   (``STUDY/logs/training.jsonl``: one ``ended`` event per arm, however often it resumed); that
   STUDY/work is gone, no cut temp file is left anywhere in STUDY and the lock is released; and which
   processes outlived a killed driver.

The study: vae on digits, factors steps (0.5x, 2x) and size (0.5), 2 seeds, ``--fuse on`` and 2 workers,
so each worker trains a fused group whose members stop at three different steps.

    python benchmarks/chaos_study.py [--executors local,ray] [--points 10] [--kills 10] [--steps 1500]
                                     [--span 0.03,0.15] [--seed 0] [--out DIR] [--limit-s 1500]

Prints one line per run and writes DIR/chaos.json. Exits 1 when anything was lost.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMINGS = {"train_seconds", "eval_seconds", "seconds"}


def study_command(out: Path, executor: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "reports", "ablate", "--data", "digits", "--factors", "steps,size",
            "--levels", "steps=0.5,2;size=0.5", "--models", "vae", "--seeds", "2", "--steps", str(steps),
            "--n-samples", "60", "--fuse", "on", "--workers", "2", "--executor", executor, "--out", str(out)]


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc; no psutil needed)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def workers_of(driver: int, executor: str) -> list[int]:
    """The processes that train arms: the pool's spawned workers, or Ray's task workers."""
    procs = descendants(driver)
    if executor == "local":
        return [p for p in procs if "multiprocessing" in cmdline(p) and "spawn_main" in cmdline(p)]
    # a local Ray instance: the workers running a study task name themselves after it; Ray's own agents
    # ("ray::DashboardAgent", ...) are not workers (the raylet dies with them: a node failure, not a kill)
    return [p for p in all_pids() if cmdline(p).startswith("ray::_ray_run_task")]


def arm_docs(study: Path) -> dict[str, dict]:
    out = {}
    for p in sorted((study / "arms").glob("*/result.json")):
        doc = json.loads(p.read_text())
        if "row" in doc:
            doc["row"] = {k: v for k, v in doc["row"].items() if k not in TIMINGS}
        if "metrics" in doc:
            doc["metrics"] = {k: v for k, v in doc["metrics"].items() if k not in TIMINGS}
        doc.pop("provenance", None)
        out[p.parent.name] = doc
    for p in sorted((study / "arms").glob("*/manifest.json")):
        out[p.parent.name + "/manifest"] = json.loads(p.read_text())
    return out


def results_table(study: Path) -> list[dict]:
    import csv

    with open(study / "results.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k not in TIMINGS} for row in csv.DictReader(fh)]


def run_reference(out: Path, executor: str, steps: int, env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run(study_command(out, executor, steps), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the uninterrupted {executor} study failed:\n{proc.stdout[-3000:]}")
    return time.perf_counter() - t


def chaos(out: Path, executor: str, steps: int, env: dict, kills: int, ref_s: float, rng: random.Random,
          limit_s: float, span: tuple[float, float]) -> dict:
    """Run the study, killing it up to ``kills`` times, each at a moment uniform over ``span`` x T after the
    driver's start or the last kill; restart the driver after each driver kill, until it exits 0."""
    log: list[dict] = []
    leftovers: list[str] = []
    starts = 0
    t_end = time.monotonic() + limit_s
    while True:
        if time.monotonic() > t_end:
            return {"completed": False, "kills": log, "starts": starts, "leftover_processes": leftovers}
        starts += 1
        logf = open(out.parent / f"{out.name}-driver{starts}.log", "w")
        before = set(all_pids())
        drv = subprocess.Popen(study_command(out, executor, steps), env=env, stdout=logf, stderr=subprocess.STDOUT,
                               start_new_session=True)
        t0 = time.monotonic()
        while drv.poll() is None:
            if len(log) < kills:
                # the next kill: a random moment of a typical run's span, counted from this start
                at = t0 + rng.uniform(*span) * ref_s
                while drv.poll() is None and time.monotonic() < at:
                    time.sleep(0.05)
                if drv.poll() is not None:
                    break
                ws = workers_of(drv.pid, executor)
                target = "driver" if not ws or rng.random() < 0.5 else "worker"
                pid = drv.pid if target == "driver" else rng.choice(ws)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                log.append({"start": starts, "target": target, "after_s": round(time.monotonic() - t0, 2)})
                if target == "driver":
                    drv.wait()
                    time.sleep(3.0)  # what outlives a killed driver (its workers get SIGTERM from the kernel)
                    # the driver's session (its pool's workers, re-parented), or Ray's own processes
                    alive = [p for p in all_pids() if p not in before and p != os.getpid()
                             and (session_of(p) == drv.pid or "ray" in cmdline(p).replace(sys.executable, ""))]
                    leftovers += [cmdline(p)[-120:] for p in alive]
                    for p in alive:  # do not let them hold the cores for the next start
                        try:
                            os.kill(p, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    break
                t0 = time.monotonic()  # the next kill counts from this one
            else:
                time.sleep(0.2)
                if time.monotonic() > t_end:
                    os.killpg(drv.pid, signal.SIGKILL)
                    break
        logf.close()
        if drv.poll() == 0:
            return {"completed": True, "kills": log, "starts": starts, "leftover_processes": leftovers}
        if drv.poll() not in (None, -signal.SIGKILL):
            log.append({"start": starts, "target": "exit", "code": drv.poll()})  # gave up (e.g. a worker died 3x)


def session_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[4])
    except (OSError, IndexError, ValueError):
        return None


def all_pids() -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]


def check(study: Path, ref: Path) -> dict:
    events = []
    jpath = study / "logs" / "training.jsonl"
    if jpath.exists():
        events = [json.loads(line) for line in jpath.read_text().splitlines()]
    ended: dict[str, int] = {}
    for e in events:
        if e["event"] == "ended":
            ended[e["member"]] = ended.get(e["member"], 0) + 1
    a, b = arm_docs(study), arm_docs(ref)
    arms = sorted(k for k in b if "/" not in k)
    temps = sorted(str(p.relative_to(study)) for p in study.rglob("*.tmp"))
    work = study / "work"
    return {
        "arms": len(arms),
        "arms_equal": sum(a.get(k) == b[k] and a.get(k + "/manifest") == b[k + "/manifest"] for k in arms),
        "results_csv_equal": results_table(study) == results_table(ref),
        "trained_to_end_twice": sorted(k for k, n in ended.items() if n > 1),
        "never_ended": sorted(k for k in arms if k not in ended),
        "resumes": sum(e["event"] == "resume" for e in events),
        "work_left": sorted(str(p.relative_to(study)) for p in work.rglob("*")) if work.exists() else [],
        "temp_files_left": temps,
        "lock_left": (study / ".lock").exists(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--points", type=int, default=10, help="single-kill runs")
    ap.add_argument("--kills", type=int, default=10, help="kills of the chaos run")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--span", default="0.03,0.15", help="the chaos run's kill spacing, as fractions of T")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--limit-s", type=float, default=1500.0, help="give up on one executor's chaos run after this")
    args = ap.parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="dm-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "DATAMATTERS_CACHE": str(root / "cache")}
    rng = random.Random(args.seed)
    report: dict = {"command": " ".join(["python", "benchmarks/chaos_study.py", *(argv or sys.argv[1:])])}
    ok = True
    for executor in args.executors.split(","):
        ref = root / f"{executor}-reference"
        ref_s = run_reference(ref, executor, args.steps, env)
        runs = [(f"{executor}-point{k}", 1, (0.05, 0.95)) for k in range(args.points)]
        span = tuple(float(x) for x in args.span.split(","))
        runs.append((f"{executor}-chaos", args.kills, span))
        report[executor] = {"reference_seconds": round(ref_s, 1), "runs": {}}
        for name, kills, span in runs:
            t = time.perf_counter()
            run = chaos(root / name, executor, args.steps, env, kills, ref_s, rng, args.limit_s, span)
            run["seconds"] = round(time.perf_counter() - t, 1)
            got = check(root / name, ref) if run["completed"] else {}
            report[executor]["runs"][name] = {**run, **got}
            ok &= not _lost(run, got)
            print(_line(name, run, got, ref_s), flush=True)
    (root / "chaos.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"details: {root / 'chaos.json'}")
    return 0 if ok else 1


def _lost(run: dict, got: dict) -> bool:
    return bool(not run["completed"] or got["arms_equal"] != got["arms"] or not got["results_csv_equal"]
                or got["trained_to_end_twice"] or got["never_ended"] or got["work_left"] or got["temp_files_left"]
                or got["lock_left"])


def _line(name: str, run: dict, got: dict, ref_s: float) -> str:
    kills = [k for k in run["kills"] if k["target"] in ("driver", "worker")]
    head = (f"{name}: {'completed' if run['completed'] else 'DID NOT COMPLETE'} after {len(kills)} kill(s) "
            f"({sum(k['target'] == 'driver' for k in kills)} of the driver, "
            f"{sum(k['target'] == 'worker' for k in kills)} of a worker, at "
            f"{', '.join(str(k['after_s']) + ' s' for k in kills)}; {run['starts']} driver start(s)) in "
            f"{run['seconds']:.0f} s (uninterrupted {ref_s:.0f} s)")
    if not got:
        return head
    return (head + f"; arms equal to the uninterrupted run: {got['arms_equal']}/{got['arms']}, results.csv equal: "
            f"{got['results_csv_equal']}, arms trained to their end twice: {len(got['trained_to_end_twice'])}, "
            f"group resumes: {got['resumes']}, files left in work: {len(got['work_left'])}, temp files: "
            f"{len(got['temp_files_left'])}, lock left: {got['lock_left']}, processes that outlived a killed "
            f"driver: {len(run['leftover_processes'])}")


if __name__ == "__main__":
    sys.exit(main())
