"""Fused population training against one process per arm, on the same cores, side by side in one run.

For each model, image size and population size M, two ways to train M arms on ``--workers`` cores:

- solo: ``--workers`` processes at a time, one torch thread each, each training one arm with the
  model's own ``train_step`` (the study's ``--fuse off``);
- fused: ``--workers`` processes, one thread each, each training M / workers arms as one fused group
  (:mod:`generative.population`'s fused step; the study's ``--fuse on``).

Both run the same networks (the study's CPU width rule: width x side <= 128, at least 8), batch size
and data shape; each process times ``--steps`` steps after one warm-up step. Prints arm-steps per
second for both and the ratio (fused / solo: above 1, fusion is faster on these cores).

    python benchmarks/bench_fused.py [--models cgan,cvae] [--sizes 8,16,32] [--members 1,4,16,64]
                                     [--workers 2] [--steps 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
import time

import torch


def _rate(kind: str, model: str, size: int, channels: int, members: int, steps: int, device: str,
          threads: int) -> float:
    """Arm-steps per second of ``members`` arms trained ``kind`` ("solo": one after another, as a
    process per arm would; "fused": one group) in this process."""
    torch.set_num_threads(threads)
    import generative
    from generative.population import fused_model
    from reports.study import StudyConfig

    shape = (channels, size, size)
    width = StudyConfig(width="cpu").widths(shape)
    opts = {"g_width": width, "d_width": width}
    k = 10 if model in ("cgan", "cvae") else 0
    spec = generative.MODELS.get(model)
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        models = [spec.build(shape, k, tuple(map(str, range(k))), opts).to(dev)
                  for _ in range(members if kind == "fused" else 1)]
    b = 64 * models[0].batches_per_step
    g = torch.Generator().manual_seed(0)
    m = len(models)
    x = models[0].to_float(torch.randint(0, 256, (b, m, *shape), dtype=torch.uint8, generator=g).to(dev))
    y = (torch.arange(b * m) % max(k, 1)).view(m, b).to(dev)
    gens = [torch.Generator(device=dev).manual_seed(i) for i in range(m)]
    if kind == "fused":
        fm = fused_model(models, dev)

        def step() -> None:
            fm.step(x, y, gens)
            fm.update_ema()
    else:
        xs, ys = x[:, 0].contiguous(), y[0]

        def step() -> None:
            models[0].train_step(xs, ys, gens[0])

    step()  # warm-up
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return m * steps / (time.perf_counter() - t)


def measure(kind: str, model: str, size: int, channels: int, members: int, workers: int, steps: int,
            device: str) -> float:
    """Arm-steps per second of M arms on ``workers`` processes (one thread each)."""
    ctx = mp.get_context("spawn")
    per = max(1, members // workers) if kind == "fused" else 1
    procs = min(workers, members)
    with cf.ProcessPoolExecutor(procs, mp_context=ctx) as ex:
        futs = [ex.submit(_rate, kind, model, size, channels, per, steps, device, 1) for _ in range(procs)]
        return sum(f.result() for f in futs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cgan,cvae")
    ap.add_argument("--sizes", default="8,16,32")
    ap.add_argument("--members", default="1,4,16,64")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {args.workers} worker process(es) x 1 thread, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':<6} {'px':>3} {'M':>4} {'solo arm-steps/s':>17} {'fused arm-steps/s':>18} {'fused/solo':>10}")
    for model in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            channels = 1 if size == 8 else 3
            for members in (int(m) for m in args.members.split(",")):
                steps = max(2, args.steps if size < 32 or members < 16 else args.steps // 2)
                solo = measure("solo", model, size, channels, members, args.workers, args.steps, args.device)
                fused = measure("fused", model, size, channels, members, args.workers, steps, args.device)
                print(f"{model:<6} {size:>3} {members:>4} {solo:>17.1f} {fused:>18.1f} {fused / solo:>10.2f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
