"""Python API: train, load, estimate."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from datacheck.dataset import Dataset
from datacheck.errors import UserError
from datacheck.sources import as_dataset

from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .config import TrainConfig
from .models import GenerativeModel
from .trainer import Run
from .trainer import load_model
from .trainer import train as _train

DEFAULT_BATCH_SIZE = 64


def train(model: str = "dcgan", data: str | os.PathLike | Dataset = "digits", out: str | os.PathLike = "run",
          steps: int | None = None, batch_size: int | None = None, seed: int | None = None,
          checkpoint_every: int = 500, sample_every: int | None = None, log_every: int = 50,
          resume: bool = False, device: str = "cpu", progress: bool = False, compile: bool = False,
          amp: str = "auto", channels_last: str = "auto", threads: int = 0, **options: Any) -> Run:
    """Train ``model`` on ``data`` (a source for `datacheck.load` or a Dataset) into ``out``.

    steps: None = the model's default (`generative.default_steps`). batch_size / seed: None =
    64 / 0 for a new run, the checkpoint's values on resume. sample_every: None = checkpoint_every.
    threads: CPU threads during the run (restored after); 0 = torch's setting (all cores). Use 1 when
        several runs share the machine.
    **options: model options (see ``generative.MODELS.get(name).defaults()``), e.g. ``lr_g=1e-4``,
    ``augment="translation,cutout"``, ``ema=0.999``, ``d_steps=2``, ``beta=0.5``; unknown keys raise
    UserError. Returns a `Run` (``.model``, ``.path``, ``.history``, ``.seconds``).
    """
    ds = as_dataset(data)
    ckpt = Path(out) / CHECKPOINT_NAME
    ck = load_checkpoint(ckpt) if resume and ckpt.exists() else None
    if ck is not None:
        old = ck["train_config"]
        batch_size = old["batch_size"] if batch_size is None else batch_size
        seed = old["seed"] if seed is None else seed
    tcfg = TrainConfig(
        steps=steps, batch_size=DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size),
        seed=0 if seed is None else int(seed), checkpoint_every=int(checkpoint_every),
        sample_every=int(checkpoint_every if sample_every is None else sample_every),
        log_every=int(log_every), device=str(device), amp=amp, channels_last=channels_last,
        compile=bool(compile), progress=bool(progress), threads=int(threads),
    )
    return _train(model, ds, out, tcfg, options, resume=resume, checkpoint=ck)


def load(run: str | os.PathLike, device: str = "cpu") -> GenerativeModel:
    """The trained model of a run folder (or a checkpoint file). ``model.sample(n, generator=...,
    labels=None)`` gives uint8 (N, C, H, W)."""
    if not Path(run).exists():
        raise UserError(f"{run}: no such run folder or checkpoint")
    return load_model(run, device=device)
