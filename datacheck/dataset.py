"""The one in-memory dataset type every package uses.

Images stay uint8 (N, C, H, W) all the way through; models convert to float at their own edge.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from .errors import UserError


@dataclass(frozen=True, eq=False)
class Dataset:
    """An image dataset held in memory.

    Attributes:
        images: uint8 (N, C, H, W), C in {1, 3}.
        labels: int64 (N,), -1 where unknown.
        ids: N stable ids: the path relative to the source root as the user would type it
            (``cats/001.png``), or ``digits:123`` for built-in / array data.
        class_names: names of the label values 0..K-1 (empty for unlabeled data).
        source: what the user passed to `datacheck.load`.
        root: folder the ids are relative to (None for built-in or array data).
        orig_sizes: int32 (N, 2) height and width of each image before the shape policy.
        orig_modes: N strings, the decoded file mode before conversion (``L``, ``RGB``, ``I;16`` ...).
        unreadable: files the loader refused, each ``{"path", "reason"}``.
        skipped: number of non-image files skipped while walking the source.
        policy: the recorded shape policy (target size, channels, resampling filter, why).
    """

    images: np.ndarray
    labels: np.ndarray
    ids: tuple[str, ...]
    class_names: tuple[str, ...] = ()
    source: str = ""
    root: str | None = None
    orig_sizes: np.ndarray | None = None
    orig_modes: tuple[str, ...] | None = None
    unreadable: tuple[dict[str, str], ...] = ()
    skipped: int = 0
    policy: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        imgs = self.images
        if not isinstance(imgs, np.ndarray) or imgs.dtype != np.uint8 or imgs.ndim != 4:
            raise UserError(
                f"images must be a uint8 array of shape (N, C, H, W), got "
                f"{getattr(imgs, 'dtype', type(imgs).__name__)} {getattr(imgs, 'shape', '')}"
            )
        if imgs.shape[1] not in (1, 3):
            raise UserError(f"images must have 1 or 3 channels, got shape {imgs.shape}")
        n = imgs.shape[0]
        labels = np.asarray(self.labels)
        if labels.shape != (n,):
            raise UserError(f"labels must have shape ({n},), got {labels.shape}")
        if labels.dtype != np.int64:
            object.__setattr__(self, "labels", labels.astype(np.int64))
        if not isinstance(self.ids, tuple):
            object.__setattr__(self, "ids", tuple(str(i) for i in self.ids))
        if len(self.ids) != n:
            raise UserError(f"ids must have {n} entries, got {len(self.ids)}")
        if self.orig_sizes is None:
            object.__setattr__(
                self, "orig_sizes", np.tile(np.array(imgs.shape[2:], np.int32), (n, 1))
            )
        if self.orig_modes is None:
            mode = "L" if imgs.shape[1] == 1 else "RGB"
            object.__setattr__(self, "orig_modes", (mode,) * n)
        if not isinstance(self.class_names, tuple):
            object.__setattr__(self, "class_names", tuple(self.class_names))
        if n and self.labels.max(initial=-1) >= max(len(self.class_names), 1) and self.class_names:
            raise UserError(
                f"labels go up to {int(self.labels.max())} but only {len(self.class_names)} class names were given"
            )

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return (
            f"Dataset(n={n}, shape=({c}, {h}, {w}), classes={len(self.class_names)}, "
            f"source={self.source!r}, fingerprint={self.fingerprint[:12]})"
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def labeled(self) -> bool:
        """True when at least one item has a known label."""
        return bool(len(self) and (self.labels >= 0).any())

    def class_counts(self) -> dict[str, int]:
        """Images per class name (unlabeled items are not counted)."""
        counts = np.bincount(self.labels[self.labels >= 0], minlength=self.n_classes)
        return {name: int(counts[i]) for i, name in enumerate(self.class_names)}

    def label_name(self, label: int) -> str:
        """How a label reads in reports and files: its class name, "" when unlabeled (-1), the number
        itself when the dataset has no name for it."""
        label = int(label)
        if label < 0:
            return ""
        return self.class_names[label] if label < len(self.class_names) else str(label)

    def path_of(self, i: int) -> str:
        """Path of item ``i`` relative to the source, as the user would type it (the id)."""
        return self.ids[i]

    def abspath_of(self, i: int) -> str | None:
        """Absolute file path of item ``i`` when it came from a file, else None."""
        if self.root is None:
            return None
        return os.path.join(self.root, self.ids[i])

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the decoded pixels, their shape and the labels (not of file bytes or ids)."""
        h = hashlib.sha256()
        h.update(repr(self.images.shape).encode())
        per = max(1, (64 << 20) // max(1, int(np.prod(self.images.shape[1:]))))
        for s in range(0, len(self.images), per):  # in chunks: the images may be a memory-mapped store
            h.update(np.ascontiguousarray(self.images[s:s + per]).tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        h.update("\x00".join(self.class_names).encode())
        return h.hexdigest()

    # ------------------------------------------------------------- derivations
    def replace(self, **changes: Any) -> "Dataset":
        """A copy with some fields replaced (the fingerprint is recomputed)."""
        return dataclasses.replace(self, **changes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Dataset":
        """The items at ``indices`` (ints or a boolean mask), in that order."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise UserError(f"a boolean mask must have shape ({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise UserError(f"subset indices must lie in [0, {len(self)}), got max {int(idx.max())}")
        return dataclasses.replace(
            self,
            images=self.images[idx],
            labels=self.labels[idx],
            ids=tuple(self.ids[i] for i in idx),
            orig_sizes=self.orig_sizes[idx],
            orig_modes=tuple(self.orig_modes[i] for i in idx),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write as ``.npz`` (images (N, H, W, C), labels, ids, class_names); load it back with
        `datacheck.load`. Written atomically."""
        from .io import atomic_path

        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh,
                    images=self.images.transpose(0, 2, 3, 1),
                    labels=self.labels,
                    ids=np.array(self.ids, dtype=str),
                    class_names=np.array(self.class_names, dtype=str),
                )


def concat(datasets: Sequence[Dataset], source: str = "concat") -> Dataset:
    """Concatenate datasets of one shape. Class names are merged by name; ids must stay unique."""
    if not datasets:
        raise UserError("concat needs at least one dataset")
    shapes = {d.shape for d in datasets}
    if len(shapes) != 1:
        raise UserError(f"concat needs datasets of one shape (C, H, W), got {sorted(shapes)}")
    names: list[str] = []
    for d in datasets:
        for n in d.class_names:
            if n not in names:
                names.append(n)
    labels = []
    for d in datasets:
        remap = np.array([names.index(n) for n in d.class_names] + [-1], dtype=np.int64)
        labels.append(np.where(d.labels >= 0, remap[d.labels], -1))
    ids = tuple(i for d in datasets for i in d.ids)
    if len(set(ids)) != len(ids):
        raise UserError("concat would give duplicate ids; give the datasets distinct ids first")
    roots = {d.root for d in datasets}
    return Dataset(
        images=np.concatenate([d.images for d in datasets]),
        labels=np.concatenate(labels),
        ids=ids,
        class_names=tuple(names),
        source=source,
        root=roots.pop() if len(roots) == 1 else None,
        orig_sizes=np.concatenate([d.orig_sizes for d in datasets]),
        orig_modes=tuple(m for d in datasets for m in d.orig_modes),
        unreadable=tuple(u for d in datasets for u in d.unreadable),
        skipped=sum(d.skipped for d in datasets),
        policy=datasets[0].policy,
    )
