"""``datacheck audit`` at real sizes: peak memory and CPU time per image on a folder of large JPEGs,
side by side with fastdup when it is installed (benchmark-only; never a project dependency).

Usage: python benchmarks/bench_audit_scale.py [--n 1000] [--side 1024] [--format jpg|png] [--dir DIR]
       [--fastdup PYTHON] [--stream on|auto|off] [--reaudit PCT] [--kill-resume] [--neighbors auto|exact|approx]

The million-small-images goal (issue #20): ``--side 32 --format png --n 100000 --kill-resume --reaudit 1``
makes N 32x32 PNGs (planted dark images, byte copies, brightened near copies, truncated files), audits
them, then audits again into a second folder, kills it (SIGKILL to its process group) at a random point
and resumes it, and checks that the resumed findings.csv is identical to the uninterrupted one.

Makes (or reuses, when ``--dir`` already holds the same set) N photo-like JPEGs of SIDE x SIDE: smooth
random colour fields at a random scale plus fine texture, deterministic from ``--seed``, with planted
issues: every 97th image dark, one exact byte copy per 200 images, one truncated file per 500. Runs
``python -m datacheck audit DIR --out OUT`` in a subprocess and measures its peak resident memory (the
whole process tree, polled from /proc every 0.1 s, and the largest single process from
getrusage(RUSAGE_CHILDREN)) and its CPU time (user + system of every process it waited for), checks
that the planted issues are in findings.csv, and prints one summary line. With ``--fastdup PYTHON``
(a Python that has fastdup, e.g. /root/.cache/fastdup-venv/bin/python) fastdup runs on the same folder
the same way and the line ends with the CPU and memory ratios. With ``--reaudit 1`` it then adds 1% new
files, audits into the same output folder again (only the new files are measured; the rest come from the
store's cache) and reports that run's CPU time against the first.
"""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

DARK_EVERY, COPY_EVERY, TRUNC_EVERY, NEAR_EVERY = 97, 200, 500, 300
EXT = ".jpg"  # --format


def photo(seed: int, side: int) -> np.ndarray:
    """A photo-like uint8 (side, side, 3) image: a smooth colour field at a random scale, a gradient
    and fine texture."""
    rng = np.random.default_rng(seed)
    cells = int(rng.integers(3, 40))
    small = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
    a = np.asarray(Image.fromarray(small).resize((side, side), Image.BICUBIC), np.int16)
    ramp = np.linspace(-40, 40, side, dtype=np.float32)
    a = a + (ramp[:, None, None] * rng.uniform(-1, 1)).astype(np.int16)
    a = a + rng.integers(-6, 7, (side, side, 1), dtype=np.int16)
    return np.clip(a, 0, 255).astype(np.uint8)


