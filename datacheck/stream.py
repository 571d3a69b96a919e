"""The streaming audit: any number of images of any size in bounded memory.

Each file is decoded once, in a worker process, and measured there at its own resolution: the
per-image quality measures (`datacheck.checks.quality.image_stats`), a digest of its full pixels
(exact duplicates), per-channel sums (the profile) and one small thumbnail. Only those come back.
Thumbnails go to an on-disk store under the output folder (``OUT/store/thumbs.npy``, a memory-mapped
uint8 (N, C, h, w) array, plus ``measures.npz`` and ``index.json``), and the cross-image checks
(near duplicates, outliers, label issues) and the report run on a `Dataset` whose images are that
memory map. Resident memory is the workers' one image each, a window of results bounded in bytes,
and the per-item measures and features: never N x H x W.

The thumbnail size is the source's most common size (``size=`` when given) when it fits in
`THUMB_SIDE` x `THUMB_SIDE`, else that size shrunk to fit (aspect kept). So on a folder of small
images the thumbnails are the very images `datacheck.load` would give, and every check sees the
same pixels as in memory; on large images the cross-image checks see thumbnails (they compared
images at 32 x 32 or less anyway). The auto mode streams when an in-memory load would need more
than `stream_min_bytes` (``DATACHECK_STREAM_MIN_BYTES``, default 512 MB).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import decode as _dec
from . import listing as _lst
from . import memory as _mem
from .dataset import Dataset
from .errors import UserError
from .stream_cache import Measured

log = logging.getLogger(__name__)

#: thumbnails fit in THUMB_SIDE x THUMB_SIDE
THUMB_SIDE = 64
#: stream when an in-memory load would need more than this (override: DATACHECK_STREAM_MIN_BYTES)
STREAM_MIN_BYTES = 512 << 20
#: a worker measures an image at full size when its float working set (about this many bytes a
#: pixel) fits in ``chunk_bytes``; bigger ones (panoramas) are measured shrunk by an integer factor
STATS_BYTES_PER_PIXEL = 48
#: from this many files on the measuring runs in a process pool (each file is costly at real sizes)
POOL_MIN_FILES = 32
STORE_VERSION = 2  # 2: measures on contiguous arrays (float32 sums in the loader's order)
_LEVELS = np.arange(256, dtype=np.float64)
STAT_KEYS = ("p05", "p95", "std", "info_std", "dominant", "sharpness", "chroma", "autocorr")


@dataclass(frozen=True)
class StreamOptions:
    """thumb: thumbnails fit in thumb x thumb. chunk_bytes: the working memory one worker may use
    for one image (bigger images are measured shrunk) and the bound on results waiting in the
    parent. workers: measuring processes (None = the CPUs this process may use). progress: True /
    False forces the bar; None shows it for large folders on a terminal. cache: keep per-file
    results in ``store/cache`` and reuse those of unchanged files (`datacheck.stream_cache`).
    identity: what makes a file "unchanged": ``stat`` (path, size, modification time) or ``content``
    (also a hash of its bytes: a touched but unchanged file is not measured again). executor:
    ``local`` (a process pool here) or ``ray`` (shards of files as Ray tasks, `datacheck.stream_ray`).
    address: the Ray cluster to join (``ray://head:10001`` or ``auto``; None: ``RAY_ADDRESS`` when set,
    else a local Ray instance), as ``reports ablate --address``."""

    thumb: int = THUMB_SIDE
    chunk_bytes: int = 384 << 20
    workers: int | None = None
    progress: bool | None = None
    cache: bool = True
    identity: str = "stat"
    executor: str = "local"
    address: str | None = None


@dataclass
class Streamed:
    """A streamed source: the thumbnail dataset and what was measured at full size."""

    ds: Dataset
    stats: dict[str, np.ndarray]
    keys: np.ndarray
    channel_stats: tuple[list[float], list[float]]
    store: Path
    n_shrunk: int = 0
    tmp: str | None = field(default=None, repr=False)


def stream_min_bytes() -> int:
    env = os.environ.get("DATACHECK_STREAM_MIN_BYTES")
    return _mem.parse_bytes(env) if env else STREAM_MIN_BYTES


# ---------------------------------------------------------------------------- one file (in a worker)
#: images of at most this many pixels are measured in groups of one shape (one `image_stats` call for a
#: worker's batch: on 32x32 PNGs its per-call overhead was half of each file's cost)
GROUP_MAX_PIXELS = 256 * 256


@dataclass
class _Decoded:
    """A decoded file between decoding and measuring: ``x`` (1, C, H, W) contiguous, ``xs`` what the
    measures see (``x``, or ``x`` shrunk for images too large for the worker's memory)."""

    d: Any
    a: np.ndarray
    x: np.ndarray
    xs: np.ndarray
    shrink: int


def measure_file(path: str, *, max_pixels: int, listed: bool, thumb_hw: tuple[int, int], resample: str,
                 chunk_bytes: int) -> Measured:
    """Decode ``path`` once and measure it (see the module doc). Never raises for a bad file."""
    kw = {"max_pixels": max_pixels, "listed": listed, "thumb_hw": thumb_hw, "resample": resample,
          "chunk_bytes": chunk_bytes}
    return _measure_batch([(path, kw)])[0]


def _decode(path: str, *, max_pixels: int, listed: bool, chunk_bytes: int, **_: Any) -> Measured | _Decoded:
    d = _dec.decode_file(path, max_pixels=max_pixels, listed=listed)
    if d.status != "ok":
        return Measured(d.status, reason=d.reason)
    a = d.array
    try:
        # contiguous (C, H, W), as a loaded dataset holds it: numpy's reductions over a strided HWC view
        # took 3.4x longer (114 vs 34 ms at 1024x1024) and summed float32 in another order
        x = a[None, None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))[None]
        h, w = a.shape[:2]
        shrink = 1
        xs = x
        if h * w * STATS_BYTES_PER_PIXEL > chunk_bytes:
            shrink = math.ceil(math.sqrt(h * w * STATS_BYTES_PER_PIXEL / chunk_bytes))
            from PIL import Image

            small = np.asarray(Image.fromarray(a).reduce(shrink))
            xs = small[None, None] if a.ndim == 2 else small.transpose(2, 0, 1)[None]
    except Exception as e:  # e.g. MemoryError on a huge image: a finding, never a crash
        return Measured("unreadable", reason=f"cannot measure ({_dec._reason(e)})")
    return _Decoded(d, a, x, xs, shrink)


