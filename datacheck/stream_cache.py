"""Per-file results of the streaming audit, kept so a killed audit resumes and a re-audit measures only
the files that were added or changed.

The cache is a folder (``OUT/store/cache``) of segments, each a folder renamed into place when complete
(so a kill leaves whole segments and at most a ``.tmp`` one, which is ignored): ``meta.npz`` (file
identity and measures) and ``thumbs.npy`` (3-channel thumbnails, memory-mapped on reading). A file's
identity is its path, size and modification time; with ``identity="content"`` (``--identity content``)
a file whose modification time changed but whose bytes did not (a ``touch``, a copy that kept the
bytes) is recognised by a hash of its bytes and not measured again; ``settings.json`` records what the measures depend
on (store version, thumbnail size, resampling filter, pixel limit, working-memory budget, whether files
were listed). A cache written with other settings or by another version is ignored, with one warning
line, and replaced.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: files per segment: at most this many files are measured again after a kill
SEGMENT_FILES = 512
#: segments kept before they are merged into one at the end of a run (4,096 x 512 = 2M files: merging
#: rewrites every thumbnail, 3 GB at 1M files of 32x32, so a first audit of a large folder does not)
MAX_SEGMENTS = 4096
#: ... or when more than this share of the cached results are stale (files removed or changed since)
STALE_SHARE = 0.10

_STATUS = ("ok", "unreadable", "skipped")


@dataclass(frozen=True)
class Measured:
    """What one file gave (small and picklable: this is all a worker sends back)."""

    status: str
    reason: str = ""
    size: tuple[int, int] = (0, 0)
    mode: str = ""
    color: bool = False
    gray_form: bool = False
    stats: np.ndarray | None = None  # float64 (8,) in STAT_KEYS order
    chan: np.ndarray | None = None  # float64 (7,): per-channel sums (3), sums of squares (3), pixels
    key: bytes = b""
    thumb: np.ndarray | None = None  # uint8 (h, w) or (h, w, 3)
    shrunk: int = 1


#: identity modes: stat (path, size, modification time) or content (also a hash of the bytes)
IDENTITIES = ("stat", "content")


def content_digest(path: str) -> int:
    """A non-zero int64 from the blake2b digest of the file's bytes (0 marks "not computed")."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return int.from_bytes(h.digest(), "little", signed=True) or 1