def _make_one(args: tuple[str, int, int]) -> None:
    path, seed, side = args
    a = photo(seed, side)
    if (seed % DARK_EVERY) == 5:
        a = (a.astype(np.uint16) * 30 // 255).astype(np.uint8)  # dark: at most 30 of 255
    _save(a, path)


def _save(a: np.ndarray, path: str) -> None:
    if path.endswith(".png"):
        Image.fromarray(a).save(path)
    else:
        Image.fromarray(a).save(path, quality=88)


def _make_near(args: tuple[str, str]) -> None:
    """A near copy: brightness and contrast changed (the verifier's correlation ignores both)."""
    src, dst = args
    a = np.asarray(Image.open(src).convert("RGB"), np.float32)
    _save(np.clip(a * 1.08 + 6, 0, 255).astype(np.uint8), dst)


def make_folder(d: Path, n: int, side: int, seed: int) -> dict[str, list[str]]:
    """Write the set into ``d`` (skipped when ``d`` already holds it) and return the planted ids."""
    e = EXT
    planted = {"dark": [f"img{i:07d}{e}" for i in range(n) if ((seed * 1000003 + i) % DARK_EVERY) == 5],
               "exact_duplicate": [f"copy{i:07d}{e}" for i in range(0, n, COPY_EVERY)],
               "near_duplicate": [f"near{i:07d}{e}" for i in range(7, n, NEAR_EVERY)],
               "unreadable": [f"trunc{i:07d}{e}" for i in range(1, n, TRUNC_EVERY)]}
    marker = d / ".bench.json"
    want = {"n": n, "side": side, "seed": seed, "ext": e}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return planted
    d.mkdir(parents=True, exist_ok=True)
    jobs = [(str(d / f"img{i:07d}{e}"), seed * 1000003 + i, side) for i in range(n)]
    with mp.get_context("fork").Pool(max(1, len(os.sched_getaffinity(0)))) as pool:
        pool.map(_make_one, jobs, chunksize=64)
        pool.map(_make_near, [(str(d / name.replace("near", "img")), str(d / name)) for name in planted["near_duplicate"]],
                 chunksize=64)
    for name in planted["exact_duplicate"]:
        (d / name).write_bytes((d / name.replace("copy", "img")).read_bytes())
    for name in planted["unreadable"]:
        data = (d / name.replace("trunc", "img")).read_bytes()
        (d / name).write_bytes(data[: len(data) // 3])
    marker.write_text(json.dumps(want))
    return planted


def _anon(pid: int) -> int:
    """Anonymous resident bytes of ``pid`` (RssAnon: not file pages, such as the memory-mapped store's,
    which the kernel can drop and read again)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for ln in fh:
                if ln.startswith("RssAnon:"):
                    return int(ln.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _tree_rss(root: int, anon: bool = False) -> int:
    """Resident bytes of ``root`` and all its descendants (from /proc); ``anon``: anonymous pages only."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            parent[int(p)] = int(fields[1])
            rss[int(p)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        kids = [c for c, pp in parent.items() if pp in frontier and c not in tree]
        tree.update(kids)
        frontier = kids
    if anon:
        return sum(_anon(p) for p in tree)
    return sum(rss.get(p, 0) for p in tree)


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``cmd``; its wall time, CPU time (its own and its waited-for descendants'), peak tree RSS and
    the largest single process's peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    peak = [0, 0]

    def poll() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            peak[1] = max(peak[1], _tree_rss(proc.pid, anon=True))
            time.sleep(0.1)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out = proc.communicate()[0].decode(errors="replace")
    th.join()
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{cmd[:4]} failed with exit {proc.returncode}:\n{out[-3000:]}")
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_tree": peak[0], "peak_anon": peak[1], "peak_proc": after.ru_maxrss * 1024, "out": out}  # type: ignore[dict-item]


FASTDUP = """
import sys, fastdup
fd = fastdup.create(work_dir=sys.argv[2], input_dir=sys.argv[1])
fd.run(num_threads={threads}, overwrite=True, ccthreshold=0.9)
stats = fd.img_stats()
print("FASTDUP_DARK", int((stats["mean"] < 40).sum()))
print("FASTDUP_INVALID", len(fd.invalid_instances()))
"""


def kill_and_resume(cmd: list[str], out: Path, out2: Path, n_files: int, seed: int) -> str:
    """Audit into ``out2``, SIGKILL the whole process group at a random point of the measuring stage
    (once a random number of the run's 512-file cache segments, between 1 and 80% of them, is written),
    audit again into ``out2`` and compare findings.csv with ``out``'s."""
    import signal

    cmd2 = [c if c != str(out) else str(out2) for c in cmd]
    n_seg = max(1, n_files // 512)
    target = int(np.random.default_rng(seed + 1).integers(1, max(2, int(0.8 * n_seg) + 1)))
    proc = subprocess.Popen(cmd2, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t = time.perf_counter()
    segs = 0
    while proc.poll() is None and segs < target:
        time.sleep(0.05)
        segs = len([p for p in (out2 / "store" / "cache").glob("seg-*") if not p.name.endswith(".tmp")])
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)  # the audit and its measuring workers, as a kill -9 would
    proc.wait()
    t_kill = time.perf_counter() - t
    r = measure(cmd2)
    same = (out / "findings.csv").read_bytes() == (out2 / "findings.csv").read_bytes()
    return (f"killed after {t_kill:.0f} s, {segs} of ~{n_seg} cache segments of 512 files written"
            if killed else "finished before the kill") + (f"; resumed in wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s; "
            f"findings identical to the uninterrupted run: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--format", default="jpg", choices=("jpg", "png"))
    ap.add_argument("--kill-resume", action="store_true", help="also audit into a second folder, SIGKILL it at a "
                    "random point, resume it, and compare its findings with the uninterrupted run's")
    ap.add_argument("--neighbors", default="auto", choices=("auto", "exact", "approx"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", help="folder for the images (reused when it holds the same set; default: a temp dir)")
    ap.add_argument("--stream", default="on", choices=("on", "auto", "off"))
    ap.add_argument("--fastdup", metavar="PYTHON", help="a Python with fastdup installed, to run it side by side")
    ap.add_argument("--reaudit", type=float, metavar="PCT", help="then add PCT%% new files, audit into the same "
                    "--out again and report its cost against the first run (the new files are removed after)")
    a = ap.parse_args()
    global EXT
    EXT = "." + a.format
    threads = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(a.dir) if a.dir else Path(tmp) / "images"
        t = time.perf_counter()
        planted = make_folder(d, a.n, a.side, a.seed)
        made = time.perf_counter() - t
        n_files = a.n + sum(len(planted[k]) for k in ("exact_duplicate", "near_duplicate", "unreadable"))
        out = Path(tmp) / "audit"
        cmd = [sys.executable, "-m", "datacheck", "audit", str(d), "--out", str(out), "--stream", a.stream,
               "--neighbors", a.neighbors]
        r = measure(cmd)
        with open(out / "findings.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        found = {k: {row["id"] for row in rows if row["check"] == k} for k in planted}
        got = {k: sum(p in found[k] for p in v) for k, v in planted.items()}
        summary = json.loads((out / "summary.json").read_text())
        timings = {k: v.get("seconds") for k, v in summary["checks"].items() if (v.get("seconds") or 0) > 1}
        line = (f"n={n_files} files {a.side}px {a.format} (made in {made:.0f} s) | datacheck audit --stream {a.stream}: "
                f"wall {r['wall']:.1f} s, CPU {1000 * r['cpu'] / n_files:.1f} ms/image, "
                f"peak RSS tree {r['peak_tree'] / 2**20:.0f} MB (anonymous {r['peak_anon'] / 2**20:.0f} MB; "
                f"largest process {r['peak_proc'] / 2**20:.0f} MB); "
                + ", ".join(f"{k} {got[k]}/{len(v)}" for k, v in planted.items())
                + f"; checks over 1 s: {timings}; neighbours: {summary.get('neighbors')}")
        if a.kill_resume:
            line += " | " + kill_and_resume(cmd, out, Path(tmp) / "audit2", n_files, a.seed)
        if a.fastdup:
            script = Path(tmp) / "fd.py"
            script.write_text(FASTDUP.format(threads=threads))
            env = {**os.environ, "SENTRY_OPT_OUT": "1"}
            f = measure([a.fastdup, str(script), str(d), str(Path(tmp) / "fdwork")], env=env)
            fd_dark = next((ln.split()[1] for ln in str(f["out"]).splitlines() if ln.startswith("FASTDUP_DARK")), "?")
            fd_bad = next((ln.split()[1] for ln in str(f["out"]).splitlines() if ln.startswith("FASTDUP_INVALID")), "?")
            line += (f" | fastdup: wall {f['wall']:.1f} s, CPU {1000 * f['cpu'] / n_files:.1f} ms/image, "
                     f"peak RSS tree {f['peak_tree'] / 2**20:.0f} MB, mean<40: {fd_dark}, invalid: {fd_bad} | "
                     f"datacheck/fastdup CPU {r['cpu'] / max(f['cpu'], 1e-9):.2f}x, "
                     f"peak RSS {r['peak_tree'] / max(f['peak_tree'], 1):.2f}x")
        elif a.fastdup is None:
            line += " | fastdup: not run (pass --fastdup PYTHON)"
        if a.reaudit:
            k = max(1, round(a.n * a.reaudit / 100))
            added = [d / f"new{i:06d}.jpg" for i in range(k)]
            try:
                for i, path in enumerate(added):
                    _make_one((str(path), 10**9 + a.seed * 1000003 + i, a.side))
                r2 = measure(cmd)
            finally:
                for path in added:
                    path.unlink(missing_ok=True)
            s2 = json.loads((out / "summary.json").read_text())
            line += (f" | re-audit after adding {k} files ({a.reaudit:g}%): wall {r2['wall']:.1f} s, "
                     f"CPU {r2['cpu']:.1f} s = {100 * r2['cpu'] / max(r['cpu'], 1e-9):.1f}% of the first run's, "
                     f"peak RSS tree {r2['peak_tree'] / 2**20:.0f} MB (anonymous {r2['peak_anon'] / 2**20:.0f} MB); "
                     f"checks over 1 s: { {c: v.get('seconds') for c, v in s2['checks'].items() if (v.get('seconds') or 0) > 1} }; "
                     f"near_duplicate {s2['checks'].get('near_duplicate', {}).get('seconds')} s; "
                     f"neighbours: {s2.get('neighbors')}")
        print(line)


if __name__ == "__main__":
    main()
