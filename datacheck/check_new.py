"""``datacheck check-new FOLDER --against AUDIT``: which new images duplicate an audited set, from the
audit's store alone (the audited files are never opened again).

Each new file is decoded and measured once, exactly as the streaming audit measures (same thumbnail
size and filter, same full-pixel digest), then:

* exact: its digest equals an audited item's (identical decoded pixels, any file format);
* near: its 64-bit pHash is within ``radius`` bits of an audited thumbnail's (and, for small
  thumbnails, a one-pixel-shifted hash within ``shift_radius``), and the near-duplicate verifier
  (`datacheck.checks.duplicates.pair_scores`: best correlation over one-pixel shifts on a grid of at
  most 32 x 32) reaches the audit's calibrated threshold (summary.json), or ``threshold``.

Near-uniform new images (gray std below 2 levels) are matched exactly only: every hash collides on
them and correlation is undefined.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import UserError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

COLUMNS = ("new_path", "matched_id", "matched_path", "kind", "distance")
#: new images per block of the cross-set Hamming search ((block, N) uint8 distances at a time)
HASH_BLOCK = 64


def check_new(folder: str | os.PathLike, against: str | os.PathLike, *, threshold: float | None = None,
              radius: int | None = None, shift_radius: int | None = None, workers: int | None = None,
              progress: bool | None = None) -> "pd.DataFrame":
    """One row per new image of ``folder`` that duplicates an item of the audit in ``against``:
    ``new_path`` (relative to ``folder``), ``matched_id``, ``matched_path``, ``kind`` (exact | near),
    ``distance`` (0 for exact, 1 - verifier similarity for near). ``df.attrs["summary"]``: counts,
    the threshold used, unreadable new files. ``radius`` and ``shift_radius`` (None: the near_duplicate
    check's defaults) bound the pHash candidates."""
    import pandas as pd

    from . import listing as _lst
    from .checks.duplicates import NEAR_DEFAULTS, hash_queries, pair_scores, verifier_grid
    from .decode import DEFAULT_MAX_PIXELS
    from .store import open_store
    from .stream import StreamOptions, measure_all

    radius = int(NEAR_DEFAULTS["radius"] if radius is None else radius)
    shift_radius = int(NEAR_DEFAULTS["shift_radius"] if shift_radius is None else shift_radius)
    if threshold is not None and not 0 < threshold <= 1:
        raise UserError(f"--threshold must be in (0, 1], got {threshold}")
    view = open_store(against)
    src = os.fspath(folder)
    if not os.path.isdir(src):
        raise UserError(f"{src} is not a folder")
    listing = _lst.list_files(src, "folder")
    old = view.ds.images
    n_old, c, th, tw = old.shape
    kw = {"max_pixels": int(view.settings.get("max_pixels", DEFAULT_MAX_PIXELS)), "listed": False,
          "thumb_hw": (th, tw), "resample": str(view.index.get("resample", view.settings.get("resample", "bilinear"))),
          "chunk_bytes": int(view.settings.get("chunk_bytes", StreamOptions().chunk_bytes))}
    new_ids: list[str] = []
    keys: list[bytes] = []
    thumbs: list[np.ndarray] = []
    unreadable = len(listing.unreadable)
    for (item_id, _cls, _p), m in zip(listing.items, measure_all(listing.paths, kw,
                                                                StreamOptions(workers=workers, progress=progress),
                                                                f"checking {os.path.basename(os.path.abspath(src))}")):
        if m.status != "ok":
            unreadable += m.status == "unreadable"
            continue
        new_ids.append(item_id)
        keys.append(m.key)
        thumbs.append(_as_channels(m.thumb, c))
    m_new = len(new_ids)
    best_kind = np.full(m_new, "", dtype=object)
    best_j = np.full(m_new, -1, np.int64)
    best_d = np.full(m_new, np.inf)
    # exact: the full-pixel digests the audit recorded
    order = np.argsort(view.keys, kind="stable")
    sk = view.keys[order]
    for i, k in enumerate(keys):
        pos = int(np.searchsorted(sk, np.bytes_(k)))
        if pos < n_old and sk[pos] == k:
            best_kind[i], best_j[i], best_d[i] = "exact", int(order[pos]), 0.0
    t = threshold if threshold is not None else _audit_threshold(view.audit)
    todo = np.flatnonzero(best_j < 0)
    if len(todo) and n_old:
        new = np.stack([thumbs[i] for i in todo])
        gray_std = new.astype(np.float32).mean(1).reshape(len(new), -1).std(1)
        textured = gray_std >= float(NEAR_DEFAULTS["uniform_std"])
        new, todo = new[textured], todo[textured]
    if len(todo) and n_old:
        shift = min(th, tw) <= int(NEAR_DEFAULTS["shift_queries_below"])
        h_old, _ = hash_queries(old, False)
        h_new, hq_new = hash_queries(new, shift)
        qa, qb = _cross_pairs(h_new, hq_new, h_old, radius, shift_radius)
        if len(qa):
            grid = int(NEAR_DEFAULTS["grid"])
            cand_old, inv = np.unique(qb, return_inverse=True)
            g = np.concatenate([verifier_grid(new, grid), verifier_grid(np.asarray(old[cand_old]), grid)])
            sc = pair_scores(g, qa, len(new) + inv)
            for a, b, s in zip(qa, cand_old[inv], sc):
                i = todo[a]
                if s >= t and 1.0 - s < best_d[i]:
                    best_kind[i], best_j[i], best_d[i] = "near", int(b), float(1.0 - s)
    root = view.ds.root
    hit = np.flatnonzero(best_j >= 0)
    df = pd.DataFrame({
        "new_path": [new_ids[i] for i in hit],
        "matched_id": [view.ds.ids[best_j[i]] for i in hit],
        "matched_path": [os.path.join(root, view.ds.ids[best_j[i]]) if root else view.ds.ids[best_j[i]] for i in hit],
        "kind": [str(best_kind[i]) for i in hit],
        "distance": [round(float(best_d[i]), 6) for i in hit],
    }, columns=list(COLUMNS))
    df.attrs["summary"] = {"n_new": m_new, "n_unreadable": unreadable, "n_matched": int(len(hit)),
                           "n_exact": int((best_kind == "exact").sum()), "n_near": int((best_kind == "near").sum()),
                           "threshold": round(float(t), 4), "n_audited": int(n_old)}
    return df


def _as_channels(thumb: np.ndarray, c: int) -> np.ndarray:
    """uint8 (c, h, w) from a measured thumbnail (h, w) or (h, w, 3), converted as the audit's store
    converts (one channel: PIL's luma of colour images)."""
    from PIL import Image

    if c == 3:
        return thumb.transpose(2, 0, 1) if thumb.ndim == 3 else np.broadcast_to(thumb, (3, *thumb.shape)).copy()
    if thumb.ndim == 2:
        return thumb[None]
    return np.asarray(Image.fromarray(thumb).convert("L"))[None]


def _cross_pairs(h_new: np.ndarray, hq_new: np.ndarray | None, h_old: np.ndarray, radius: int,
                 shift_radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): new item a's pHash within ``radius`` bits of old item b's, or one of its one-pixel
    shifted hashes within ``shift_radius``. Blocked brute force over new x old (uint8 counts: a block
    of 64 new images against a million audited ones is 64 MB)."""
    out_a, out_b = [], []
    for s in range(0, len(h_new), HASH_BLOCK):
        d = np.bitwise_count(h_new[s : s + HASH_BLOCK, None] ^ h_old[None]) <= radius
        if hq_new is not None:
            for q in hq_new[:, s : s + HASH_BLOCK]:
                d |= np.bitwise_count(q[:, None] ^ h_old[None]) <= shift_radius
        a, b = np.nonzero(d)
        out_a.append(a + s)
        out_b.append(b)
    if not out_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_a).astype(np.int64), np.concatenate(out_b).astype(np.int64)


def _audit_threshold(audit: Path) -> float:
    """The near-duplicate threshold the audit calibrated (summary.json), else 0.97 (the engine's
    fallback when it cannot calibrate)."""
    try:
        s = json.loads((audit / "summary.json").read_text())
        t = s["checks"]["near_duplicate"]["threshold"]
        if isinstance(t, (int, float)) and 0 < t <= 1:
            return float(t)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.info("no calibrated near-duplicate threshold in %s/summary.json: using 0.97", audit)
    return 0.97


def format_check_new(summary: dict[str, Any], out: str | None) -> str:
    """The one-line CLI summary."""
    line = (f"{summary['n_matched']} of {summary['n_new']} new images duplicate the audited set of "
            f"{summary['n_audited']} ({summary['n_exact']} exact, {summary['n_near']} near; threshold "
            f"{summary['threshold']})")
    if summary["n_unreadable"]:
        line += f"; {summary['n_unreadable']} new files unreadable"
    return line + (f"; wrote {out}" if out else "")