def _finish(p: _Decoded, stats: np.ndarray, thumb_hw: tuple[int, int], resample: str) -> Measured:
    """The rest of a file's measures, given its ``stats`` (len(STAT_KEYS),)."""
    a, x, d = p.a, p.x, p.d
    try:
        gray_form = a.ndim == 2
        h, w = a.shape[:2]
        # the profile's sums per channel of the 3-channel form (a gray image counts in all three),
        # exact from a histogram per channel: no float copy of the image
        hist = np.stack([np.bincount(ch.ravel(), minlength=256) for ch in x[0]]).astype(np.float64)
        s, sq = hist @ _LEVELS, hist @ (_LEVELS * _LEVELS)
        if gray_form:
            s, sq = np.repeat(s, 3), np.repeat(sq, 3)
        chan = np.concatenate([s, sq, [float(h * w)]])
        rgb = x[0] if not gray_form else np.broadcast_to(x[0], (3, h, w))
        dig = hashlib.blake2b(repr(rgb.shape).encode(), digest_size=16)
        dig.update(np.ascontiguousarray(rgb).tobytes())
        thumb = _thumbnail(a, thumb_hw, resample)
    except Exception as e:  # e.g. MemoryError on a huge image: a finding, never a crash
        return Measured("unreadable", reason=f"cannot measure ({_dec._reason(e)})")
    return Measured("ok", size=d.size, mode=d.mode, color=d.color, gray_form=gray_form, stats=stats,
                    chan=chan, key=dig.digest(), thumb=thumb, shrunk=p.shrink)


def _stats_rows(xs: np.ndarray) -> np.ndarray:
    from .checks.quality import image_stats

    st = image_stats(xs)
    return np.stack([np.asarray(st[k], np.float64) for k in STAT_KEYS], 1)


