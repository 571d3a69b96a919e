"""The ``near_duplicate`` check of a streamed audit with a store (``OUT/store/near``): a re-audit after
adding a few files redoes only the work those files bring.

Two files, both written atomically:

* ``items-CxHxW.npz``: per thumbnail, keyed by the digest of its pixels (blake2b, 16 bytes, as
  `datacheck.feature_store` keys features): the gray std, the channel means (near-uniform ones only),
  the pHash and the one-pixel-shifted pHashes. Only thumbnails without an entry are measured.
* ``run-CxHxW.npz``: the previous run's result: the parameters and seed, the operating point, the textured
  representatives it was calibrated on and those of the last run (as item keys: a digest of the
  item id and the first 8 bytes of its thumbnail digest), and the verified textured pairs (item keys, scores).

A re-audit with the same parameters whose textured representatives differ from the calibration's by
at most `MAX_POOL_CHANGE` keeps the operating point (no calibration), keeps the verified pairs whose
two items are unchanged textured representatives of the last run, and searches and verifies only the
pairs with at least one new or changed item (its hashes against all textured hashes, including the
other items' shifted hashes against its plain one: the full search's candidates exactly). With that
threshold the pairs and groups equal a full `_near_duplicates` over the grown set. Otherwise the full
pipeline runs (calibration included) on the stored per-item measurements and the state is rewritten.
Exact groups, near-uniform pairs and components are always recomputed (cheap).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import hashing
from .checks.near_engine import (NearDuplicates, NearInputs, _near_duplicates, channel_means, finish_near, gray_std,
                                 hash_rows, near_params, shift_queries)
from .checks.near_verify import GridRows, pair_scores
from .dataset import Dataset
from .hashing import item_keys, lookup_keys
from .io import atomic_path

if TYPE_CHECKING:
    from .checks.base import CheckContext

log = logging.getLogger(__name__)

#: the operating point is reused while the textured representatives differ from the calibration's by at most this fraction
MAX_POOL_CHANGE = 0.10
STATE_VERSION = 1
_STATE_KEYS = {"meta", "calib_keys", "textured_keys", "pair_a", "pair_b", "pair_score"}


# ----------------------------------------------------------------------------- files
def _load(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError):  # damaged: recomputed
        log.warning("ignoring the damaged near-duplicate store %s", path)
        return None


def _save(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _canon(p: dict[str, Any]) -> str:
    return json.dumps(p, sort_keys=True, default=str)


class ItemStore:
    """Per-thumbnail measurements (`NearInputs`' per-item parts) keyed by thumbnail digest, aligned to
    the current items: values of unseen thumbnails are computed on demand, once."""

    def __init__(self, path: Path, images: np.ndarray, digests: np.ndarray) -> None:
        n, c = images.shape[:2]
        self.path, self.images, self.digests = path, images, digests
        self.std = np.full(n, np.nan, np.float32)
        self.means = np.full((n, c), np.nan)
        self.h = np.zeros(n, np.uint64)
        self.hq = np.zeros((4, n), np.uint64)
        self.hashed = np.zeros(n, bool)
        self.shifted = np.zeros(n, bool)
        self.dirty = False
        old = _load(path)
        fields = {"keys", "std", "means", "h", "hq", "hashed", "shifted"}
        if old is not None and fields <= set(old) and old["means"].shape[1:] == (c,):
            pos = lookup_keys(old["keys"], digests)
            have = pos >= 0
            src = pos[have]
            self.std[have] = old["std"][src]
            self.means[have] = old["means"][src]
            self.h[have], self.hq[:, have] = old["h"][src], old["hq"][:, src]
            self.hashed[have], self.shifted[have] = old["hashed"][src], old["shifted"][src]
            self.dirty = len(old["keys"]) != n or not have.all()
        else:
            self.dirty = True
        self.n_measured = 0  # items measured (std) this run

    def inputs(self, images: np.ndarray, reps: np.ndarray, p: dict[str, Any]) -> NearInputs:
        """`near_inputs` from the stored values, computing only the missing ones (same functions on
        the same pixels: equal to `near_inputs`)."""
        todo = np.flatnonzero(np.isnan(self.std))
        if len(todo):
            for s in range(0, len(todo), 4096):  # gathered in chunks: no copy of every new image
                self.std[todo[s : s + 4096]] = gray_std(np.asarray(images[todo[s : s + 4096]]))
            self.n_measured, self.dirty = len(todo), True
        uniform = self.std < float(p["uniform_std"])
        need = np.flatnonzero(uniform & np.isnan(self.means[:, 0]))
        if len(need):
            channel_means(images, need, self.means)
            self.dirty = True
        means = np.where(uniform[:, None], self.means, 0.0)
        textured = reps[~uniform[reps]]
        shift = shift_queries(images, p)
        ok = self.hashed[textured] & (self.shifted[textured] | (not shift))
        todo = textured[~ok]
        if len(todo):
            h, hq = hash_rows(images, todo, shift)
            self.h[todo], self.hashed[todo] = h, True
            if hq is not None:
                self.hq[:, todo], self.shifted[todo] = hq, True
            self.dirty = True
        self.n_hashed = len(todo)
        return NearInputs(std=self.std.copy(), means=means, textured=textured, h=self.h[textured],
                          hq=self.hq[:, textured] if shift else None)

    def save(self) -> None:
        if self.dirty:  # only the current thumbnails are kept: removed files' entries are dropped
            _save(self.path, keys=self.digests, std=self.std, means=self.means, h=self.h, hq=self.hq,
                  hashed=self.hashed, shifted=self.shifted)


# ----------------------------------------------------------------------------- search
class _BandTables:
    """Multi-index hashing tables of uint64 (M,) hashes: per band, the items sorted by the band's key
    and a bucket table (start, count) over all 2**width keys (width <= 16: a stable sort of uint16 is
    a radix sort, linear in M)."""

    def __init__(self, db: np.ndarray, bands: int) -> None:
        self.db, self.bands, self.width = db, bands, 64 // bands
        self.mask = np.uint64((1 << self.width) - 1)
        self.tables = []
        for band in range(bands):
            keys = (db >> np.uint64(band * self.width)) & self.mask
            small = self.width <= 16
            order = np.argsort(keys.astype(np.uint16) if small else keys, kind="stable")
            if small:
                counts = np.bincount(keys.astype(np.int64), minlength=1 << self.width)
                self.tables.append((order, np.cumsum(counts) - counts, counts))
            else:
                self.tables.append((order, keys[order].astype(np.int64), None))

    def probe(self, queries: np.ndarray, radius: int, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """(s, d) int64: every pair with ``popcount(queries[s] ^ db[d]) <= radius``, exact (each band
        probed within ``radius // bands`` bits: two hashes that close agree that well on some band)."""
        masks = hashing._flip_masks(self.width, radius // self.bands).astype(np.int64)
        codes: list[np.ndarray] = []
        m = len(self.db)
        for band, (order, a, b) in enumerate(self.tables):
            qkeys = ((queries >> np.uint64(band * self.width)) & self.mask).astype(np.int64)
            for s in range(0, len(queries), chunk):
                items = np.arange(s, min(s + chunk, len(queries)))
                probe = (qkeys[items, None] ^ masks[None, :]).ravel()
                if b is not None:  # bucket table
                    lo, cnt = a[probe], b[probe]
                else:
                    lo = np.searchsorted(a, probe, "left")
                    cnt = np.searchsorted(a, probe, "right") - lo
                hit = np.flatnonzero(cnt)
                if not len(hit):
                    continue
                src_h, lo, cnt = items[hit // len(masks)], lo[hit], cnt[hit]
                ends = np.cumsum(cnt)
                src = np.repeat(src_h, cnt)
                dst = order[np.arange(int(ends[-1])) + np.repeat(lo - (ends - cnt), cnt)]
                close = np.bitwise_count(queries[src] ^ self.db[dst]) <= radius
                codes.append(src[close] * m + dst[close])
        if not codes:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        u = np.unique(np.concatenate(codes))
        return u // m, u % m


def _probe(queries: np.ndarray, db: np.ndarray, radius: int, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """`_BandTables(db, bands).probe(queries, radius)`."""
    return _BandTables(db, bands).probe(queries, radius)


def new_pairs(h: np.ndarray, hq: np.ndarray | None, new: np.ndarray, radius: int, query_radius: int,
              bands: int) -> np.ndarray:
    """int64 (P, 2) sorted unique pairs (i, j), i < j, of positions into ``h`` (uint64 (T,)) with at
    least one in ``new`` that `hashing.hamming_pairs(h, radius, queries=hq, query_radius=...)` returns:
    a new plain hash within ``radius`` of any hash, a new shifted hash within ``query_radius`` of any
    plain hash, or any shifted hash (``hq`` (4, T)) within ``query_radius`` of a new plain hash."""
    t = len(h)
    if not len(new) or t < 2:
        return np.zeros((0, 2), np.int64)
    src, dst = [], []
    plain = _BandTables(h, bands)
    s, d = plain.probe(h[new], radius)
    src.append(new[s]), dst.append(d)
    if hq is not None:
        for k in range(len(hq)):
            s, d = plain.probe(hq[k, new], query_radius)  # a new item's shifted hash vs every plain hash
            src.append(new[s]), dst.append(d)
            s, d = _probe(h[new], hq[k], query_radius, bands)  # every item's shifted hash vs a new plain hash
            src.append(new[s]), dst.append(d)
    a, b = np.concatenate(src), np.concatenate(dst)
    keep = a != b
    a, b = a[keep], b[keep]
    codes = np.unique(np.minimum(a, b) * t + np.maximum(a, b))
    return np.stack([codes // t, codes % t], 1)


# ----------------------------------------------------------------------------- the check's engine
def store_near_duplicates(ds: Dataset, ctx: "CheckContext", params: dict[str, Any],
                          exact: Callable[[], tuple[np.ndarray, np.ndarray]],
                          graph: Callable[[], Any] | None = None) -> NearDuplicates:
    """`_near_duplicates` of ``ds`` (the store's thumbnails) reusing ``ctx.feature_store/near``
    (see the module docstring); writes the store for the next audit."""
    p = near_params(params)
    images = ds.images
    n, c, hh, ww = images.shape
    folder = Path(ctx.feature_store) / "near"
    tag = f"{c}x{hh}x{ww}"
    digests = ctx.thumb_digests()
    items = ItemStore(folder / f"items-{tag}.npz", images, digests)
    ikeys = item_keys(list(ds.ids), digests)
    state = _load(folder / f"run-{tag}.npz")
    meta: dict[str, Any] = {}
    if state is not None:
        try:
            meta = json.loads(str(state["meta"]))
            if not _STATE_KEYS <= set(state) or not isinstance(meta.get("op"), dict):
                raise ValueError("incomplete")
        except (KeyError, ValueError):  # damaged or foreign: a full run rewrites it
            state, meta = None, {}
    # the graph's extra candidates depend on every item's neighbours: no incremental form
    # the seed draws the calibration sample: another seed is another calibration
    canon = _canon({**p, "seed": int(ctx.seed)})
    same = (state is not None and meta.get("version") == STATE_VERSION and meta.get("params") == canon
            and int(p["graph_neighbors"]) == 0)
    rep, exact_group = exact()
    reps = np.flatnonzero(rep == np.arange(n))
    inp = items.inputs(images, reps, p)
    tkeys = ikeys[inp.textured]
    change = 1.0
    if same:
        calib = state["calib_keys"]  # type: ignore[index]
        n_kept = int((lookup_keys(calib, tkeys) >= 0).sum())
        change = (len(tkeys) - n_kept + len(calib) - n_kept) / max(len(calib), 1)
    if same and change <= MAX_POOL_CHANGE:
        nd = _incremental(images, rep, exact_group, inp, tkeys, state, meta, p, change)  # type: ignore[arg-type]
        calib_keys, op = state["calib_keys"], meta["op"]  # type: ignore[index]
    else:
        if same:
            log.info("near_duplicate: textured images changed by %.1f%% since calibration: recalibrating", 100 * change)
        nd = _near_duplicates(ds, ctx.seed, params, exact, graph, inputs=lambda *_: inp)
        calib_keys, op = tkeys, dict(nd.operating_point)
    items.save()
    textured_pairs = ~nd.uniform[nd.pairs[:, 0]] if len(nd.pairs) else np.zeros(0, bool)
    pa, pb = nd.pairs[textured_pairs, 0], nd.pairs[textured_pairs, 1]
    meta = {"version": STATE_VERSION, "params": canon, "op": op, "n_textured": int(len(tkeys)),
            "n_calibration_pool": int(len(calib_keys))}
    _save(folder / f"run-{tag}.npz", meta=np.array(json.dumps(meta, default=str)), calib_keys=calib_keys,
          textured_keys=tkeys, pair_a=ikeys[pa], pair_b=ikeys[pb], pair_score=nd.scores[textured_pairs])
    return nd


def _incremental(images: np.ndarray, rep: np.ndarray, exact_group: np.ndarray, inp: NearInputs, tkeys: np.ndarray,
                 state: dict[str, np.ndarray], meta: dict[str, Any], p: dict[str, Any], change: float) -> NearDuplicates:
    """The pairs of the grown set at the stored threshold: the last run's verified pairs between unchanged
    textured representatives, plus the verified new candidates (at least one new or changed item)."""
    t = float(meta["op"]["threshold"])
    textured = inp.textured
    prev = lookup_keys(state["textured_keys"], tkeys) >= 0  # unchanged textured representatives of the last run
    new = np.flatnonzero(~prev)
    # stored pairs whose two items are still unchanged textured representatives (positions into textured)
    ka, kb = lookup_keys(tkeys, state["pair_a"]), lookup_keys(tkeys, state["pair_b"])
    keep = (ka >= 0) & (kb >= 0)
    ra, rb = textured[ka[keep]], textured[kb[keep]]
    rs = state["pair_score"][keep].astype(np.float32)
    cand = new_pairs(inp.h, inp.hq, new, int(p["radius"]), int(p["shift_radius"]), int(p["bands"]))
    a, b = textured[cand[:, 0]], textured[cand[:, 1]]
    sc = pair_scores(GridRows(images, int(p["grid"])), a, b) if len(a) else np.zeros(0, np.float32)
    ok = sc >= t
    A = np.concatenate([np.minimum(ra, rb), a[ok]])
    B = np.concatenate([np.maximum(ra, rb), b[ok]])
    S = np.concatenate([rs, sc[ok]])
    order = np.lexsort((B, A))  # the full search's order: by (a, b)
    op = {k: v for k, v in meta["op"].items()
          if k not in ("n_candidates", "n_graph_candidates", "n_verified_pairs", "n_uniform")}
    reused = ("operating point reused from the previous audit of this store (textured images changed by "
              f"{100 * change:.1f}% since its calibration, at most {100 * MAX_POOL_CHANGE:.0f}%)")
    op["note"] = f"{op['note']}; {reused}" if op.get("note") else reused
    op["incremental"] = {"n_new_items": int(len(new)), "n_reused_pairs": int(keep.sum()),
                         "n_new_candidates": int(len(cand))}
    op["n_candidates"] = int(len(cand))
    op["n_graph_candidates"] = 0
    log.info("near_duplicate: incremental, %d new or changed textured images searched, %d pairs reused",
             len(new), int(keep.sum()))
    return finish_near(rep, exact_group, A[order], B[order], S[order], inp, p, op)
