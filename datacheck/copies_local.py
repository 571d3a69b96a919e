"""The copy search's local rule: a fake copies training item t when it is far closer to t than t's own
natural neighbours are (a per-item ratio, in the spirit of the nearest/second-nearest 1/3 rule, made
duplicate-safe: t's identical copies are not its neighbours).

A global similarity threshold fails on a redundant training set (overlapping crops, video frames): its
calibration negatives, each item's best match outside its group, are near-copies themselves, so the bar
rises until noisy or blurred copies fall below it. Here each item carries its own scale, the distance to
its nearest other training image, so a textured item accepts a noisy copy that is much closer to it than
its neighbours, while a flat sky patch (whose neighbours are almost the same) asks for more. Near-duplicate
group members do count as neighbours: a real image near a group of look-alikes is as close to one of them
as the others are.

Two low-pass distances, both blind to pixel noise, JPEG, mild blur and small re-crops (they average the
image over cells a few pixels wide), each with its own ratio:

* ``struct``: the gray image and its brightest channel (HSV's value, which a hue shift keeps) on an 8 x 8
  grid, means removed (brightness-blind), the smaller distance of the two; minimised over one-pixel shifts
  for images under 24 px, and over 3-6% crops of the training item for larger ones (re-cropped copies);
* ``colour``: each channel on a 2 x 2 grid, means kept, for flat items only: their structure a little
  noise erases, while their mean colour is what a copy keeps and a neighbour does not.

Both are debiased for the noise the query has in excess of t (`pair_distances`). The ratios' bars are
calibrated on training items held out one at a time (leave-one-out: the item's best match other than its
identical copies, against that match's other neighbours), the real images nearest to what a held-out image
meets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import hashing
from .checks.duplicates import _SHIFTS, _crop
from .neighbors import topk_smallest  # noqa: F401  (moved to neighbors; copies.py uses it from here)

STRUCT_SIDE, COLOUR_SIDE = 8, 2
NEIGHBOURS = 8  # neighbours kept per training item (enough to drop one group in leave-one-out)
FLOOR = 0.25  # gray levels: a neighbour distance below this is treated as this (flat, near-uniform items)
LUMA_NOISE = 0.447  # variance of the luma of independent unit-variance noise in R, G and B
FLAT_STD = 6.0  # gray std (levels) below which an item is flat: only then does the colour distance decide


@dataclass(frozen=True)
class LocalVectors:
    """Low-pass vectors of a set of images: struct (S, N, 64) per one-pixel shift, colour (N, C*4), and
    spread (N,), the gray std in levels."""

    struct: np.ndarray
    value: np.ndarray  # (S, N, 64): as struct, of the brightest channel (HSV's value, which a hue shift keeps)
    colour: np.ndarray
    spread: np.ndarray
    lap: np.ndarray  # (N,) variance of the gray image's Laplacian: its fine-grained energy
    cell: tuple[float, float]  # pixels averaged into one struct cell and one colour cell
    # (N, D) one retrieval vector per image: the unshifted gray and brightest-channel structure (4 x 4) side
    # by side; flat images are also searched by their colour means (`candidates`)
    joint: np.ndarray
    zoom: np.ndarray  # (Z, N, 64): struct of Z few-percent crops (`_zoom_boxes`), Z = 0 when not asked
    zoom_value: np.ndarray  # (Z, N, 64): the same of the brightest channel


def _zoom_boxes(h: int, w: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, hh, ww) crops of a few percent, at the corners and the centre: a re-cropped copy of an item
    is its crop resized back, so the item's crops meet it (images under 24 px: none)."""
    if min(h, w) < 24:
        return []
    a, b = max(1, round(0.03 * h)), max(1, round(0.03 * w))
    return [(0, 0, h - a, w - b), (0, b, h - a, w - b), (a, 0, h - a, w - b), (a, b, h - a, w - b),
            (a, b, h - 2 * a, w - 2 * b)]


