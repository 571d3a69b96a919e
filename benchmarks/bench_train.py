"""Training speed: generative's trainer against a reference loop written the pytorch/examples way
(a DataLoader over a TensorDataset, shuffle=True, drop_last, num_workers=0; D on real and on fake
in two passes; BCE with label tensors; G step reusing the D step's fakes), with the same networks
(same architecture, parameters and init), batch size and number of steps, measured side by side in one
run. The reference's generator upsamples the stock way (interpolate, then conv2d); ours uses the fused
``generative.nets.upsample_conv`` (same function up to rounding). ``--ref-fused`` gives the reference
the fused layer too, which isolates what the training loop alone gains.

    python benchmarks/bench_train.py [--device cpu|cuda] [--models dcgan,vae] [--size 8] [--steps 300]

Prints steps/s for both and the ratio (median and best of --repeats runs each, interleaved; the
machine may be shared, so the runs are interleaved to see the same load, and the load average is
printed); "CPU s ratio" is the reference's process CPU seconds over those of our whole call
(medians), which other processes on a shared machine disturb less than wall time. On CUDA our trainer uses its defaults (bf16 autocast, channels_last); pass --amp off to
compare at fp32. For models whose defaults keep an EMA of the generator (dcgan: 0.999) our trainer is
also run with ``ema=0`` ("ours, EMA off"), the apples-to-apples figure: the reference keeps no EMA.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import datacheck
import generative
from generative.trainer import build_for


def ref_model(name: str, data: datacheck.Dataset, stock: bool):
    """The reference's networks: the same architecture, parameters and initial weights as ours. With
    ``stock`` the generator/decoder upsamples the pytorch/examples way (``F.interpolate`` then
    ``conv2d``) instead of our fused ``generative.nets.upsample_conv``; the functions are equal up to
    float rounding."""
    from generative.nets import Generator

    model = build_for(name, data, seed=0)
    for net in model.nets.values():
        if isinstance(net, Generator):
            net.fused_upsample = not stock
    return model


def make_data(size: int, channels: int) -> datacheck.Dataset:
    """Digits, nearest-upscaled to ``size`` (a multiple of 8) and repeated to ``channels``."""
    d = datacheck.load("digits")
    if size == 8 and channels == 1:
        return d
    f = size // 8
    imgs = d.images.repeat(f, axis=2).repeat(f, axis=3).repeat(channels, axis=1)
    return d.replace(images=np.ascontiguousarray(imgs), source=f"digits-{size}px-{channels}ch")


def _loader(x: torch.Tensor, data: datacheck.Dataset, batch: int) -> DataLoader:
    return DataLoader(TensorDataset(x, torch.from_numpy(data.labels)), batch_size=batch, shuffle=True,
                      drop_last=True, num_workers=0)


def _batches(loader: DataLoader, steps: int, device: str):
    """The examples' epoch loop: each batch moved to the device, epoch after epoch, ``steps`` in all."""
    step = 0
    while True:
        for real, _ in loader:
            yield real.to(device)
            step += 1
            if step == steps:
                return


