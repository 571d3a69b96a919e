"""Dataset sources: detect what the user passed and load it into a `Dataset`.

Each source kind is a loader registered under a name in `SOURCES`; `load` picks one
from the source string (or ``kind=`` when given). Loaders of on-disk formats carry a
``probe(path) -> bool`` attribute that `detect_kind` asks before falling back to "folder".

Kinds: ``digits`` (built in), ``folder``, ``csv``, ``npz``, ``idx`` (MNIST / Fashion-MNIST),
``cifar10`` (python batches). Nothing is ever downloaded, and nothing in the user's input is ever
written, moved or deleted: files are only opened for reading.
"""
from __future__ import annotations

import argparse
import gzip
import logging
import multiprocessing as mp
import os
import pickle
import re
import struct
import sys
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import decode as _dec
from . import listing as _lst
from . import memory as _mem
from .dataset import Dataset
from .errors import UserError
from .listing import walk_folder  # noqa: F401  (moved there; still importable from here)
from .registry import Registry

log = logging.getLogger(__name__)

Loader = Callable[..., Dataset]
SOURCES: Registry[Loader] = Registry("source kind")

#: Folders with at least this many files are decoded by a process pool (see `decode_paths`).
POOL_MIN_FILES = 2000
#: A progress bar is shown (when stderr is a terminal) from this many files on.
PROGRESS_MIN_FILES = 2000

_KINDS_HELP = "'digits', a folder, a .csv manifest, a .npz, MNIST IDX files or a CIFAR-10 batch folder"


# ============================================================================ options
@dataclass(frozen=True)
class LoadOptions:
    """Options every loader understands a subset of (see ``_ALLOWED``).

    size: target (H, W); None = the most common size found.
    channels: 1 or 3; None = 3 if any image has color, else 1.
    resample: PIL filter name used when resizing (see `datacheck.decode.RESAMPLE`).
    max_pixels: files whose header says more pixels than this are refused before decoding.
    workers: decoding processes for large folders (None = the CPUs this process may use).
    progress: True / False forces the progress bar; None shows it for large folders on a terminal.
    split: ``all``, ``train`` or ``test`` for IDX and CIFAR-10 folders; for a CSV manifest with a
        ``split`` column (what ``datacheck split`` writes), the rows whose split is this value
        (``train``, ``val`` or ``test``).
    """

    size: tuple[int, int] | None = None
    channels: int | None = None
    resample: str = "bilinear"
    max_pixels: int = _dec.DEFAULT_MAX_PIXELS
    workers: int | None = None
    progress: bool | None = None
    split: str = "all"


_SHAPE_OPTS = {"size", "channels", "resample"}
_FILE_OPTS = _SHAPE_OPTS | {"max_pixels", "workers", "progress"}
_ALLOWED: dict[str, set[str]] = {
    "digits": _SHAPE_OPTS,
    "npz": _SHAPE_OPTS,
    "folder": _FILE_OPTS,
    "csv": _FILE_OPTS | {"split"},
    "idx": _SHAPE_OPTS | {"split"},
    "cifar10": _SHAPE_OPTS | {"split"},
}


