"""Dataset sources: detect what the user passed and load it into a :class:`Dataset`.

Each source kind is a loader registered under a name; :func:`load` picks one from the source
string (or ``kind=`` when given explicitly).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .dataset import Dataset
from .errors import UserError
from .registry import Registry

log = logging.getLogger(__name__)

Loader = Callable[..., Dataset]
SOURCES: Registry[Loader] = Registry("source kind")


def detect_kind(source: str) -> str:
    """Name of the source kind for ``source`` (a built-in name or a path)."""
    if source == "digits":
        return "digits"
    p = Path(source)
    if not p.exists():
        raise UserError(f"source {source!r} does not exist; expected 'digits', a folder, a .csv, a .npz, IDX files or CIFAR-10 batches")
    if p.is_dir():
        for kind in ("cifar10", "idx"):
            if kind in SOURCES and _looks_like(kind, p):
                return kind
        return "folder"
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".csv":
        return "csv"
    if "idx" in SOURCES and _looks_like("idx", p):
        return "idx"
    raise UserError(
        f"cannot tell what kind of source {source!r} is; expected 'digits', a folder, a .csv manifest, "
        f"a .npz, MNIST IDX files or a CIFAR-10 batch folder"
    )


def _looks_like(kind: str, p: Path) -> bool:
    probe = getattr(SOURCES.get(kind), "probe", None)
    return bool(probe and probe(p))


def load(source: str | os.PathLike, *, kind: str | None = None, **options: Any) -> Dataset:
    """Load ``source`` into a :class:`Dataset`.

    Args:
        source: ``"digits"``, a folder (first-level subfolders are classes), a CSV manifest with a
            ``path`` column, an ``.npz`` with ``images``, MNIST/Fashion-MNIST IDX files or a CIFAR-10
            python batch folder.
        kind: force a source kind instead of detecting it.
        **options: loader options, e.g. ``size=(H, W)``, ``channels=1|3``, ``resample="bilinear"``.
    """
    source = os.fspath(source)
    kind = kind or detect_kind(source)
    loader = SOURCES.get(kind)
    return loader(source, **options)


# ---------------------------------------------------------------------------- digits
@SOURCES.register("digits")
def load_digits(source: str = "digits", **options: Any) -> Dataset:
    """scikit-learn's bundled 1,797 8x8 digits (values 0..16 scaled to 0..255)."""
    _no_options("digits", options)
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    imgs = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    return Dataset(
        images=imgs,
        labels=d.target.astype(np.int64),
        ids=tuple(f"digits:{i}" for i in range(len(imgs))),
        class_names=tuple(str(c) for c in range(10)),
        source="digits",
        policy={"size": [8, 8], "channels": 1, "resample": None, "reason": "built-in"},
    )


# ---------------------------------------------------------------------------- npz
@SOURCES.register("npz")
def load_npz(source: str, **options: Any) -> Dataset:
    """An ``.npz`` with ``images`` uint8 (N, H, W) or (N, H, W, C), optional ``labels``, ``ids``,
    ``class_names``."""
    _no_options("npz", options)
    try:
        with np.load(source, allow_pickle=False) as z:
            files = set(z.files)
            if "images" not in files:
                raise UserError(f"{source}: no 'images' array; expected images uint8 (N, H, W) or (N, H, W, C)")
            imgs = z["images"]
            labels = z["labels"] if "labels" in files else None
            ids = [str(i) for i in z["ids"]] if "ids" in files else None
            names = [str(c) for c in z["class_names"]] if "class_names" in files else None
    except UserError:
        raise
    except Exception as e:  # a corrupt archive is the user's input problem, not a crash
        raise UserError(f"{source}: not a readable .npz ({type(e).__name__}: {e})") from None
    if imgs.dtype != np.uint8 or imgs.ndim not in (3, 4) or (imgs.ndim == 4 and imgs.shape[3] not in (1, 3, 4)):
        raise UserError(f"{source}: images must be uint8 (N, H, W) or (N, H, W, C) with C in 1, 3, 4; got {imgs.dtype} {imgs.shape}")
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    if imgs.shape[3] == 4:  # drop alpha by compositing over black is lossy; keep color channels only
        imgs = imgs[..., :3]
    imgs = np.ascontiguousarray(imgs.transpose(0, 3, 1, 2))
    n = len(imgs)
    if labels is None:
        labels = np.full(n, -1, np.int64)
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{source}: labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if names is None:
        k = int(labels.max(initial=-1)) + 1
        names = [str(c) for c in range(k)]
    base = os.path.basename(source)
    return Dataset(
        images=imgs,
        labels=labels,
        ids=tuple(ids) if ids is not None else tuple(f"{base}:{i}" for i in range(n)),
        class_names=tuple(names),
        source=source,
        policy={"size": list(imgs.shape[2:]), "channels": int(imgs.shape[1]), "resample": None, "reason": "array"},
    )


def _no_options(kind: str, options: dict[str, Any]) -> None:
    if options:
        raise UserError(f"the {kind} source takes no options, got: {', '.join(sorted(options))}")
