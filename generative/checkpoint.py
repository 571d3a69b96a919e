"""Checkpoints: one ``torch.save`` dict of tensors and primitives only, so it loads with
``torch.load(weights_only=True)``; written atomically (temp file + rename).

Layout (``format`` = "generative-checkpoint", ``version`` = 1): step, model name, model config,
train config, data description, model state (networks, EMA copy, optimizers), the batch sampler's
position and generator state, and the noise generator's state (``rng.noise``). Checkpoints written
before this layout also hold ``rng.global`` (the process's global RNG states); it is ignored: the
trainer draws nothing from the global RNGs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from datacheck.errors import UserError
from datacheck.io import atomic_path

FORMAT = "generative-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> None:
    """Write ``ckpt`` to ``path`` atomically: a kill at any moment leaves the old or the new file."""
    ckpt = {"format": FORMAT, "version": VERSION, **ckpt}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` onto the CPU; anything else -> one-line UserError."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.exists():
        raise UserError(f"{p}: no such checkpoint; expected a run folder with {CHECKPOINT_NAME} or a .pt file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for foreign bytes (UnpicklingError, IndexError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{p} is not a generative checkpoint (could not read it as one: {first[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{p} is not a generative checkpoint (a torch file without format={FORMAT!r})")
    if ckpt.get("version") != VERSION:
        raise UserError(f"{p}: checkpoint version {ckpt.get('version')} is not supported (expected {VERSION})")
    return ckpt
