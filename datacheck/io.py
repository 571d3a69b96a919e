"""Atomic output helpers: write to a temp file in the same folder, then rename.

A kill at any moment leaves either the old file or the new one, never half a file.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` is ``folder`` or lies under it (both resolved, symlinks followed)."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def refuse_inside_source(path: str | os.PathLike, root: str | os.PathLike | None, flag: str, advice: str) -> None:
    """UserError when an output ``path`` is the source folder ``root`` or lies under it (``root`` None:
    the source is not made of files). No command writes into its input: a file added there would also
    be read back as data next time."""
    if root is not None and is_inside(path, root):
        from .errors import UserError

        raise UserError(f"{flag} {path} is inside the source folder {root}; {advice}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the result the permissions a plain open() would (0666 & ~umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` as UTF-8. An item id from a file name that is not UTF-8 holds lone surrogates, which
    UTF-8 cannot encode: they are written as \\xNN escapes, as `datacheck.decode.display_name` prints
    them (the file stays valid UTF-8; other text is unchanged)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").encode("utf-8")
    write_bytes(path, data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (no bare NaN or Infinity, which jq and JSON.parse refuse): see `json_safe`."""
    write_text(path, dumps(obj, indent=2) + "\n")


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of `json_safe` (obj) with ``allow_nan=False``: every writer's one way to JSON."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold: non-finite floats become None (null), numpy
    scalars and arrays python numbers and lists, paths strings, tuples lists."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int)):
        return obj
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def fmt_num(v: Any, digits: int = 3, missing: str = "n/a") -> str:
    """A number as both HTML reports print it: at most ``digits`` significant digits for fractions
    (``0.00141``, ``3.96``, ``25``), whole numbers from 100 up (``1885``, ``12,345``), ints with thousands
    separators, booleans as ``true``/``false``; None, NaN and infinities as ``missing``."""
    if v is None:
        return missing
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(x):
        return missing
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"
