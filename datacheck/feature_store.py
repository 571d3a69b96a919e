"""Features of a streamed audit's thumbnails, kept in its store (``OUT/store/features``) so a re-audit
extracts them only for new or changed images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def stored_features(store: Path, name: str, images: np.ndarray, chunk: int = 4096,
                    keys: np.ndarray | None = None) -> np.ndarray:
    """float32 (N, D) features ``name`` of ``images`` (the store's thumbnails, uint8 (N, C, h, w)),
    computing only the rows whose thumbnail has none in ``store/features`` yet: a re-audit after
    adding 1% of files extracts features for those only. Rows are keyed by a digest of the
    thumbnail's pixels (``keys``: S16 (N,), computed when None) and the file by the extractor's identity
    (another extractor or weights: another file). Raw pixels are not stored (they are the thumbnails)."""
    import hashlib

    from .features import get_extractor
    from .io import atomic_path

    ex = get_extractor(name)
    if name == "pixels":
        return ex(np.asarray(images))
    ident = hashlib.sha256(json.dumps(ex.identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = store / "features" / f"{name}-{ident}.npz"
    if keys is None:  # the thumbnails' pixel digests (`hashing.exact_keys`; `CheckContext.thumb_digests` shares them)
        from .hashing import exact_keys

        keys = exact_keys(images)
    old_keys, old = np.zeros(0, "S16"), None
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                old_keys, old = z["keys"], z["features"]
        except (OSError, ValueError, KeyError):  # damaged: computed again
            old_keys, old = np.zeros(0, "S16"), None
    out: np.ndarray | None = None
    have = np.zeros(len(keys), bool)
    if old is not None and len(old_keys):
        order = np.argsort(old_keys)
        pos = np.searchsorted(old_keys[order], keys).clip(0, len(old_keys) - 1)
        have = old_keys[order][pos] == keys
        out = np.empty((len(keys), old.shape[1]), np.float32)
        out[have] = old[order][pos[have]]
    todo = np.flatnonzero(~have)
    for s in range(0, len(todo), chunk):
        rows = todo[s : s + chunk]
        f = ex(np.ascontiguousarray(images[rows]))
        if out is None:
            out = np.empty((len(keys), f.shape[1]), np.float32)
        out[rows] = f
    if out is None:  # no images
        return ex(np.asarray(images))
    if len(todo) or len(old_keys) != len(keys):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=keys, features=out)
    return out