def _elapsed(t: float, c: float, device: str) -> tuple[float, float]:
    """(wall, process CPU) seconds since (t, c), after the device's queued work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t, time.process_time() - c


def reference_gan(model, data: datacheck.Dataset, steps: int, batch: int, device: str) -> tuple[float, float]:
    """The pytorch/examples DCGAN loop; returns (wall, process CPU) seconds for ``steps`` steps."""
    G, D = model.nets["G"].to(device), model.nets["D"].to(device)
    cfg = model.config
    optD = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    optG = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    loader = _loader(torch.from_numpy(data.images).float() / 127.5 - 1.0, data, batch)
    criterion = torch.nn.BCEWithLogitsLoss()
    t, c = time.perf_counter(), time.process_time()
    for real in _batches(loader, steps, device):
        b = real.size(0)
        D.zero_grad()
        label = torch.full((b,), 1.0, device=device)
        err_real = criterion(D(real).view(-1), label)
        err_real.backward()
        noise = torch.randn(b, cfg.z_dim, device=device)
        fake = G(noise)
        label.fill_(0.0)
        err_fake = criterion(D(fake.detach()).view(-1), label)
        err_fake.backward()
        optD.step()
        G.zero_grad()
        label.fill_(1.0)
        err_g = criterion(D(fake).view(-1), label)
        err_g.backward()
        optG.step()
        _ = (err_real + err_fake).item(), err_g.item()  # the examples print these every step
    return _elapsed(t, c, device)


def reference_vae(model, data: datacheck.Dataset, steps: int, batch: int, device: str) -> tuple[float, float]:
    """The pytorch/examples VAE loop (BCE summed + KL) on the same encoder/decoder."""
    enc, dec = model.nets["enc"].to(device), model.nets["dec"].to(device)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=model.config.lr)
    loader = _loader(torch.from_numpy(data.images).float() / 255.0, data, batch)
    t, c = time.perf_counter(), time.process_time()
    for real in _batches(loader, steps, device):
        opt.zero_grad()
        mu, logvar = enc(real).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = torch.sigmoid(dec(z))
        bce = F.binary_cross_entropy(recon, real, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = bce + kld
        loss.backward()
        _ = loss.item()
        opt.step()
    return _elapsed(t, c, device)


def ours(name: str, data: datacheck.Dataset, steps: int, batch: int, device: str, amp: str, root: Path, i: int,
         threads: int, **options: float) -> tuple[float, float, float]:
    """Wall seconds of a whole ``generative.train`` call (model build, data upload, config, final
    checkpoint and sample grid included) and of its training loop alone (from train.jsonl: the
    first step to the last loss read back), which is what the reference's timer covers, and the
    process CPU seconds of the whole call (less sensitive to other processes on a shared machine)."""
    t, c = time.perf_counter(), time.process_time()
    tag = "".join(f"-{k}{v}" for k, v in options.items())
    run = generative.train(model=name, data=data, out=root / f"{name}{tag}-{i}", steps=steps, batch_size=batch,
                           checkpoint_every=0, device=device, amp=amp, log_every=50, threads=threads, **options)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t, float(run.history[-1]["seconds"]), time.process_time() - c


def _load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="dcgan,vae")
    ap.add_argument("--size", type=int, default=8, help="image size (digits upscaled; multiple of 8)")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--amp", default="auto", help="our trainer's bf16 autocast: auto (CUDA only), on, off")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads for both loops (0 = torch's setting, all cores)")
    ap.add_argument("--ref-threads", type=int, default=0,
                    help="threads for the reference loop only (0 = the same as ours); e.g. torch's default "
                         "to compare both loops as shipped")
    ap.add_argument("--ref-fused", action="store_true",
                    help="give the reference our fused upsample+conv too (isolates the training loop's own gain)")
    args = ap.parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    ref_threads = args.ref_threads or threads
    torch.set_num_threads(threads)
    data = make_data(args.size, args.channels)
    refs = {"gan": reference_gan, "vae": reference_vae}
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    print(f"torch {torch.__version__}, device {args.device}, threads ours {threads} / reference {ref_threads}, "
          f"data {data.shape} x {len(data)}, batch {args.batch_size}, steps {args.steps}, reference upsampling "
          f"{'fused (ours)' if args.ref_fused else 'stock (interpolate + conv2d)'}, "
          f"median (best) of {args.repeats}, load average {_load()}")
    print(f"{'model':6} {'variant':12} {'ours loop steps/s':>22} {'ours whole call':>22} {'reference steps/s':>22} "
          f"{'ratio loop':>15} {'ratio whole':>15} {'CPU s ratio':>10}")
    for name in args.models.split(","):
        spec = generative.MODELS.get(name)
        ref = refs[spec.cls.family]
        variants: dict[str, dict[str, float]] = {"defaults": {}}
        if spec.defaults().get("ema", 0.0) > 0:
            variants["EMA off"] = {"ema": 0.0}  # what the reference does
        # Warm-up both paths once (allocator, kernels, lazy init).
        for opts in variants.values():
            ours(name, data, 10, args.batch_size, args.device, args.amp, root, -1, threads, **opts)
        torch.set_num_threads(ref_threads)
        ref(ref_model(name, data, not args.ref_fused), data, 10, args.batch_size, args.device)
        t_ours: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
        t_ref: list[tuple[float, float]] = []
        for i in range(args.repeats):  # interleaved: each repeat runs every loop once
            for v, opts in variants.items():
                t_ours[v].append(ours(name, data, args.steps, args.batch_size, args.device, args.amp, root, i,
                                      threads, **opts))
            torch.set_num_threads(ref_threads)
            t_ref.append(ref(ref_model(name, data, not args.ref_fused), data, args.steps, args.batch_size, args.device))
        ref_wall, ref_cpu = [t[0] for t in t_ref], [t[1] for t in t_ref]
        sr_med, sr_best = args.steps / statistics.median(ref_wall), args.steps / min(ref_wall)
        for v in variants:
            whole = [t[0] for t in t_ours[v]]
            loop = [t[1] for t in t_ours[v]]
            sw_med, sw_best = args.steps / statistics.median(whole), args.steps / min(whole)
            sl_med, sl_best = args.steps / statistics.median(loop), args.steps / min(loop)
            cpu_ratio = statistics.median(ref_cpu) / statistics.median(t[2] for t in t_ours[v])
            print(f"{name:6} {v:12} {sl_med:13.1f} ({sl_best:6.1f}) {sw_med:13.1f} ({sw_best:6.1f}) "
                  f"{sr_med:13.1f} ({sr_best:6.1f}) {sl_med / sr_med:7.2f}x ({sl_best / sr_best:4.2f}x) "
                  f"{sw_med / sr_med:7.2f}x ({sw_best / sr_best:4.2f}x) {cpu_ratio:9.2f}x", flush=True)
    print(f"load average at the end: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