def identity(path: str) -> tuple[int, int] | None:
    """(size, modification time in ns) of ``path``, or None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def known_sizes(folder: Path, paths: list[str], max_pixels: int) -> np.ndarray:
    """int64 (N, 2): each path's decoded (height, width) from the cache in ``folder`` when the file is
    unchanged since (same size and modification time) and decoded then, else (-1, -1). A re-audit of a
    million files reads the headers of the new ones only (`datacheck.listing.header_sizes` opens every
    file: about 100 s at 1M). Sizes above ``max_pixels`` read as (0, 0), as the header reader gives them."""
    out = np.full((len(paths), 2), -1, np.int64)
    where: dict[str, tuple[int, int, int, int]] = {}
    for seg in sorted(p for p in folder.glob("seg-*") if not p.name.endswith(".tmp")):
        try:
            with np.load(seg / "meta.npz", allow_pickle=False) as z:
                m = {k: z[k] for k in ("path", "size", "mtime", "status", "orig")}
        except (OSError, ValueError, KeyError):
            continue
        ok = m["status"] == 0
        for p, sz, mt, hw in zip(m["path"][ok].tolist(), m["size"][ok].tolist(), m["mtime"][ok].tolist(), m["orig"][ok].tolist()):
            where[p] = (sz, mt, hw[0], hw[1])
    if not where:
        return out
    for k, p in enumerate(paths):
        w = where.get(p)
        if w is not None and identity(p) == (w[0], w[1]):
            h, wd = w[2], w[3]
            out[k] = (h, wd) if 0 < h * wd <= max_pixels else (0, 0)
    return out


class Cache:
    """Read the cached results in ``folder`` when their settings match, and add new ones segment by
    segment. ``thumb_hw`` of a matching cache wins over the caller's (adding files must not change
    the thumbnail size of every file already measured)."""

    def __init__(self, folder: Path, settings: dict[str, Any], identity: str = "stat") -> None:
        if identity not in IDENTITIES:
            from .errors import UserError

            raise UserError(f"--identity must be stat or content, got {identity!r}")
        self.content = identity == "content"
        self.digests: dict[str, int] = {}  # content digests computed this run, by path
        self.n_touched = 0  # files recognised by content although their modification time changed
        self.folder = folder
        self.settings = dict(settings)
        self.lookup: dict[str, tuple[int, int]] = {}
        self.segments: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
        self.buffer: list[tuple[str, tuple[int, int], Any]] = []
        self.hits = 0
        self._next = 0
        self._read()

    # ------------------------------------------------------------------ reading
    def _read(self) -> None:
        sfile = self.folder / "settings.json"
        if not sfile.is_file():
            self._reset()
            return
        try:
            old = json.loads(sfile.read_text())
        except (OSError, ValueError):
            old = None
        mine = {k: v for k, v in self.settings.items() if k != "thumb_hw"}
        theirs = {k: v for k, v in (old or {}).items() if k != "thumb_hw"}
        if old is None or mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            if theirs.get("version") != mine.get("version"):
                why = f"by another version of datacheck (store version {theirs.get('version')}, not {mine.get('version')})"
            else:
                why = "with other settings (" + ", ".join(diff) + ")"
            log.warning("the cache in %s was written %s; measuring every file again", self.folder, why)
            self._reset()
            return
        self.settings["thumb_hw"] = list(old["thumb_hw"])
        for seg in sorted(p for p in self.folder.glob("seg-*") if not p.name.endswith(".tmp")):
            try:
                with np.load(seg / "meta.npz", allow_pickle=False) as z:
                    meta = {k: z[k] for k in z.files}
                thumbs = np.load(seg / "thumbs.npy", mmap_mode="r")
            except (OSError, ValueError, KeyError) as e:  # a damaged segment: measure its files again
                log.warning("ignoring the damaged cache segment %s (%s)", seg.name, e)
                continue
            s = len(self.segments)
            self.segments.append((meta, thumbs))
            for row, p in enumerate(meta["path"].tolist()):
                self.lookup[p] = (s, row)
            self._next = max(self._next, int(seg.name.split("-")[1]) + 1)

    def _reset(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        from .io import write_json

        write_json(self.folder / "settings.json", self.settings)

    @property
    def thumb_hw(self) -> tuple[int, int]:
        return tuple(self.settings["thumb_hw"])  # type: ignore[return-value]

    def get(self, path: str, ident: tuple[int, int] | None) -> Any:
        """The cached `Measured` of ``path`` when its identity is unchanged, else None."""
        where = self.lookup.get(path)
        if where is None or ident is None:
            return None
        meta, thumbs = self.segments[where[0]]
        r = where[1]
        touched = False
        if (int(meta["size"][r]), int(meta["mtime"][r])) != ident:
            old = int(meta["digest"][r]) if "digest" in meta else 0
            if not (self.content and old and int(meta["size"][r]) == ident[0] and self._digest(path) == old):
                return None
            touched = True  # same bytes, new modification time: reuse, and record the new identity below
        self.hits += 1
        status = _STATUS[int(meta["status"][r])]
        if status != "ok":
            m = Measured(status, reason=str(meta["reason"][r]))
        else:
            m = self._measured(meta, thumbs, r)
        if touched:
            self.n_touched += 1
            self.buffer.append((path, ident, m))
        return m

    def locate(self, paths: list[str], idents: list[tuple[int, int] | None]) -> np.ndarray:
        """int64 (N, 2): (segment, row) of each path's cached result when the file is unchanged (as
        `get` decides, touched files included), else (-1, -1). Counts hits like `get`; the caller copies
        the results from ``self.segments`` in bulk instead of one `Measured` per file."""
        out = np.full((len(paths), 2), -1, np.int64)
        sizes = [m["size"] for m, _t in self.segments]
        mtimes = [m["mtime"] for m, _t in self.segments]
        for j, (p, ident) in enumerate(zip(paths, idents)):
            w = self.lookup.get(p)
            if w is None or ident is None:
                continue
            s, r = w
            if (int(sizes[s][r]), int(mtimes[s][r])) != ident:
                if self.get(p, ident) is None:  # changed (or, by content, touched: `get` records it)
                    continue
                self.hits -= 1  # counted below
            self.hits += 1
            out[j] = w
        return out

    def _digest(self, path: str) -> int:
        if path not in self.digests:
            try:
                self.digests[path] = content_digest(path)
            except OSError:
                self.digests[path] = 0
        return self.digests[path]

    @staticmethod
    def _measured(meta: dict[str, np.ndarray], thumbs: np.ndarray, r: int) -> Measured:
        return Measured("ok", size=tuple(int(v) for v in meta["orig"][r]), mode=str(meta["mode"][r]),
                        color=bool(meta["color"][r]), gray_form=bool(meta["gray_form"][r]),
                        stats=meta["stats"][r].copy(), chan=meta["chan"][r].copy(), key=bytes(meta["key"][r]),
                        thumb=np.asarray(thumbs[r]).transpose(1, 2, 0), shrunk=int(meta["shrunk"][r]))

    # ------------------------------------------------------------------ writing
    def add(self, path: str, ident: tuple[int, int] | None, m: Any) -> None:
        if ident is None:
            return
        self.buffer.append((path, ident, m))
        if len(self.buffer) >= SEGMENT_FILES:
            self.flush()

    def flush(self) -> None:
        """Write the buffered results as one segment (a folder renamed into place)."""
        if not self.buffer:
            return
        self._write(self.buffer)
        self.buffer = []

    def _write(self, records: list[tuple[str, tuple[int, int], Any]]) -> None:
        th, tw = self.thumb_hw
        k = len(records)
        thumbs = np.zeros((k, 3, th, tw), np.uint8)
        stats, chan = np.zeros((k, 8)), np.zeros((k, 7))
        for j, (_p, _i, m) in enumerate(records):
            if m.status == "ok":
                t = m.thumb
                thumbs[j] = t.transpose(2, 0, 1) if t.ndim == 3 else t[None]
                stats[j], chan[j] = m.stats, m.chan
        meta = {
            "path": np.array([p for p, _i, _m in records], dtype=str),
            "size": np.array([i[0] for _p, i, _m in records], np.int64),
            "mtime": np.array([i[1] for _p, i, _m in records], np.int64),
            "status": np.array([_STATUS.index(m.status) for _p, _i, m in records], np.int8),
            "reason": np.array([m.reason for _p, _i, m in records], dtype=str),
            "orig": np.array([m.size for _p, _i, m in records], np.int32).reshape(k, 2),
            "mode": np.array([m.mode for _p, _i, m in records], dtype=str),
            "color": np.array([m.color for _p, _i, m in records], bool),
            "gray_form": np.array([m.gray_form for _p, _i, m in records], bool),
            "stats": stats, "chan": chan,
            "key": np.array([m.key for _p, _i, m in records], dtype="S16"),
            "shrunk": np.array([m.shrunk for _p, _i, m in records], np.int32),
            # content mode: the bytes' digest, so a touched file is recognised next time (0 = not computed)
            "digest": np.array([self._digest(p) if self.content else 0 for p, _i, _m in records], np.int64),
        }
        name, tmp = self._new_segment()
        np.save(tmp / "thumbs.npy", thumbs)
        with open(tmp / "meta.npz", "wb") as fh:
            np.savez(fh, **meta)
        for f in ("thumbs.npy", "meta.npz"):
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, self.folder / name)

    def _new_segment(self) -> tuple[str, Path]:
        """The next segment's name and its empty temporary folder (renamed into place when complete)."""
        name = f"seg-{self._next:06d}"
        self._next += 1
        tmp = self.folder / (name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        return name, tmp

    def finish(self, keep: list[str]) -> None:
        """Flush, then merge the segments into one holding the files in ``keep`` only, when cached
        results went unused (files removed or changed) or the segments have grown too many."""
        self.flush()
        segs = sorted(p for p in self.folder.glob("seg-*") if not p.name.endswith(".tmp"))
        stale = len(self.lookup) - self.hits
        if len(segs) <= MAX_SEGMENTS and stale <= STALE_SHARE * len(self.lookup):
            return
        from .memory import release_pages

        where: dict[str, tuple[int, int]] = {}
        loaded = []
        for s, seg in enumerate(segs):
            with np.load(seg / "meta.npz", allow_pickle=False) as z:
                meta = {k: z[k] for k in z.files}
            loaded.append((meta, np.load(seg / "thumbs.npy", mmap_mode="r")))
            for row, p in enumerate(meta["path"].tolist()):
                where[p] = (s, row)
        picks = np.array([where[p] for p in keep if p in where], np.int64).reshape(-1, 2)
        if not len(picks):
            return
        name, tmp = self._new_segment()
        th, tw = loaded[int(picks[0, 0])][1].shape[2:]
        out = np.lib.format.open_memmap(tmp / "thumbs.npy", mode="w+", dtype=np.uint8, shape=(len(picks), 3, th, tw))
        for s in np.unique(picks[:, 0]):  # one fancy-indexed copy per segment, not one per file
            at = np.flatnonzero(picks[:, 0] == s)
            out[at] = loaded[s][1][picks[at, 1]]
            release_pages(loaded[s][1])
            if s % 64 == 0:  # the written pages go to the file, not this process's resident memory
                out.flush()
                release_pages(out)
        out.flush()
        del out
        for m, _t in loaded:  # a segment from before content identities has no digests
            m.setdefault("digest", np.zeros(len(m["path"]), np.int64))
        offsets = np.cumsum([0] + [len(m["path"]) for m, _t in loaded])
        rows = offsets[picks[:, 0]] + picks[:, 1]
        meta = {k: np.concatenate([m[k] for m, _t in loaded])[rows] for k in loaded[0][0]}
        with open(tmp / "meta.npz", "wb") as fh:
            np.savez(fh, **meta)
        os.replace(tmp, self.folder / name)
        for p in segs:
            shutil.rmtree(p, ignore_errors=True)