def parse_size(value: Any) -> tuple[int, int] | None:
    """``None``, ``32``, ``"32x24"``, ``"32,24"`` or ``(32, 24)`` -> (H, W) or None."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            parts = [p for p in re.split(r"[x,X ]+", value.strip()) if p]
            vals = [int(p) for p in parts]
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            vals = [int(value)]
        else:
            vals = [int(v) for v in value]
    except (TypeError, ValueError):
        vals = []
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1 or max(vals) > 65535:
        raise UserError(f"size must be H x W in pixels like 32 or 32x32 or (32, 32), got {value!r}")
    return (vals[0], vals[1])


def parse_options(kind: str, options: dict[str, Any]) -> LoadOptions:
    """Validate loader ``options`` for ``kind``; an unknown or misplaced option is a UserError."""
    allowed = _ALLOWED.get(kind, _FILE_OPTS)
    bad = sorted(set(options) - allowed)
    if bad:
        raise UserError(
            f"the {kind} source does not take {', '.join(bad)}; it takes: {', '.join(sorted(allowed))}"
        )
    o = dict(options)
    if "size" in o:
        o["size"] = parse_size(o["size"])
    ch = o.get("channels")
    if ch is not None:
        try:
            ch = int(ch)
        except (TypeError, ValueError):
            ch = -1
        if ch not in (1, 3):
            raise UserError(f"channels must be 1, 3 or None, got {options['channels']!r}")
        o["channels"] = ch
    if "resample" in o:
        name = str(o["resample"]).lower()
        if name not in _dec.RESAMPLE:
            raise UserError(f"unknown resample filter {o['resample']!r}; expected one of: {', '.join(_dec.RESAMPLE)}")
        o["resample"] = name
    if "max_pixels" in o:
        o["max_pixels"] = _positive_int("max_pixels", o["max_pixels"], "a positive integer")
    if o.get("workers") is not None:
        o["workers"] = _positive_int("workers", o["workers"], "a positive integer or None")
    if "progress" in o and o["progress"] is not None and not isinstance(o["progress"], bool):
        raise UserError(f"progress must be True, False or None, got {o['progress']!r}")
    allowed_splits = ("all", "train", "val", "test") if kind == "csv" else ("all", "train", "test")
    if "split" in o and o["split"] not in allowed_splits:
        raise UserError(f"split must be one of {', '.join(allowed_splits)}; got {o['split']!r}")
    return LoadOptions(**o)


def _positive_int(name: str, value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be {what}, got {value!r}")
    return int(value)


# ============================================================================ detection / load
def detect_kind(source: str) -> str:
    """Name of the source kind for ``source`` (a built-in name or a path)."""
    if source == "digits":  # the built-in name wins over a file of that name
        return "digits"
    p = Path(source)
    try:
        exists = p.exists()
    except OSError:  # e.g. a name too long for the file system
        exists = False
    if not exists:
        raise UserError(f"source {source!r} does not exist; expected {_KINDS_HELP}")
    if p.is_dir():
        for kind in ("cifar10", "idx"):
            if kind in SOURCES and _looks_like(kind, p):
                return kind
        return "folder"
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if "idx" in SOURCES and _looks_like("idx", p):
        return "idx"
    raise UserError(f"cannot tell what kind of source {source!r} is; expected {_KINDS_HELP}")


def _looks_like(kind: str, p: Path) -> bool:
    probe = getattr(SOURCES.get(kind), "probe", None)
    try:
        return bool(probe and probe(p))
    except OSError:
        return False


def load(source: str | os.PathLike, *, kind: str | None = None, **options: Any) -> Dataset:
    """Load ``source`` into a `Dataset`.

    Args:
        source: ``"digits"``, a folder (first-level subfolders are classes), a CSV manifest with a
            ``path`` column, an ``.npz`` with ``images``, MNIST/Fashion-MNIST IDX files or a CIFAR-10
            python batch folder.
        kind: force a source kind instead of detecting it (one of `SOURCES`).
        **options: see `LoadOptions`: ``size=(H, W)``, ``channels=1|3``,
            ``resample="bilinear"``, ``max_pixels``, ``workers``, ``progress``, ``split``.

    Raises:
        UserError: the source does not exist, is of an unknown kind, has no decodable image, or an
            option is unknown or invalid. Bad individual files are never an error: they are
            listed in ``Dataset.unreadable``.
    """
    source = os.fspath(source)
    kind = kind or detect_kind(source)
    loader = SOURCES.get(kind)
    if kind != "digits" and not os.path.exists(source):
        raise UserError(f"source {source!r} does not exist; expected {_KINDS_HELP}")
    try:
        return loader(source, **options)
    except UserError:
        raise
    except (OSError, MemoryError) as e:  # the input as a whole could not be read: say so in one line
        raise UserError(f"cannot load {source!r} as {kind}: {type(e).__name__}: {e}") from e


def as_dataset(source_or_dataset: Dataset | str | os.PathLike) -> Dataset:
    """``source_or_dataset`` itself when it is a `Dataset`, else `load` of it."""
    if isinstance(source_or_dataset, Dataset):
        return source_or_dataset
    return load(source_or_dataset)


# ============================================================================ shape policy
def _natural_key(name: str) -> tuple[int, Any]:
    """Numeric names sort by value (2 before 10), others alphabetically after them."""
    try:
        return (0, float(name), name)  # type: ignore[return-value]
    except ValueError:
        return (1, name)


def _most_common_size(sizes: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], int]:
    counts = Counter(sizes)
    # ties: the larger area, then the larger height: deterministic whatever the file order
    best = max(counts.items(), key=lambda kv: (kv[1], kv[0][0] * kv[0][1], kv[0]))
    return best[0], best[1]


def _policy_reason(opts: LoadOptions, size: tuple[int, int], n_size: int, n: int, channels: int, n_color: int) -> str:
    if opts.size is not None:
        s = f"size {size[0]}x{size[1]} given"
    else:
        s = f"most common size {size[0]}x{size[1]} ({n_size} of {n} images)"
    if opts.channels is not None:
        c = f"{channels} channel(s) given"
    elif channels == 3:
        c = f"RGB because {n_color} of {n} images have color"
    else:
        c = "grayscale because no image has color"
    return f"{s}; {c}"


def _arrays_with_policy(imgs: np.ndarray, opts: LoadOptions, reason: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply ``size`` / ``channels`` to in-memory uint8 (N, C, H, W) arrays (IDX, CIFAR, npz, digits)."""
    n, c, h, w = imgs.shape
    size = opts.size or (h, w)
    channels = opts.channels or c
    if (size, channels) == ((h, w), c):
        return imgs, {"size": [h, w], "channels": c, "resample": None, "reason": reason, "n_resized": 0}
    out = np.empty((n, channels, *size), np.uint8)
    for i in range(n):
        a = imgs[i, 0] if c == 1 else imgs[i].transpose(1, 2, 0)
        out[i] = _dec.to_channels(_dec.resize(a, size, opts.resample), channels)
    pol = {
        "size": list(size), "channels": channels,
        "resample": opts.resample if size != (h, w) else None,
        "reason": f"{reason}, converted from {c}x{h}x{w} as asked",
        "n_resized": n if size != (h, w) else 0,
    }
    return out, pol


