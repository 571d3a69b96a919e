"""Reading an audit's store (``OUT/store``, written by `datacheck.stream`) back, so other commands work
from it without decoding the audited files again: `check_new`, and ``dedupe``/``split`` given an
audit folder as their source.

The store holds per item: the id, label, original size and mode, a 16-byte digest of the full
decoded pixels (exact duplicates), the per-image measures, and a thumbnail in ``thumbs.npy``
(memory-mapped uint8 (N, C, h, w)).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import Dataset
from .errors import UserError


@dataclass(frozen=True)
class StoreView:
    """An audit's store: ``ds`` (the thumbnails as a `Dataset`, images memory-mapped), ``keys``
    (N,) S16 full-pixel digests, ``index`` (index.json), ``settings`` (the measuring settings, from
    the cache's settings.json; empty when the audit kept no cache), ``audit`` (the audit folder)."""

    ds: Dataset
    keys: np.ndarray
    index: dict[str, Any]
    settings: dict[str, Any]
    audit: Path


def is_audit_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an audit folder with a store (``store/index.json``)."""
    return (Path(path) / "store" / "index.json").is_file()


def open_store(audit_dir: str | os.PathLike) -> StoreView:
    """The store of the audit in ``audit_dir``; a one-line `UserError` when there is none or it was
    written by another version of datacheck."""
    from .stream import STORE_VERSION

    audit = Path(audit_dir)
    store = audit / "store"
    if not audit.is_dir():
        raise UserError(f"{audit_dir} is not a folder (expected the --out folder of a datacheck audit)")
    if not (store / "index.json").is_file():
        raise UserError(f"{audit_dir} is not an audit with a store (no store/index.json): audit the images with "
                        "`datacheck audit SOURCE --out DIR --stream on` first")
    try:
        index = json.loads((store / "index.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {store / 'index.json'}: {e}") from None
    if index.get("version") != STORE_VERSION:
        raise UserError(f"the store in {audit_dir} was written by another version of datacheck (store version "
                        f"{index.get('version')}, this one reads {STORE_VERSION}): audit the images again")
    try:
        with np.load(store / "measures.npz", allow_pickle=False) as z:
            m = {k: z[k] for k in z.files}
        thumbs = np.load(store / index.get("thumbs", "thumbs.npy"), mmap_mode="r")
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"the store in {audit_dir} is damaged ({e}): audit the images again") from None
    if len(thumbs) != len(m["ids"]) or len(thumbs) != int(index.get("n_images", -1)):
        raise UserError(f"the store in {audit_dir} is incomplete ({len(thumbs)} thumbnails, "
                        f"{len(m['ids'])} items): audit the images again")
    settings: dict[str, Any] = {}
    sfile = store / "cache" / "settings.json"
    if sfile.is_file():
        try:
            settings = json.loads(sfile.read_text())
        except (OSError, ValueError):
            settings = {}
    labels = m["labels"].astype(np.int64)
    names = tuple(index.get("class_names") or [str(j) for j in range(int(labels.max(initial=-1)) + 1)])
    ds = Dataset(images=thumbs, labels=labels, ids=tuple(m["ids"].tolist()), class_names=names,
                 source=str(index.get("source", "")), root=index.get("root"),
                 orig_sizes=m["orig_sizes"].astype(np.int32), orig_modes=tuple(m["orig_modes"].tolist()),
                 policy={"size": list(thumbs.shape[2:]), "channels": int(thumbs.shape[1]), "streamed": True,
                         "store": str(store), "reason": f"read from the audit store in {audit_dir}"})
    return StoreView(ds=ds, keys=m["keys"], index=index, settings=settings, audit=audit)


def store_context(view: StoreView, seed: int = 0) -> Any:
    """A `CheckContext` over the store's thumbnails whose exact-duplicate groups come from the
    full-pixel digests the audit recorded (thumbnails of two different images may be identical)."""
    from .checks import CheckContext
    from .checks.duplicates import groups_from_keys

    ctx = CheckContext(view.ds, seed=seed)
    ctx.cache("exact_groups", lambda: groups_from_keys(view.keys))
    return ctx