def _thumbnail(a: np.ndarray, hw: tuple[int, int], resample: str) -> np.ndarray:
    """`datacheck.decode.resize`, but a large shrink first box-reduces by an integer factor (PIL's
    ``reducing_gap``: 4x faster from 1024 to 64 px, and no visible difference at thumbnail size)."""
    from PIL import Image

    h, w = a.shape[:2]
    if (h, w) == tuple(hw):
        return a
    if min(h / hw[0], w / hw[1]) < 4:
        return _dec.resize(a, hw, resample)
    im = Image.fromarray(a).resize((hw[1], hw[0]), resample=_dec.RESAMPLE[resample], reducing_gap=2.0)
    return np.asarray(im, dtype=np.uint8).copy()


def _measure_batch(jobs: Sequence[tuple[str, dict[str, Any]]]) -> list[Measured]:
    """Picklable worker entry point: several files per task (fewer round trips). Small images of one
    shape are measured together (`image_stats` per image is the same batched or alone: its reductions
    run per image), each large one alone, one at a time."""
    out: list[Measured | None] = [None] * len(jobs)
    groups: dict[tuple[int, ...], list[tuple[int, _Decoded]]] = {}
    for j, (path, kw) in enumerate(jobs):
        p = _decode(path, **kw)
        if isinstance(p, Measured):
            out[j] = p
        elif p.xs.shape[2] * p.xs.shape[3] <= GROUP_MAX_PIXELS:
            groups.setdefault(p.xs.shape[1:], []).append((j, p))
        else:  # large: measured and let go before the next file is decoded
            out[j] = _measure_one(p, kw)
    for members in groups.values():
        try:
            rows = _stats_rows(np.concatenate([p.xs for _j, p in members]))
        except Exception:  # one bad array must not sink the group: measure each alone
            for j, p in members:
                out[j] = _measure_one(p, jobs[j][1])
            continue
        for (j, p), row in zip(members, rows):
            out[j] = _finish(p, row, jobs[j][1]["thumb_hw"], jobs[j][1]["resample"])
    return out  # type: ignore[return-value]


def _measure_one(p: _Decoded, kw: dict[str, Any]) -> Measured:
    try:
        row = _stats_rows(p.xs)[0]
    except Exception as e:  # e.g. MemoryError on a huge image: a finding, never a crash
        return Measured("unreadable", reason=f"cannot measure ({_dec._reason(e)})")
    return _finish(p, row, kw["thumb_hw"], kw["resample"])


def _pool_context() -> Any:
    from .sources import _pool_context as ctx

    return ctx()


