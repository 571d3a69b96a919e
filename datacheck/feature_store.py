"""Features of a streamed audit's thumbnails, kept in its store (``OUT/store/features``) so a re-audit
extracts them only for new or changed images.

One ``.npy`` file per extractor identity, a structured array of (``key``: S16 digest of the thumbnail's
pixels, ``f``: float32 (D,) features), read back memory-mapped: the features of a million thumbnails
(2 GB at 512 dimensions) are file pages the graph reads in row chunks, not process memory."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


def identity_digest(identity: dict) -> str:
    """A short digest of an extractor's ``identity`` (its settings and weights): names the features
    file, and a stored graph's features."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stored_features(store: Path, name: str, images: np.ndarray, keys: np.ndarray | None = None,
                    chunk: int = 4096) -> np.ndarray:
    """float32 (N, D) features ``name`` of ``images`` (the store's thumbnails, uint8 (N, C, h, w)),
    computing only the rows whose thumbnail has none in ``store/features`` yet: a re-audit after
    adding 1% of files extracts features for those only. ``keys`` (N,) S16: the thumbnails' digests
    (`datacheck.hashing.exact_keys`, shared by `CheckContext.thumb_digests`; computed when not given).
    The file is named by the
    extractor's identity (another extractor or weights: another file). Raw pixels are not stored (they
    are the thumbnails). Returns a read-only memory map."""
    from .features import get_extractor
    from .hashing import exact_keys, lookup_keys
    from .memory import release_pages

    ex = get_extractor(name)
    if name == "pixels":
        return ex(np.asarray(images))
    ident = identity_digest(ex.identity)
    path = store / "features" / f"{name}-{ident}.npy"
    if keys is None:
        keys = exact_keys(images)
    old = None
    if path.is_file():
        try:
            old = np.load(path, mmap_mode="r")
            if old.dtype.names != ("key", "f") or old.ndim != 1:
                old = None
        except (OSError, ValueError):  # damaged: computed again
            old = None
    if old is not None and len(old) == len(keys) and np.array_equal(np.asarray(old["key"]), keys):
        return old["f"]  # unchanged set: nothing to compute or write
    pos = lookup_keys(np.asarray(old["key"]), keys) if old is not None else np.full(len(keys), -1, np.int64)
    have = pos >= 0
    todo = np.flatnonzero(~have)
    first = ex(np.ascontiguousarray(images[todo[:chunk]])) if len(todo) else None
    dim = old["f"].shape[1] if old is not None and len(old) else (first.shape[1] if first is not None else 0)
    if len(keys) == 0 or dim == 0:
        return ex(np.asarray(images))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=[("key", "S16"), ("f", "<f4", (dim,))], shape=(len(keys),))
    out["key"] = keys
    kept = np.flatnonzero(have)
    for s in range(0, len(kept), 65536):  # copied in chunks: never the whole old matrix in memory
        rows = kept[s : s + 65536]
        out["f"][rows] = old["f"][pos[rows]]  # type: ignore[index]
        out.flush()
        release_pages(out)
        release_pages(old)
    for s in range(0, len(todo), chunk):
        rows = todo[s : s + chunk]
        out["f"][rows] = first if s == 0 else ex(np.ascontiguousarray(images[rows]))
        if s % (16 * chunk) == 0:  # the thumbnails and features read so far leave this process's memory
            out.flush()
            release_pages(out)
            release_pages(images)
    out.flush()
    del out, old
    os.replace(tmp, path)
    for stale in path.parent.glob(f"{name}-*"):  # another extractor identity or the old .npz format
        if stale != path:
            stale.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")["f"]
