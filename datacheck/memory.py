"""How much memory there is, and whether an in-memory load fits in it (the guard `datacheck.load`
runs before it allocates, so a folder too big for memory is a one-line error, not a MemoryError
traceback after minutes of decoding).

``DATACHECK_MEMORY_LIMIT`` (bytes, or with a K/M/G/T suffix: ``2G``) replaces the measured
available memory: tests use it, and so can a user sharing a machine.
"""
from __future__ import annotations

import os
import re

import numpy as np

from .errors import UserError

ENV_LIMIT = "DATACHECK_MEMORY_LIMIT"
#: sizes offered in the error message, largest first
_SIZES = (512, 384, 256, 224, 192, 160, 128, 96, 64, 48, 32, 28, 16, 8)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"1500000"``, ``"512M"``, ``"2G"``, ``"1.5GB"`` -> bytes; anything else is a UserError."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise UserError(f"{ENV_LIMIT}={text!r}: expected a number of bytes like 2000000000, 512M or 2G")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_bytes(n: float) -> str:
    """Bytes as people read them: ``1.5 GB``, ``340 MB``."""
    for unit, size in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) is not a number


def available_bytes() -> int | None:
    """Bytes this process may still allocate: ``DATACHECK_MEMORY_LIMIT`` if set, else the smaller of
    /proc/meminfo's MemAvailable and the cgroup's limit minus its usage; None when unknown."""
    env = os.environ.get(ENV_LIMIT)
    if env:
        return parse_bytes(env)
    found: list[int] = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim, use = _read_int(limit), _read_int(usage)
        if lim is not None and use is not None and lim < (1 << 60):  # v1 says "no limit" with a huge number
            found.append(max(lim - use, 0))
            break
    return min(found) if found else None


def load_bytes(sizes: np.ndarray, size: tuple[int, int] | None, channels: int | None) -> int:
    """Peak bytes of an in-memory load of images whose header sizes are ``sizes`` (N, 2) (rows of 0
    are files that will not decode): every decoded array (at ``size`` when given, else its own, 3
    channels unless ``channels`` says 1) plus the assembled (N, C, H, W) array."""
    ok = sizes[(sizes > 0).all(1)] if len(sizes) else sizes
    n = len(ok)
    if n == 0:
        return 0
    c = channels or 3
    if size is None:
        decoded = int((ok[:, 0] * ok[:, 1]).sum()) * 3
        vals, counts = np.unique(ok, axis=0, return_counts=True)
        h, w = (int(v) for v in vals[int(np.argmax(counts))])
    else:
        h, w = size
        decoded = n * h * w * 3
    return decoded + n * c * h * w


def check_load_fits(source: str, sizes: np.ndarray, size: tuple[int, int] | None, channels: int | None) -> None:
    """A one-line UserError when loading images of header ``sizes`` in memory needs more than the
    available memory, naming the ``--size`` that fits."""
    need = load_bytes(sizes, size, channels)
    avail = available_bytes()
    if avail is None or need <= avail:
        return
    n = int((sizes > 0).all(1).sum())
    largest = int(sizes.max()) if len(sizes) else 0
    fits = [s for s in _SIZES if s < max(largest, 1) and load_bytes(sizes, (s, s), channels) <= 0.8 * avail]
    if fits:
        s = fits[0]
        hint = (f"pass --size {s} (size={s} in Python; about {format_bytes(load_bytes(sizes, (s, s), channels))}), "
                f"or use datacheck audit, which streams a folder of any size")
    else:
        hint = "even --size 8 does not fit: load a part of it (a CSV manifest), or use datacheck audit, which streams"
    raise UserError(f"loading {source!r} in memory needs about {format_bytes(need)} ({n:,} images) but "
                    f"{format_bytes(avail)} is available; {hint}")


def release_pages(arr: object) -> None:
    """Tell the kernel it may drop the pages of the memory-mapped file behind ``arr`` (a `numpy.memmap`
    or a view of one) from this process: they are clean file pages, read again on the next touch.
    A pass over a million thumbnails (3 GB at 32x32x3) otherwise leaves every page it read counted in
    the process's resident memory. Anything not backed by a file mapping is left alone."""
    import mmap

    base = arr
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    m = getattr(base, "_mmap", None)
    if m is None or not hasattr(m, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        m.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # closed or not allowed: only memory accounting is at stake
        pass