def measure_all(paths: Sequence[str], kw: dict[str, Any], opts: StreamOptions, desc: str) -> Iterator[Measured]:
    """`measure_file` of every path, in order. With a pool, at most a window of batches is in
    flight, so results waiting in this process stay within ``opts.chunk_bytes``."""
    from .sources import _cpu_count, progress_bar

    n = len(paths)
    bar = progress_bar(n, opts.progress, desc)  # rate and time left: the progress of a long stage
    workers = min(opts.workers or _cpu_count(), max(n, 1))
    ctx = _pool_context()
    done = 0
    try:
        if opts.executor == "ray" and n:
            from .stream_ray import measure_all_ray

            yield from measure_all_ray(paths, kw, opts.workers, _measure_batch, bar, address=opts.address)
            return
        if workers > 1 and n >= POOL_MIN_FILES and ctx is not None:
            th, tw = kw["thumb_hw"]
            batch = max(1, min(16, -(-n // (workers * 4))))
            window = max(workers * 2, 1)
            window = max(1, min(window, opts.chunk_bytes // max(1, batch * 3 * th * tw * 2)))
            try:
                with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
                    pending: list[Any] = []
                    starts = iter(range(0, n, batch))
                    for s in starts:
                        pending.append(ex.submit(_measure_batch, [(p, kw) for p in paths[s:s + batch]]))
                        if len(pending) >= window:
                            break
                    while pending:
                        res = pending.pop(0).result()
                        nxt = next(starts, None)
                        if nxt is not None:
                            pending.append(ex.submit(_measure_batch, [(p, kw) for p in paths[nxt:nxt + batch]]))
                        for r in res:
                            done += 1
                            yield r
                        if bar is not None:
                            bar.update(len(res))
                return
            except (OSError, RuntimeError, pickle.PicklingError) as e:  # incl. BrokenProcessPool
                log.warning("measuring in worker processes failed (%s); going on serially", e)
        for p in paths[done:]:
            yield measure_file(p, **kw)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------- the store
def thumb_shape(sizes: np.ndarray, size: tuple[int, int] | None, side: int) -> tuple[tuple[int, int], int]:
    """(thumbnail (h, w), how many files have the most common size) from header ``sizes`` (N, 2)."""
    ok = sizes[(sizes > 0).all(1)]
    if size is not None:
        base, n_common = tuple(size), 0
    elif len(ok):
        from .sources import _most_common_size

        base, n_common = _most_common_size([(int(h), int(w)) for h, w in ok])
    else:
        base, n_common = (side, side), 0
    h, w = base
    if max(h, w) <= side:
        return (int(h), int(w)), n_common
    f = side / max(h, w)
    return (max(1, round(h * f)), max(1, round(w * f))), n_common


def stream_source(source: str, kind: str, listing: _lst.Listing, store: Path, *, sizes: np.ndarray | None = None,
                  size: tuple[int, int] | None = None, channels: int | None = None, resample: str = "bilinear",
                  max_pixels: int = _dec.DEFAULT_MAX_PIXELS, opts: StreamOptions = StreamOptions()) -> Streamed:
    """Measure every file of ``listing`` and write the store into ``store`` (see the module doc)."""
    paths = listing.paths
    if sizes is None:
        sizes = _lst.header_sizes(paths, max_pixels)
    thumb_hw, _ = thumb_shape(sizes, size, opts.thumb)
    n = len(paths)
    store.mkdir(parents=True, exist_ok=True)
    cache = None
    if opts.cache:
        from .stream_cache import Cache

        cache = Cache(store / "cache", {"version": STORE_VERSION, "thumb_hw": list(thumb_hw), "resample": resample,
                                        "max_pixels": int(max_pixels), "chunk_bytes": int(opts.chunk_bytes),
                                        "listed": bool(listing.listed)}, identity=opts.identity)
        thumb_hw = cache.thumb_hw  # a cache's thumbnail size wins: its files need not be measured again
    th, tw = thumb_hw
    raw_path = store / ".thumbs-rgb.u8.tmp"
    raw = np.lib.format.open_memmap(raw_path, mode="w+", dtype=np.uint8, shape=(max(n, 1), 3, th, tw))
    stats = np.zeros((n, len(STAT_KEYS)))
    chan = np.zeros((n, 7))
    keys = np.zeros(n, "S16")
    osz = np.zeros((n, 2), np.int32)
    color = np.zeros(n, bool)
    gray_form = np.zeros(n, bool)
    modes = np.empty(n, object)
    status = np.zeros(n, np.int8)  # 0 ok, 1 unreadable, 2 skipped (the cache's codes)
    shrunk = np.ones(n, np.int32)
    reasons: dict[int, str] = {}
    kw = {"max_pixels": max_pixels, "listed": listing.listed, "thumb_hw": thumb_hw, "resample": resample,
          "chunk_bytes": opts.chunk_bytes}
    desc = f"auditing {os.path.basename(os.path.abspath(source))}"
    # rows are written at each file's place in the listing and compacted to the decoded ones at the end
    where = np.full((n, 2), -1, np.int64)
    idents: list[Any] = [None] * n
    if cache is not None:
        from .stream_cache import identity

        idents = [identity(p) for p in paths]
        where = cache.locate(paths, idents)
        # an unchanged file's results are copied in bulk, segment by segment: one `Measured` object per
        # cached file cost about 2.6 KB of memory each (2.6 GB at 1M files)
        hit = np.flatnonzero(where[:, 0] >= 0)
        order = hit[np.argsort(where[hit, 0], kind="stable")]
        bounds = np.flatnonzero(np.diff(where[order, 0])) + 1
        # and in pieces of at most 65,536 files: a merged segment can hold a million (3 GB of thumbnails)
        segs = np.split(order, bounds) if len(order) else []
        pieces = [q for part in segs for q in np.split(part, range(65536, len(part), 65536))]
        for part in pieces:
            meta, seg_thumbs = cache.segments[int(where[part[0], 0])]
            r = where[part, 1]
            status[part] = meta["status"][r]
            ok_r = status[part] == 0
            for i, rr in zip(part[~ok_r].tolist(), r[~ok_r].tolist()):
                reasons[i] = str(meta["reason"][rr])
            stats[part], chan[part], keys[part], osz[part] = meta["stats"][r], meta["chan"][r], meta["key"][r], meta["orig"][r]
            color[part], gray_form[part], shrunk[part] = meta["color"][r], meta["gray_form"][r], meta["shrunk"][r]
            modes[part] = meta["mode"][r]
            raw[part] = seg_thumbs[r]
            _mem.release_pages(seg_thumbs)
    miss = np.flatnonzero(where[:, 0] < 0)
    fresh = measure_all([paths[i] for i in miss], kw, opts, desc)
    for j, (i, m) in enumerate(zip(miss.tolist(), fresh)):
        if cache is not None:
            cache.add(paths[i], idents[i], m)
        if m.status != "ok":
            status[i] = 1 if m.status == "unreadable" else 2
            reasons[i] = m.reason
            continue
        t = m.thumb
        raw[i] = t.transpose(2, 0, 1) if t.ndim == 3 else t[None]  # type: ignore[index]
        stats[i], chan[i], keys[i], osz[i] = m.stats, m.chan, m.key, m.size
        color[i], gray_form[i], modes[i], shrunk[i] = m.color, m.gray_form, m.mode, m.shrunk
        if j % 65536 == 65535:  # written thumbnails go to the file, not this process's resident memory
            raw.flush()
            _mem.release_pages(raw)
    if cache is not None:
        cache.finish(paths)
        log.info("%d of %d files measured, %d from the cache (%d recognised by content)", n - cache.hits, n,
                 cache.hits, cache.n_touched)
    items = listing.items
    unreadable = list(listing.unreadable) + [{"path": items[i][0], "reason": reasons.get(i, "")}
                                             for i in np.flatnonzero(status == 1).tolist()]
    skipped = listing.skipped + int((status == 2).sum())
    ok = np.flatnonzero(status == 0)
    k = len(ok)
    if k == 0:
        first = "; ".join(f"{u['path']}: {u['reason']}" for u in unreadable[:3])
        raise UserError(f"no decodable image in {source!r}: {len(unreadable)} unreadable, {skipped} skipped"
                        + (f" (first: {first})" if first else ""))
    stats, chan, keys, osz, color, gray_form = stats[ok], chan[ok], keys[ok], osz[ok], color[ok], gray_form[ok]
    modes_ok = [str(v) for v in modes[ok].tolist()]
    ok_items = [(items[i][0], items[i][1]) for i in ok.tolist()]
    n_shrunk = int((shrunk[ok] > 1).sum())
    n_color = int(color.sum())
    c = channels or (3 if n_color else 1)
    images = _final_thumbs(raw, ok, c, gray_form, store)  # type: ignore[arg-type]
    del raw
    raw_path.unlink(missing_ok=True)

    from .sources import _natural_key

    found = {cl for _i, cl in ok_items if cl is not None}
    class_names = tuple(sorted(found | set(listing.classes), key=_natural_key))
    index = {cl: j for j, cl in enumerate(class_names)}
    labels = np.array([index[cl] if cl is not None else -1 for _i, cl in ok_items], np.int64)
    sizes_ok = [tuple(int(v) for v in s) for s in osz[:k]]
    from .sources import _most_common_size

    common, n_common = _most_common_size(sizes_ok)
    n_resized = sum(s != thumb_hw for s in sizes_ok)
    what = f"size {size[0]}x{size[1]} given" if size else f"most common size {common[0]}x{common[1]} ({n_common} of {k} images)"
    reason = (f"streamed: per-image checks measured on each image at its own size; thumbnails {th}x{tw} "
              f"({what}) for the cross-image checks and the report")
    policy = {"size": [th, tw], "channels": c, "resample": resample, "alpha_background": "white",
              "reason": reason, "n_resized": int(n_resized), "n_color": n_color, "streamed": True,
              "store": str(store), "n_measured_shrunk": int(n_shrunk)}
    ds = Dataset(images=images, labels=labels, ids=tuple(i for i, _c in ok_items), class_names=class_names,
                 source=source, root=listing.root, orig_sizes=osz[:k].copy(), orig_modes=tuple(modes_ok),
                 unreadable=tuple(unreadable), skipped=skipped, policy=policy)
    sums = chan[:k].sum(0)
    if c == 3:
        channel_stats = _moments(sums[:3], sums[3:6], sums[6])
    else:  # one channel: the mean of the three (they are equal for gray images)
        channel_stats = _moments(sums[:3].mean(keepdims=True), sums[3:6].mean(keepdims=True), sums[6])
    st = {key: stats[:k, j].copy() for j, key in enumerate(STAT_KEYS)}
    _write_index(store, ds, st, keys[:k], thumb_hw, c)
    return Streamed(ds=ds, stats=st, keys=keys[:k].copy(), channel_stats=channel_stats, store=store, n_shrunk=n_shrunk)


def _moments(s: np.ndarray, s2: np.ndarray, m: float) -> tuple[list[float], list[float]]:
    from .profile import moments

    return moments(s, s2, int(m))


def _final_thumbs(raw: np.ndarray, rows: np.ndarray, c: int, gray_form: np.ndarray, store: Path) -> np.ndarray:
    """The store's thumbs.npy (len(rows), c, h, w) from ``raw``'s ``rows`` (the decoded files), written
    to a temp file and renamed; returned read-only memory-mapped. One channel: gray-form images keep
    their plane, color ones go through PIL's luma conversion, exactly as `datacheck.load` converts them."""
    from PIL import Image

    _, _, th, tw = raw.shape
    k = len(rows)
    final = store / "thumbs.npy"
    tmp = store / ".thumbs.npy.tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(k, c, th, tw))
    per = max(1, (64 << 20) // (3 * th * tw))
    for s in range(0, k, per):
        x = raw[rows[s : s + per]]
        if c == 3:
            out[s:s + len(x)] = x
        else:
            for j in range(len(x)):
                out[s + j, 0] = x[j, 0] if gray_form[s + j] else np.asarray(Image.fromarray(x[j].transpose(1, 2, 0)).convert("L"))
        out.flush()
        _mem.release_pages(out)
        _mem.release_pages(raw)
    out.flush()
    del out
    os.replace(tmp, final)
    return np.load(final, mmap_mode="c")  # copy-on-write: torch wants writable arrays; the file never changes


def _write_index(store: Path, ds: Dataset, stats: dict[str, np.ndarray], keys: np.ndarray,
                 thumb_hw: tuple[int, int], channels: int) -> None:
    """measures.npz (ids, sizes, modes, digests, per-image measures) and index.json, atomically."""
    from .io import atomic_path, write_json

    with atomic_path(store / "measures.npz", suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=np.array(ds.ids, dtype=str), labels=ds.labels, orig_sizes=ds.orig_sizes,
                     orig_modes=np.array(ds.orig_modes, dtype=str), keys=keys,
                     **{f"stat_{k}": v for k, v in stats.items()})
    write_json(store / "index.json", {"version": STORE_VERSION, "source": ds.source, "n_images": len(ds),
                                      "thumbs": "thumbs.npy", "thumb_size": list(thumb_hw), "channels": channels,
                                      "stats": list(STAT_KEYS), "root": ds.root, "class_names": list(ds.class_names),
                                      "resample": ds.policy.get("resample", "bilinear")})


def new_store(out: Path | None) -> tuple[Path, str | None]:
    """The store folder: OUT/store, or a temporary folder when the audit writes nothing."""
    if out is not None:
        return out / "store", None
    tmp = tempfile.mkdtemp(prefix="datacheck-store-")
    return Path(tmp), tmp


def drop_store(tmp: str | None) -> None:
    """Remove a temporary store (the memory maps stay readable until dropped: Linux keeps them)."""
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def decide(source: str, kind: str, listing: _lst.Listing, sizes: np.ndarray, size: tuple[int, int] | None,
           channels: int | None, stream: bool | None) -> bool:
    """Stream (True) or load in memory: ``stream`` when given, else whether an in-memory load would
    need more than `stream_min_bytes` or half the available memory."""
    if stream is not None:
        return bool(stream)
    need = _mem.load_bytes(sizes, size, channels)
    avail = _mem.available_bytes()
    if need > stream_min_bytes() or (avail is not None and need > avail // 2):
        log.info("%s: an in-memory load would need %s: streaming", source, _mem.format_bytes(need))
        return True
    return False