def vectors(images: np.ndarray, grid: int, shifted: bool, chunk: int = 4096, zoom: bool = False) -> LocalVectors:
    """`LocalVectors` of uint8 (N, C, H, W). ``shifted``: one struct vector per shift in `_SHIFTS`
    (the image cropped by the shift on a grid of at most ``grid`` px), else the unshifted one only.
    ``zoom``: also the struct vectors of 3-6% crops (`_zoom_boxes`; the training side's)."""
    n, c, h, w = images.shape
    size = (min(h, grid), min(w, grid))
    shifts = _SHIFTS if shifted else _SHIFTS[:1]
    struct = np.empty((len(shifts), n, STRUCT_SIDE * STRUCT_SIDE), np.float32)
    value = np.empty_like(struct) if c > 1 else struct
    boxes = _zoom_boxes(*size) if zoom else []
    zs = np.empty((len(boxes), n, STRUCT_SIDE * STRUCT_SIDE), np.float32)
    zv = np.empty_like(zs) if c > 1 else zs
    colour = np.empty((n, c * COLOUR_SIDE * COLOUR_SIDE), np.float32)
    spread = np.empty(n, np.float32)
    lap = np.zeros(n, np.float32)
    for s in range(0, n, chunk):
        x = images[s : s + chunk]
        g = hashing.resize(hashing.gray(x), size)
        spread[s : s + len(x)] = g.reshape(len(x), -1).std(1)
        if min(size) >= 3:
            lp = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
            lap[s : s + len(x)] = lp.reshape(len(x), -1).var(1)
        vmax = hashing.resize(x.max(1).astype(np.float32), size) if c > 1 else None
        for k, (dy, dx) in enumerate(shifts):
            for src, dst in ((g, struct), (vmax, value)):
                if src is not None:
                    v = hashing.resize(_crop(src, dy, dx), (STRUCT_SIDE, STRUCT_SIDE)).reshape(len(x), -1)
                    dst[k, s : s + len(x)] = v - v.mean(1, keepdims=True)
        for k, (y0, x0, hh, ww) in enumerate(boxes):
            for src, dst in ((g, zs), (vmax, zv)):
                if src is not None:
                    v = hashing.resize(src[:, y0 : y0 + hh, x0 : x0 + ww], (STRUCT_SIDE, STRUCT_SIDE)).reshape(len(x), -1)
                    dst[k, s : s + len(x)] = v - v.mean(1, keepdims=True)
        colour[s : s + len(x)] = hashing.resize(x.astype(np.float32), (COLOUR_SIDE, COLOUR_SIDE)).reshape(len(x), -1)
    cell = (size[0] * size[1] / STRUCT_SIDE**2, h * w / COLOUR_SIDE**2)
    # retrieval on 4 x 4 structure (2 x 2 cell means of the 8 x 8): a third of the dimensions, so a third of
    # the search's cost; the candidates are then measured on the full vectors
    half = lambda v: v.reshape(n, STRUCT_SIDE // 2, 2, STRUCT_SIDE // 2, 2).mean((2, 4)).reshape(n, -1)  # noqa: E731
    parts = [half(struct[0])] + ([half(value[0])] if value is not struct else [])
    return LocalVectors(struct, value, colour, spread, lap, cell, np.ascontiguousarray(np.concatenate(parts, 1)), zs, zv)


def _ms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.mean((a - b) ** 2, axis=-1)


def pair_distances(q: LocalVectors, t: LocalVectors, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(struct, colour) RMS distances in gray levels of pairs (q[rows[k]], t[cols[k]]); struct is the
    minimum over the shifts both sides carry (a query shifted one way meets t shifted the other).

    Debiased for added noise: white noise of variance v per gray pixel adds 20 v to the Laplacian's
    variance and v / (pixels per cell) to a low-pass cell's squared difference, so the query's excess
    fine-grained energy over t's is taken out of the squared distance (at most nine tenths of it, a third
    of the distance: a query merely more textured than t must not come out near)."""
    ms = np.full(len(rows), np.inf, np.float32)
    for a, b in ((q.struct, t.struct), (q.value, t.value)):  # gray, and the hue-blind brightest channel
        if a is q.value and a is q.struct:
            break
        ms = np.minimum(ms, _ms(a[0, rows], b[0, cols]))
        if len(a) > 1 and len(b) > 1:
            for k in range(1, len(_SHIFTS)):
                # shift k of the query against the opposite shift of t: both are cropped to their overlap
                opp = _SHIFTS.index((-_SHIFTS[k][0], -_SHIFTS[k][1]))
                np.minimum(ms, _ms(a[k, rows], b[opp, cols]), out=ms)
    for z in range(len(t.zoom)):  # t re-cropped: q may be a re-cropped copy of it
        np.minimum(ms, _ms(q.struct[0, rows], t.zoom[z, cols]), out=ms)
        if t.zoom_value is not t.zoom:
            np.minimum(ms, _ms(q.value[0, rows], t.zoom_value[z, cols]), out=ms)
    mc = _ms(q.colour[rows], t.colour[cols])
    v = np.maximum(q.lap[rows] - t.lap[cols], 0) / 20  # gray noise variance the query has in excess
    ms = np.maximum(ms - v / q.cell[0], 0.1 * ms)
    mc = np.maximum(mc - v / LUMA_NOISE / q.cell[1], 0.1 * mc)  # per channel: gray noise is ~0.45 of it
    return np.sqrt(ms), np.sqrt(mc)


def knn(q: np.ndarray, t: np.ndarray, k: int, exclude_q: np.ndarray | None = None, gkey: np.ndarray | None = None,
        block: int = 512) -> np.ndarray:
    """(Q, k) indices of each row of ``q`` (Q, D)'s k nearest rows of ``t`` (N, D) in L2, by blocked
    GEMMs; with ``exclude_q`` (Q,) and ``gkey`` (N,), t rows whose key equals the query's are skipped."""
    k = min(k, len(t))
    out = np.zeros((len(q), k), np.int64)
    tn = (t * t).sum(1)
    tt = np.ascontiguousarray((-2 * t).T)
    buf = np.empty((min(block, len(q)), len(t)), np.float32)
    if exclude_q is not None:
        order = np.argsort(gkey, kind="stable")
        sk = gkey[order]
    for s in range(0, len(q), block):
        qb = q[s : s + block]
        d = buf[: len(qb)]
        np.matmul(qb, tt, out=d)  # in place: the (block, N) matrix is the cost, not the products
        d += tn  # |q|^2 is constant per row: not needed to rank
        if exclude_q is not None:  # a key has few members: found by binary search, not an (block, N) mask
            keys = exclude_q[s : s + block]
            lo, hi = np.searchsorted(sk, keys, "left"), np.searchsorted(sk, keys, "right")
            for i in range(len(qb)):
                d[i, order[lo[i] : hi[i]]] = np.inf
        out[s : s + block] = topk_smallest(d, k)
    return out


def candidates(qv: LocalVectors, tv: LocalVectors, k: int, exclude_q: np.ndarray | None = None,
               gkey: np.ndarray | None = None) -> np.ndarray:
    """(Q, k) candidate items per query: the nearest by structure; for flat queries (whose structure is
    mostly noise) half of them by colour means instead."""
    cand = knn(qv.joint, tv.joint, k, exclude_q, gkey)
    flat = np.flatnonzero(qv.spread < FLAT_STD)
    if len(flat) and cand.shape[1] >= 2:
        h = cand.shape[1] // 2
        cand[flat, h:] = knn(qv.colour[flat], tv.colour, cand.shape[1] - h,
                             None if exclude_q is None else exclude_q[flat], gkey)
    return cand


class Neighbourhoods:
    """Each training item's nearest other training images outside its duplicate group, in both distances,
    computed on demand for the items a search meets (a 50k set is never searched against itself)."""

    def __init__(self, tv: LocalVectors, gkey: np.ndarray) -> None:
        self.tv, self.gkey = tv, gkey
        self.idx: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def ensure(self, items: np.ndarray) -> None:
        """Find the neighbours (indices, struct and colour distances, sorted) of ``items`` not yet known."""
        need = np.setdiff1d(np.unique(items), np.fromiter(self.idx, np.int64, len(self.idx)))
        if len(need) == 0 or len(self.tv.colour) < 2:
            return
        tv, g = self.tv, self.gkey
        cand = candidates(_take(tv, need), tv, 2 * NEIGHBOURS, g[need], g)
        rows = np.repeat(np.arange(len(need)), cand.shape[1])
        cols = cand.ravel()
        ds, dc = pair_distances(_take(tv, need), tv, rows, cols)
        bad = g[cols] == g[need][rows]  # fewer than k items outside the group: argpartition filled in
        ds[bad], dc[bad] = np.inf, np.inf
        ds, dc, cols = ds.reshape(cand.shape), dc.reshape(cand.shape), cols.reshape(cand.shape)
        for i, item in enumerate(need):
            self.idx[int(item)] = (cols[i], ds[i], dc[i])

    def scale(self, items: np.ndarray, without: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(struct, colour) distance of each item to its nearest neighbour outside its group (and outside
        the group key ``without[k]`` when given: leave-one-out); inf where it has none."""
        self.ensure(items)
        rs, rc = np.full(len(items), np.inf), np.full(len(items), np.inf)
        for k, item in enumerate(items):
            got = self.idx.get(int(item))
            if got is None:
                continue
            cols, ds, dc = got
            ok = np.ones(len(cols), bool) if without is None else self.gkey[cols] != without[k]
            if ok.any():
                rs[k], rc[k] = ds[ok].min(), dc[ok].min()
        return np.maximum(rs, FLOOR), np.maximum(rc, FLOOR)


def _take(v: LocalVectors, idx: np.ndarray) -> LocalVectors:
    return LocalVectors(v.struct[:, idx], v.value[:, idx], v.colour[idx], v.spread[idx], v.lap[idx], v.cell, v.joint[idx],
                        v.zoom[:, idx], v.zoom_value[:, idx])


def local_search(qv: LocalVectors, tv: LocalVectors, hood: Neighbourhoods, k: int, extra: np.ndarray | None = None,
                 exclude: np.ndarray | None = None, bound: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each query: (best item by struct ratio, struct ratio, best item by colour ratio, colour ratio).

    Candidates: the k nearest training items in each low-pass space, plus ``extra`` (Q, E) candidates
    from another search. ``exclude`` (Q,): group keys a query must not match (leave-one-out calibration);
    its neighbours' scale is then also taken without that group. ``bound``: ratios above it may be
    reported as inf (they are never searched for exactly)."""
    n_q = len(qv.colour)
    if n_q == 0 or len(tv.colour) == 0:
        z = np.zeros(0, np.int64)
        return z, np.zeros(0), z, np.zeros(0)
    parts = [candidates(qv, tv, 2 * k, exclude, hood.gkey)]
    if extra is not None:
        parts.append(extra)
    cand = np.concatenate(parts, 1)
    rows = np.repeat(np.arange(n_q), cand.shape[1])
    cols = cand.ravel()
    ds, dc = pair_distances(qv, tv, rows, cols)
    if exclude is not None:
        bad = hood.gkey[cols] == exclude[rows]
        ds[bad], dc[bad] = np.inf, np.inf
    ds, dc = ds.reshape(cand.shape), dc.reshape(cand.shape)
    out = []
    ar = np.arange(n_q)
    for d, which in ((ds, 0), (dc, 1)):
        j = d.argmin(1)  # the nearest candidate, then its ratio to that item's own neighbours
        best, dq = cand[ar, j], d[ar, j]
        live = np.isfinite(dq)
        if which == 1:
            # the colour distance decides only for flat items, whose structure a little noise erases: on
            # textured ones a neighbour of the same mean colours is common and says nothing
            live &= tv.spread[best] < FLAT_STD
        if bound is not None and live.any():
            # the query's other candidates are training images too: the nearest of them to `best` bounds
            # best's scale from above, and a ratio already over ``bound`` against it needs no neighbour search
            r = np.flatnonzero(live)
            bb, cc = np.repeat(best[r], cand.shape[1]), cand[r].ravel()
            ub = pair_distances(tv, tv, bb, cc)[which]
            off = hood.gkey[cc] == hood.gkey[bb]
            if exclude is not None:
                off |= hood.gkey[cc] == np.repeat(exclude[r], cand.shape[1])
            ub[off] = np.inf
            ub = np.maximum(ub.reshape(len(r), -1).min(1), FLOOR)
            live[r[dq[r] > bound * ub]] = False
        idx = np.flatnonzero(live)
        scale = hood.scale(best[idx], None if exclude is None else exclude[idx])[which]
        q = np.full(n_q, np.inf)
        # an item with no neighbour has no scale to be far closer than: the local rule does not apply
        fin = np.isfinite(scale)
        q[idx[fin]] = dq[idx[fin]] / scale[fin]
        out += [best, q]
    return out[0], out[1], out[2], out[3]