# ============================================================================ decoding files
def progress_bar(n: int, progress: bool | None, desc: str) -> Any:
    """A tqdm bar (rate and time left) over ``n`` files, or None: shown when ``progress`` says so, or
    (None) on a terminal from `PROGRESS_MIN_FILES` files on. Output only on stderr."""
    show = progress if progress is not None else (n >= PROGRESS_MIN_FILES and sys.stderr.isatty())
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=n, desc=desc, unit="file", file=sys.stderr, leave=False)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _pool_context() -> mp.context.BaseContext | None:
    """The start method for decoding workers, or None to decode serially.

    Only fork: forkserver and spawn re-import the caller's main module in every worker, which
    re-runs a script that lacks an ``if __name__ == "__main__"`` guard (measured: it did, and
    wrote files twice). Forked workers only run PIL and numpy code, never torch or OpenMP, so a
    parent that has torch threads running does not deadlock them. Where fork is not the safe
    default (macOS, Windows) decoding stays serial.
    """
    if sys.platform.startswith("linux"):
        return mp.get_context("fork")
    return None


def decode_paths(paths: Sequence[str], opts: LoadOptions, *, listed: bool = False, desc: str = "decoding") -> list[_dec.Decoded]:
    """Decode ``paths`` (in order) with `datacheck.decode.decode_file`.

    Measured on this project's 2-core machine (benchmarks/bench_decode_pool.py, machine shared and
    noisy): 12,000 32x32 PNGs took 2.1 s serially, 2.5 s with 2 threads (the per-file work is
    mostly Python under the GIL, so threads lose) and 1.3-1.5 s with 2 processes; at 3,000 files
    the process pool's start-up ate the gain. With the machine saturated by other jobs (load 10
    on 2 cores) no pool helped (0.86-0.92x at 2,500-6,000 files), so the pool only pays when a
    second core is actually free. Hence a process pool from `POOL_MIN_FILES` files on,
    serial below (``workers=1`` forces serial), and serial again if the pool cannot start.
    """
    jobs = [(p, opts.max_pixels, opts.size, opts.resample, listed) for p in paths]
    n = len(jobs)
    bar = progress_bar(n, opts.progress, desc)
    workers = min(opts.workers or _cpu_count(), max(n, 1))
    results: list[_dec.Decoded] = []
    try:
        ctx = _pool_context()
        if workers > 1 and n >= POOL_MIN_FILES and ctx is not None:
            try:
                chunk = max(16, min(256, n // (workers * 8)))
                with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
                    for r in ex.map(_dec.decode_job, jobs, chunksize=chunk):
                        results.append(r)
                        if bar is not None:
                            bar.update(1)
                return results
            except (OSError, RuntimeError, pickle.PicklingError) as e:  # incl. BrokenProcessPool
                log.warning("decoding in worker processes failed (%s); decoding serially", e)
                if bar is not None:
                    bar.reset()
                results = []
        for job in jobs:
            results.append(_dec.decode_job(job))
            if bar is not None:
                bar.update(1)
        return results
    finally:
        if bar is not None:
            bar.close()


def _assemble(
    items: list[tuple[str, str | None, _dec.Decoded]],
    *,
    source: str,
    root: str | None,
    unreadable: list[dict[str, str]],
    skipped: int,
    opts: LoadOptions,
    classes: set[str] | None = None,
) -> Dataset:
    """Build the dataset from decoded items ``(id, class name or None, Decoded)`` under the policy.
    ``classes``: every class name of the whole source when ``items`` are a part of it (one split of a
    manifest), so the part's label numbers agree with the other parts'."""
    ok = [(i, c, d) for i, c, d in items if d.status == "ok"]
    for i, _c, d in items:
        if d.status == "unreadable":
            unreadable.append({"path": i, "reason": d.reason})
        elif d.status == "skipped":
            skipped += 1
    if not ok:
        first = "; ".join(f"{u['path']}: {u['reason']}" for u in unreadable[:3])
        more = f" (first: {first})" if first else ""
        raise UserError(
            f"no decodable image in {source!r}: {len(unreadable)} unreadable, {skipped} skipped{more}"
        )
    n = len(ok)
    sizes = [d.size for _i, _c, d in ok]
    common, n_common = _most_common_size(sizes)
    size = opts.size or common
    n_color = sum(d.color for _i, _c, d in ok)
    channels = opts.channels or (3 if n_color else 1)
    images = np.empty((n, channels, *size), np.uint8)
    n_resized = 0
    for k, (_i, _c, d) in enumerate(ok):
        a = d.array
        if a.shape[:2] != size:
            a = _dec.resize(a, size, opts.resample)
        if d.size != size:
            n_resized += 1
        images[k] = _dec.to_channels(a, channels)
    found = {c for _i, c, _d in ok if c is not None}
    class_names = tuple(sorted(found | (classes or set()), key=_natural_key))
    index = {c: j for j, c in enumerate(class_names)}
    labels = np.array([index[c] if c is not None else -1 for _i, c, _d in ok], np.int64)
    policy = {
        "size": list(size),
        "channels": channels,
        "resample": opts.resample,
        "alpha_background": "white",
        "reason": _policy_reason(opts, size, n_common, n, channels, n_color),
        "n_resized": n_resized,
        "n_color": n_color,
    }
    return Dataset(
        images=images,
        labels=labels,
        ids=tuple(i for i, _c, _d in ok),
        class_names=class_names,
        source=source,
        root=root,
        orig_sizes=np.array(sizes, np.int32).reshape(n, 2),
        orig_modes=tuple(d.mode for _i, _c, d in ok),
        unreadable=tuple(unreadable),
        skipped=skipped,
        policy=policy,
    )


# ============================================================================ folder / csv
def _load_listing(source: str, listing: _lst.Listing, opts: LoadOptions, desc: str) -> Dataset:
    """Decode a listing's files and assemble them, after checking the load fits in memory."""
    paths = listing.paths
    _mem.check_load_fits(source, _lst.header_sizes(paths, opts.max_pixels), opts.size, opts.channels)
    decoded = decode_paths(paths, opts, listed=listing.listed, desc=desc)
    items = [(i, c, d) for (i, c, _p), d in zip(listing.items, decoded)]
    return _assemble(items, source=source, root=listing.root, unreadable=list(listing.unreadable),
                     skipped=listing.skipped, opts=opts, classes=set(listing.classes) or None)


@SOURCES.register("folder")
def load_folder(source: str, **options: Any) -> Dataset:
    """A folder of images, walked recursively. A file's first-level subfolder is its class; files
    directly in the folder are unlabeled (-1). Content decides what is an image (see
    `datacheck.decode`); ids are paths relative to the folder with forward slashes."""
    opts = parse_options("folder", options)
    listing = _lst.list_folder(source)
    return _load_listing(source, listing, opts, f"loading {os.path.basename(os.path.abspath(source))}")


@SOURCES.register("csv")
def load_csv(source: str, **options: Any) -> Dataset:
    """A CSV manifest: a ``path`` column (relative to the CSV's folder, or absolute) and an optional
    ``label`` column (any strings; empty = unknown). Class names are the labels found, sorted
    (numeric names by value). ids are the paths as written. A listed file that is missing or not
    an image is unreadable, not an error; a path listed twice is kept once. With ``split=`` other
    than ``all``, only the rows of that value in the ``split`` column are loaded (class names still
    come from every row, so the splits of one manifest number their classes alike)."""
    opts = parse_options("csv", options)
    listing = _lst.list_manifest(source, opts.split)
    return _load_listing(source, listing, opts, f"loading {os.path.basename(source)}")


# ============================================================================ npz
@SOURCES.register("npz")
def load_npz(source: str, **options: Any) -> Dataset:
    """An ``.npz`` with ``images`` uint8 (N, H, W) or (N, H, W, C), optional ``labels``, ``ids``,
    ``class_names``. Loaded without pickle."""
    opts = parse_options("npz", options)
    try:
        with open(source, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":  # else np.load would try it as a pickle
                raise UserError(f"{source}: not an .npz (zip) archive; expected one written by numpy.savez or Dataset.save")
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
    if imgs.shape[3] == 4:  # keep the color channels; an array carries no compositing intent
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
    if ids is not None and len(ids) != n:
        raise UserError(f"{source}: ids must have {n} entries, got {len(ids)}")
    base = os.path.basename(source)
    imgs, policy = _arrays_with_policy(imgs, opts, "array")
    return Dataset(
        images=imgs,
        labels=labels,
        ids=tuple(ids) if ids is not None else tuple(f"{base}:{i}" for i in range(n)),
        class_names=tuple(names),
        source=source,
        policy=policy,
    )


# ============================================================================ digits
@SOURCES.register("digits")
def load_digits(source: str = "digits", **options: Any) -> Dataset:
    """scikit-learn's bundled 1,797 8x8 digits (values 0..16 scaled to 0..255)."""
    opts = parse_options("digits", options)
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    imgs = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    imgs, policy = _arrays_with_policy(imgs, opts, "built-in")
    return Dataset(
        images=imgs,
        labels=d.target.astype(np.int64),
        ids=tuple(f"digits:{i}" for i in range(len(imgs))),
        class_names=tuple(str(c) for c in range(10)),
        source="digits",
        policy=policy,
    )


# ============================================================================ MNIST IDX
_IDX_IMAGES = re.compile(r"^(?P<prefix>.*?)[-._]?images[-._]idx3[-._]ubyte(?P<gz>\.gz)?$", re.IGNORECASE)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _read_head(path: Path, n: int = -1) -> bytes:
    """The first ``n`` bytes (all with -1) of a raw or gzipped file, decompressed."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        return fh.read(n)


def _idx_magic(head: bytes) -> bool:
    """An IDX magic number: two zero bytes, a known dtype code, 1 to 4 dimensions."""
    return len(head) >= 4 and head[:2] == b"\0\0" and head[2] in _IDX_DTYPES and 1 <= head[3] <= 4


def _probe_idx(path: Path) -> bool:
    if path.is_dir():
        return any(_IDX_IMAGES.match(p.name) for p in path.iterdir() if p.is_file())
    try:
        head = _read_head(path, 4)
    except (OSError, EOFError, zlib.error):
        return False
    return _idx_magic(head)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (raw or .gz) as a numpy array of its declared dtype and shape."""
    path = Path(path)
    try:
        data = _read_head(path)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read IDX file ({type(e).__name__}: {e})") from None
    if not _idx_magic(data):
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    head = 4 + 4 * ndim
    if len(data) < head:
        raise UserError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, data[4:head])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    want = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - head != want:
        raise UserError(f"{path}: IDX header says {dims} ({want} bytes) but the file holds {len(data) - head} bytes")
    return np.frombuffer(data, dtype, offset=head).reshape(dims)


def _idx_companion(images: Path) -> Path:
    name = re.sub("images", "labels", images.name, count=1, flags=re.IGNORECASE)
    name = re.sub("idx3", "idx1", name, count=1, flags=re.IGNORECASE)
    plain = name[:-3] if name.lower().endswith(".gz") else name
    for cand in (name, plain, plain + ".gz"):
        if (images.parent / cand).is_file():
            return images.parent / cand
    raise UserError(
        f"labels file {name} not found next to {images.name} in {images.parent}; "
        f"nothing is downloaded: put the matching labels file there"
    )


@SOURCES.register("idx")
def load_idx(source: str, **options: Any) -> Dataset:
    """MNIST / Fashion-MNIST IDX files: a folder holding ``train-images-idx3-ubyte[.gz]`` +
    ``train-labels-idx1-ubyte[.gz]`` (and/or ``t10k-...``), or an images file itself. ``split``
    picks train / test / all files in a folder. Class names are Fashion-MNIST's when the path
    mentions "fashion", else the digits. ids are ``<prefix>:<index>`` (``train:0``)."""
    opts = parse_options("idx", options)
    p = Path(source)
    if p.is_dir():
        found = sorted((f for f in p.iterdir() if f.is_file() and _IDX_IMAGES.match(f.name)),
                       key=lambda f: (not f.name.lower().startswith("train"), f.name))
        # one file per prefix: prefer the raw file over the .gz when both are there
        by_prefix: dict[str, Path] = {}
        for f in found:
            pre = _IDX_IMAGES.match(f.name).group("prefix") or f.name  # type: ignore[union-attr]
            if pre not in by_prefix or not f.name.lower().endswith(".gz"):
                by_prefix[pre] = f
        if opts.split != "all":
            want = ("train",) if opts.split == "train" else ("t10k", "test")
            by_prefix = {k: v for k, v in by_prefix.items() if k.lower().startswith(want)}
        if not by_prefix:
            which = "" if opts.split == "all" else f"{opts.split} "
            raise UserError(f"{source}: no {which}IDX images file (e.g. train-images-idx3-ubyte.gz) found")
    else:
        if opts.split != "all":
            raise UserError("split= applies to a folder of IDX files; pass the folder or drop split")
        m = _IDX_IMAGES.match(p.name)
        pre = (m.group("prefix") if m else "") or p.name
        by_prefix = {pre: p}
    parts_i, parts_l, ids = [], [], []
    for pre, img_path in by_prefix.items():
        imgs = read_idx(img_path)
        if imgs.dtype != np.uint8 or imgs.ndim != 3:
            raise UserError(f"{img_path}: expected uint8 images (N, H, W), got {imgs.dtype} {imgs.shape}")
        lab_path = _idx_companion(img_path)
        labels = read_idx(lab_path)
        if labels.ndim != 1 or len(labels) != len(imgs):
            raise UserError(f"{lab_path}: expected {len(imgs)} labels, got shape {labels.shape}")
        parts_i.append(imgs)
        parts_l.append(labels.astype(np.int64))
        ids.extend(f"{pre}:{i}" for i in range(len(imgs)))
    shapes = {a.shape[1:] for a in parts_i}
    if len(shapes) != 1:
        raise UserError(f"{source}: IDX files of different image sizes {sorted(shapes)}")
    images = np.concatenate(parts_i)[:, None]
    labels = np.concatenate(parts_l)
    k = int(labels.max(initial=-1)) + 1
    if "fashion" in str(p.resolve()).lower() and k <= 10:
        names = FASHION_MNIST_CLASSES
    else:
        names = tuple(str(c) for c in range(max(k, 10)))
    images, policy = _arrays_with_policy(images, opts, "IDX files")
    return Dataset(images=images, labels=labels, ids=tuple(ids), class_names=names, source=source,
                   root=str(p.resolve() if p.is_dir() else p.resolve().parent), policy=policy)


load_idx.probe = _probe_idx  # type: ignore[attr-defined]


# ============================================================================ CIFAR-10
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)
_CIFAR_FILES = (*CIFAR10_TRAIN, *CIFAR10_TEST, "batches.meta")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Pickle runs code named by the file, so a batch may only name what CIFAR batches need:
    numpy array reconstruction. Anything else (os.system ...) is refused, not executed."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        # pickle protocol 5 (numpy >= 1.16 writing batches again): rebuilds an array from bytes
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_dir(path: Path) -> Path | None:
    for d in (path, path / "cifar-10-batches-py"):
        if d.is_dir() and any((d / f).is_file() for f in _CIFAR_FILES):
            return d
    return None


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            obj = _ArraysOnlyUnpickler(fh, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a CIFAR-10 batch (expected a pickled dict, got {type(obj).__name__})")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


@SOURCES.register("cifar10")
def load_cifar10(source: str, **options: Any) -> Dataset:
    """CIFAR-10 python batches: a folder (or its parent) with ``data_batch_1..5``, ``test_batch``
    and ``batches.meta``. Only those exact files are read, with a pickle loader that refuses
    anything but numpy arrays. ``split`` = all (train then test), train or test. ids are
    ``<batch>:<index>``."""
    opts = parse_options("cifar10", options)
    d = _cifar_dir(Path(source))
    if d is None:
        raise UserError(f"{source}: no CIFAR-10 batches (data_batch_1..5, test_batch, batches.meta) found")
    names = {"all": CIFAR10_TRAIN + CIFAR10_TEST, "train": CIFAR10_TRAIN, "test": CIFAR10_TEST}[opts.split]
    for f in (*names, "batches.meta"):
        if not (d / f).is_file():
            raise UserError(
                f"CIFAR-10 file {f} is missing from {d}; nothing is downloaded: put the python batches there"
                + (" (or pass split='test' / 'train')" if opts.split == "all" else "")
            )
    meta = _unpickle(d / "batches.meta")
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", []))
    imgs, labels, ids = [], [], []
    for f in names:
        b = _unpickle(d / f)
        data, lab = b.get("data"), b.get("labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise UserError(f"{d / f}: 'data' must be uint8 (N, 3072), got {getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
        lab = np.asarray(lab if lab is not None else [], dtype=np.int64)
        if lab.shape != (len(data),):
            raise UserError(f"{d / f}: expected {len(data)} labels, got {lab.shape}")
        imgs.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
        ids.extend(f"{f}:{i}" for i in range(len(data)))
    images = np.ascontiguousarray(np.concatenate(imgs))
    labels_a = np.concatenate(labels)
    if not class_names:
        class_names = tuple(str(c) for c in range(int(labels_a.max(initial=-1)) + 1))
    if labels_a.size and (labels_a.min() < 0 or labels_a.max() >= len(class_names)):
        raise UserError(f"{d}: labels outside 0..{len(class_names) - 1}")
    images, policy = _arrays_with_policy(images, opts, "CIFAR-10 batches")
    return Dataset(images=images, labels=labels_a, ids=tuple(ids), class_names=class_names, source=source,
                   root=str(d.resolve()), policy=policy)


load_cifar10.probe = lambda p: _cifar_dir(Path(p)) is not None  # type: ignore[attr-defined]


# ============================================================================ CLI helpers
def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--kind --size --channels --resample --max-pixels --split`` to a subcommand's parser."""
    g = parser.add_argument_group("loading")
    g.add_argument("--kind", help=f"source kind instead of detecting it: {', '.join(SOURCES)}")
    g.add_argument("--size", metavar="HxW", help="resize every image to HxW (default: the most common size)")
    g.add_argument("--channels", type=int, metavar="C", help="1 or 3 (default: 3 if any image has color)")
    g.add_argument("--resample", metavar="FILTER", help=f"resize filter: {', '.join(_dec.RESAMPLE)} (default bilinear)")
    g.add_argument("--max-pixels", type=int, metavar="N", help=f"refuse images above N pixels (default {_dec.DEFAULT_MAX_PIXELS:,})")
    g.add_argument("--split", help="IDX / CIFAR-10 folders: all, train or test; a CSV with a split column "
                   "(datacheck split's): train, val or test (default all)")


def load_from_args(args: argparse.Namespace, source: str | None = None) -> Dataset:
    """`load` with the options `add_load_arguments` parsed (only those given)."""
    opts = {k: getattr(args, k, None) for k in ("size", "channels", "resample", "max_pixels", "split")}
    return load(source if source is not None else args.source, kind=getattr(args, "kind", None),
                **{k: v for k, v in opts.items() if v is not None})
