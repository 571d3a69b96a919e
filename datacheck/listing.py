"""What a folder or CSV manifest source holds, before any pixel is decoded.

The in-memory loader (`datacheck.sources`) and the streaming audit (`datacheck.stream`) both start
from a `Listing`; `header_sizes` reads only image headers, so the bytes a load would need are known
before anything is allocated (`datacheck.memory`).
"""
from __future__ import annotations

import csv
import logging
import os
import stat
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import decode as _dec
from .errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listing:
    """The files of a source, in load order.

    items: ``(id, class name or None, path to open)`` per file.
    unreadable: entries refused before decoding (unlistable folders, empty or repeated manifest rows).
    skipped: hidden entries skipped while walking.
    root: the folder ids are relative to.
    classes: every class name of the whole source (a manifest's other splits included).
    listed: the files were named explicitly (a manifest): a non-image is unreadable, not skipped.
    """

    items: tuple[tuple[str, str | None, str], ...]
    unreadable: tuple[dict[str, str], ...]
    skipped: int
    root: str
    classes: frozenset[str] = frozenset()
    listed: bool = False

    @property
    def paths(self) -> list[str]:
        return [p for _i, _c, p in self.items]


def walk_folder(root: str) -> tuple[list[tuple[tuple[str, ...], str]], int, list[dict[str, str]]]:
    """Files under ``root``: sorted ``(relative path parts, path)``, the number of hidden entries
    skipped, and folders that could not be listed (``{"path", "reason"}``).

    Symbolic links are followed, but a folder already walked (a symlink loop, or a second link to
    one folder) is not entered again: visited folders are tracked by (device, inode). Entries whose
    name starts with "." (``.git``, ``.DS_Store``, macOS ``._x.jpg`` resource forks,
    ``.ipynb_checkpoints``) are skipped and counted.
    """
    files: list[tuple[tuple[str, ...], str]] = []
    problems: list[dict[str, str]] = []
    hidden = 0
    st = os.stat(root)
    seen = {(st.st_dev, st.st_ino)}
    stack: list[tuple[str, ...]] = [()]
    while stack:
        rel = stack.pop()
        folder = os.path.join(root, *rel)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if not rel:
                raise UserError(f"cannot list folder {root!r}: {e.strerror or e}") from None
            problems.append({"path": "/".join(rel) + "/", "reason": f"cannot list folder: {e.strerror or e}"})
            continue
        subdirs = []
        for e in entries:
            parts = rel + (e.name,)
            if e.name.startswith("."):
                hidden += 1
                continue
            try:
                is_dir = e.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if not is_dir:
                files.append((parts, e.path))
                continue
            try:
                s = os.stat(e.path)
            except OSError as err:
                problems.append({"path": "/".join(parts) + "/", "reason": f"cannot open folder: {err.strerror or err}"})
                continue
            key = (s.st_dev, s.st_ino)
            if key in seen:
                log.warning("not entering %s: it leads to a folder already walked (symlink loop or alias)", "/".join(parts))
                continue
            seen.add(key)
            subdirs.append(parts)
        stack.extend(reversed(subdirs))
    files.sort(key=lambda t: t[0])
    return files, hidden, problems


def list_folder(source: str) -> Listing:
    """A folder walked recursively; a file's first-level subfolder is its class (files directly in
    the folder are unlabeled)."""
    if not os.path.isdir(source):
        raise UserError(f"{source!r} is not a folder")
    files, hidden, problems = walk_folder(source)
    if not files and not problems:
        raise UserError(f"folder {source!r} contains no files; expected images, optionally in one subfolder per class")
    items = tuple(("/".join(parts), parts[0] if len(parts) > 1 else None, p) for parts, p in files)
    return Listing(items, tuple(problems), hidden, os.path.abspath(source))


def list_manifest(source: str, split: str = "all") -> Listing:
    """A CSV manifest's rows (see `datacheck.sources.load_csv`); with ``split`` other than ``all``
    only the rows of that split."""
    root = os.path.dirname(os.path.abspath(source))
    try:
        with open(source, newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(65536)
            fh.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:
                dialect = csv.excel
            reader = csv.DictReader(fh, dialect=dialect)
            fields = {(f or "").strip().lower(): f for f in (reader.fieldnames or [])}
            if "path" not in fields:
                raise UserError(
                    f"{source}: no 'path' column; expected a header with path and optionally label, "
                    f"found: {', '.join(repr(f) for f in (reader.fieldnames or [])) or 'nothing'}"
                )
            pcol, lcol, scol = fields["path"], fields.get("label"), fields.get("split")
            if split != "all" and scol is None:
                raise UserError(f"{source}: split={split!r} needs a 'split' column (as datacheck split writes); "
                                f"found: {', '.join(repr(f) for f in (reader.fieldnames or []))}")
            rows, all_labels = [], set()
            for r in reader:
                label = (r.get(lcol) or "").strip() if lcol else ""
                if label:
                    all_labels.add(label)
                if split == "all" or (r.get(scol) or "").strip().lower() == split:
                    rows.append(((r.get(pcol) or "").strip(), label))
    except UserError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{source}: not a readable CSV manifest ({type(e).__name__}: {e})") from None
    if not rows:
        which = f" in split {split!r}" if split != "all" else ""
        raise UserError(f"{source}: the manifest lists no files{which}")
    unreadable: list[dict[str, str]] = []
    first_row: dict[str, int] = {}
    keep: list[tuple[str, str]] = []
    for rowno, (path, label) in enumerate(rows, start=2):  # row 1 is the header
        if not path:
            unreadable.append({"path": f"{os.path.basename(source)} row {rowno}", "reason": "empty path"})
            continue
        if path in first_row:
            unreadable.append({"path": path, "reason": f"listed again in row {rowno} (first in row {first_row[path]}); kept once"})
            continue
        first_row[path] = rowno
        keep.append((path, label))
    items = tuple((p, label or None, p if os.path.isabs(p) else os.path.join(root, p)) for p, label in keep)
    return Listing(items, tuple(unreadable), 0, root, frozenset(all_labels), listed=True)


def list_files(source: str, kind: str, split: str = "all") -> Listing:
    """`list_folder` or `list_manifest` by source ``kind`` (``folder`` or ``csv``)."""
    if kind == "folder":
        return list_folder(source)
    if kind == "csv":
        return list_manifest(source, split)
    raise UserError(f"a {kind} source is not a list of files")


def header_sizes(paths: Sequence[str], max_pixels: int = _dec.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """int64 (N, 2) height and width from each file's header (no pixel is decoded); (0, 0) for a
    file that will not decode (not an image, unreadable header, above ``max_pixels``). EXIF
    rotation is ignored: the area, which is what the estimates need, is the same."""
    from PIL import Image

    out = np.zeros((len(paths), 2), np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, path in enumerate(paths):
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open forever
                    continue
                with Image.open(path, formats=_dec.FORMATS) as im:
                    w, h = im.size
            except Exception:  # anything: the decoder will give the reason later
                continue
            if 0 < w * h <= max_pixels:
                out[k] = (h, w)
    return out
