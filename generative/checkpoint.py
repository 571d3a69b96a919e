"""Checkpoints: one ``torch.save`` dict of tensors and primitives only, so it loads with
``torch.load(weights_only=True)``; written atomically (temp file + rename).

Layout (``format`` = "generative-checkpoint", ``version`` = 1): step, model name, model config,
train config, data description, model state (networks, EMA copy, optimizers), RNG states (torch,
CUDA, numpy, python, the batch sampler's and the noise generator's) and the sampler position.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
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


# ------------------------------------------------------------------------- RNG states
def capture_global_rng() -> dict[str, Any]:
    """torch, CUDA, numpy and python global RNG states as tensors / primitives."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, pstate, gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(pstate, dtype=torch.int64),
                   "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_global_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
