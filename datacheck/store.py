"""Reading an audit's store (``OUT/store``, written by `datacheck.stream`) back, so other commands work
from it without decoding the audited files again: `check_new`, and ``dedupe``/``split``/``copies`` given an
audit folder as their source (`copies_sets` aligns the sets ``copies`` compares to what a store can give).

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



def looks_like_audit(path: Any) -> bool:
    """Whether ``path`` names an audit folder (a store, or an audit's summary.json and findings.csv),
    which copies must read from its store rather than load as a folder of images."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        return False
    p = Path(path)
    # an audit kept in memory has no store: still an audit, so a one-line error rather than "no images"
    return is_audit_dir(p) or ((p / "summary.json").is_file() and (p / "findings.csv").is_file())


def copies_sets(sources: dict[str, Any], *, size: Any = None, channels: int | None = None) -> dict[str, Dataset]:
    """The sets `datacheck.copies.find_copies` compares (``{"fake": ..., "train": ..., "heldout": ...}``),
    any audit folder among them read from its store's thumbnails (its images are not decoded again).

    Without an audit folder every source is loaded with ``size`` and ``channels`` (as `datacheck.load`).
    With one, all sets are compared at one shape a store can give: ``size`` when given, else the
    thumbnail size of the training store (else of the first store); ``channels`` when given, else that
    store's. A store's thumbnails larger than that are shrunk with the audit's filter; the other sets are
    brought to it as the audit made its thumbnails (`stream._thumbnail` on the full decoded image), so
    identical images stay pixel-identical. Thumbnails smaller than that shape are a `UserError`: a store
    cannot give back pixels it did not keep."""
    from .sources import as_dataset, load, parse_size

    views = {name: open_store(src) for name, src in sources.items() if looks_like_audit(src)}
    if not views:
        opts = {k: v for k, v in (("size", size), ("channels", channels)) if v is not None}
        return {name: (load(src, **opts) if opts and not isinstance(src, Dataset) else as_dataset(src))
                for name, src in sources.items()}
    first = views.get("train") or next(iter(views.values()))
    hw = parse_size(size) or (int(first.ds.images.shape[2]), int(first.ds.images.shape[3]))
    chans = int(channels or first.ds.images.shape[1])
    resample = str(first.index.get("resample", "bilinear"))
    out: dict[str, Dataset] = {}
    for name, src in sources.items():
        if name in views:
            out[name] = _thumbs_at(views[name], name, hw, chans)
        elif isinstance(src, Dataset):
            out[name] = src  # the caller's own arrays: find_copies checks their shape
        else:
            out[name] = _load_as_thumbs(os.fspath(src), hw, chans, resample)
    return out


def _thumbs_at(view: StoreView, name: str, hw: tuple[int, int], channels: int) -> Dataset:
    """The store's thumbnails as (N, channels, *hw): as stored when they already are, else shrunk."""
    ds = view.ds
    _, c, th, tw = ds.images.shape
    if th < hw[0] or tw < hw[1]:
        what = {"train": "training set's", "heldout": "held-out set's"}.get(name, f"{name} set's")
        raise UserError(f"the {what} store in {view.audit} keeps thumbnails of {th}x{tw}, smaller than the {hw[0]}x{hw[1]} "
                        f"copies compares at: pass --size {th}x{tw} (or smaller), or give the audited folder itself")
    if (c, th, tw) == (channels, *hw):
        return ds
    imgs = _shrink_all(ds.images, hw, channels, str(view.index.get("resample", "bilinear")))
    return ds.replace(images=imgs, policy={**ds.policy, "size": list(hw), "channels": channels,
                                           "reason": f"{ds.policy.get('reason', '')}; thumbnails {th}x{tw}x{c} "
                                                     f"brought to {hw[0]}x{hw[1]}x{channels}"})


def _load_as_thumbs(src: str, hw: tuple[int, int], channels: int, resample: str) -> Dataset:
    """A source that is not a store, at the shape a store's thumbnails are compared at, made as the audit
    made them: folders and manifests are measured as a streamed audit measures (each file decoded whole,
    then shrunk; `load(size=)` shrinks JPEGs while decoding and large images in one step, which differ by
    a level here and there and would turn an identical image into a near copy); array sources are loaded
    whole (they are in memory anyway) and each image shrunk the same way."""
    from .sources import detect_kind, load

    kind = detect_kind(src)
    if kind not in ("folder", "csv"):
        ds = load(src, channels=channels)
        if ds.images.shape[2:] == hw:
            return ds
        return ds.replace(images=_shrink_all(ds.images, hw, channels, resample),
                          policy={**ds.policy, "size": list(hw), "channels": channels, "resample": resample})
    from . import listing as _lst
    from .stream import StreamOptions, drop_store, new_store, stream_source

    if not os.path.exists(src):
        raise UserError(f"source {src!r} does not exist")
    store, tmp = new_store(None)
    try:
        st = stream_source(src, kind, _lst.list_files(src, kind), store, size=hw, channels=channels, resample=resample,
                           opts=StreamOptions(thumb=max(64, *hw), cache=False))
        policy = {k: v for k, v in st.ds.policy.items() if k not in ("store", "streamed")}
        # copied out of the temporary store, which goes now
        return st.ds.replace(images=np.array(st.ds.images), policy={**policy, "reason": (
            f"thumbnails {hw[0]}x{hw[1]} made as a streamed audit makes them, to compare with an audit's store")})
    finally:
        drop_store(tmp)


def _shrink_all(images: np.ndarray, hw: tuple[int, int], channels: int, resample: str) -> np.ndarray:
    """uint8 (N, channels, *hw) from (N, C, h, w), each image resized as the audit's thumbnails are
    (`datacheck.stream._thumbnail`) and its channels converted as the loader converts."""
    from .decode import to_channels
    from .stream import _thumbnail

    n, c = images.shape[:2]
    out = np.empty((n, channels, *hw), np.uint8)
    for i in range(n):  # one image at a time: a memory-mapped store is never read whole
        a = np.asarray(images[i])
        out[i] = to_channels(_thumbnail(np.ascontiguousarray(a[0] if c == 1 else a.transpose(1, 2, 0)), hw, resample),
                             channels)
    return out
