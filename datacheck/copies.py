"""Which generated images copy a training image: the near-duplicate engine run across two sets.

`find_copies` answers, for every item of ``fake`` (generated samples, or any set), whether it is
the same picture as a training item, in the sense of `datacheck.checks.duplicates`: identical
pixels, or a re-encoded, brightness/contrast-changed, slightly noisy or one-pixel-shifted version.

Pipeline:

1. The training set's duplicate groups come first (`~datacheck.checks.duplicates.near_duplicate_pairs`):
   a copy of a duplicated training image is a copy of its group, so neither the search nor the
   calibration is fooled by a training image that has copies (the literature's nearest/second-nearest
   ratio test is: a sample on a duplicated source has two equally near neighbours).
2. Candidates: for each query, the ``coarse_k`` training items most correlated with it on a small gray
   grid (at most 16 x 16; for images up to 16 px also its four one-pixel shifts), an exact search by
   matrix products in blocks; identical pixels are found by hash.
3. Verification: the duplicate engine's score (correlation of the two images on a grid of at most
   32 x 32, all channels, maximised over one-pixel shifts; 1 for identical pixels); the query's match is
   its best-scoring candidate.
4. Threshold, calibrated on the training set as the engine's is, but for this question: the negatives
   are each sampled training item's best match among the training items *outside its duplicate group*
   (what a real held-out image meets: its nearest other training image), the positives edited copies of
   the sampled items (JPEG, brightness/contrast, noise, one-pixel shift) searched like queries. The
   threshold clears the (1 - ``max_fpr``) quantile of the negatives plus a quarter of the gap to 1, and
   never goes below ``min_threshold``; recall per edit and the false-positive rate are reported.
5. The local rule (`datacheck.copies_local`), for what the global threshold misses on redundant training
   sets and for generator-like edits (noise, blur, hue shift, re-crop): a query that does not clear the
   threshold is still a copy of t when its low-pass distance to t is under a calibrated fraction of t's
   distance to its own nearest other training image (bars calibrated leave-one-out on the training set).
6. Each copy's ``kind`` names the edit that explains it (`datacheck.copies_kind`).
7. With ``heldout`` (real images the model never saw), the same search gives the false-alarm rate a
   set of non-copies has, and a one-sided Fisher exact test of "the fake set is flagged more often".
"""
from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np

from . import copies_local, hashing
from .copies_kind import classify
from .checks.duplicates import _normed, _shift_copies, apply_edit, best_shift_correlation, near_duplicate_pairs
from .dataset import Dataset
from .errors import UserError
from .sources import as_dataset

log = logging.getLogger(__name__)

COPY_DEFAULTS: dict[str, Any] = {
    "threshold": None,  # None: calibrate on the training set; a float in (0, 1] fixes it
    "min_threshold": 0.9,  # the calibrated threshold never goes below this
    "max_fpr": 0.005,  # share of the calibration negatives the threshold may let through
    "calibration_items": 1000,  # training items sampled for calibration
    "jpeg_quality": 75,  # both sides are also compared after re-encoding at this quality
    "coarse_k": 8,  # candidates per query from the coarse search
    "coarse_side": 16,  # side of the coarse gray grid (at most the image's)
    "grid": 32,  # verifier grid (as the near-duplicate engine's)
    "shift_below": 16,  # also query one-pixel shifts in the coarse search when min(H, W) <= this
    "local": True,  # also apply the local rule (copies_local): far closer to an item than its neighbours
    "local_fpr": 0.0015,  # share of leave-one-out negatives each local distance's ratio bar may let through
    "local_max_ratio": 0.4,  # the ratio bar never exceeds this (a copy is well under half as far as a neighbour)
    "local_k": 8,  # the low-pass search proposes 2 x this many candidates per query
}
RECALL_ITEMS = 300  # calibration items whose edited copies measure the reported recall per edit
COPY_EDITS = ("jpeg", "brightness_contrast", "noise", "shift")
COLUMNS = ("fake_id", "train_id", "similarity", "kind", "group")


class _Index:
    """The training set prepared for queries: verifier grids, coarse grids, exact keys, groups."""

    def __init__(self, train: Dataset, p: dict[str, Any], seed: int) -> None:
        imgs = self.images = train.images
        self.n = len(imgs)
        _, _, h, w = imgs.shape
        self.side = (min(h, int(p["coarse_side"])), min(w, int(p["coarse_side"])))
        self.shift = min(h, w) <= int(p["shift_below"])
        self.grid, self.jgrid = _grids(imgs, int(p["grid"]), int(p["jpeg_quality"]))
        self.coarse = _coarse(imgs, self.side)
        keys = hashing.exact_keys(imgs)
        self.exact: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            self.exact.setdefault(bytes(k), i)
        nd = near_duplicate_pairs(train, seed=seed)
        self.nd = nd
        # group key per item: its duplicate group, or a key of its own
        self.gkey = np.where(nd.group >= 0, nd.group, -1 - np.arange(self.n))
        self.group = nd.group
        self.uniform = nd.uniform
        self.p = p
        self.local = bool(p["local"])
        if self.local:
            # shift-searched low-pass structure only for small images: at 24 px and more a one-pixel shift is
            # under a third of an 8 x 8 cell (and the global verifier searches shifts anyway)
            self.shifted = min(h, w) < 24
            self.tv = copies_local.vectors(imgs, int(p["grid"]), shifted=self.shifted, zoom=True)
            # an item's scale is its nearest neighbour other than its identical copies: near-duplicate group
            # members count, or a real image near a group of look-alikes (flat sky) would seem far closer to
            # one of them than that one's neighbours outside the group are
            self.hood = copies_local.Neighbourhoods(self.tv, nd.rep)

    def local_search(self, images: np.ndarray, exclude: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`copies_local.local_search` of the queries: (struct item, struct ratio, colour item, colour ratio)."""
        if not self.local or len(images) == 0:
            z = np.full(len(images), -1, np.int64)
            return z, np.full(len(images), np.inf), z, np.full(len(images), np.inf)
        qv = copies_local.vectors(images, int(self.p["grid"]), shifted=self.shifted)
        return copies_local.local_search(qv, self.tv, self.hood, int(self.p["local_k"]), exclude=exclude,
                                         bound=float(self.p["local_max_ratio"]))

    def search(self, images: np.ndarray, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best training match of each query: (index (Q,), score (Q,), identical pixels (Q,) bool).
        ``exclude`` (Q,): a group key per query whose members it must not match (calibration)."""
        q = len(images)
        best = np.full(q, -1, np.int64)
        score = np.zeros(q, np.float32)
        same = np.zeros(q, bool)
        if q == 0 or self.n == 0:
            return best, score, same
        for i, k in enumerate(hashing.exact_keys(images)):
            j = self.exact.get(bytes(k))
            if j is not None and (exclude is None or self.gkey[j] != exclude[i]):
                best[i], score[i], same[i] = j, 1.0, True
        qgrid, qjgrid = _grids(images, int(self.p["grid"]), int(self.p["jpeg_quality"]))
        k = min(int(self.p["coarse_k"]), self.n)
        block = max(1, (1 << 24) // max(self.n, 1))  # queries per block of the (Q, N) similarity matrix
        for s in range(0, q, block):
            sl = slice(s, min(s + block, q))
            g = hashing.gray(images[sl].astype(np.uint8))
            variants = [g] + (_shift_copies(g) if self.shift else [])
            cands = []
            for v in variants:
                sim = _normed(hashing.resize(v, self.side)) @ self.coarse.T  # (b, N) correlations
                if exclude is not None:
                    sim[exclude[sl, None] == self.gkey[None, :]] = -np.inf
                cands.append(copies_local.topk_smallest(-sim, k))
            cand = np.concatenate(cands, 1)  # (b, k x variants); a repeated candidate just scores twice
            rows = np.repeat(np.arange(sl.start, sl.stop), cand.shape[1])
            cols = cand.ravel()
            if exclude is not None:  # masked columns can still be drawn when fewer than k remain
                ok = self.gkey[cols] != exclude[rows]
                rows, cols = rows[ok], cols[ok]
            # raw, and both re-encoded as JPEG: re-encoding is nearly idempotent, so a JPEG copy and its
            # source meet again, while two merely similar images stay apart
            sc = np.maximum(structure_scores(qgrid[rows], self.grid[cols]),
                            structure_scores(qjgrid[rows], self.jgrid[cols]))
            order = np.lexsort((-sc, rows))  # best candidate first within each query
            first = np.ones(len(order), bool)
            first[1:] = rows[order][1:] != rows[order][:-1]
            r, c, v = rows[order][first], cols[order][first], sc[order][first]
            better = ~same[r] & (v > score[r])
            best[r[better]], score[r[better]] = c[better], v[better]
        return best, score, same


def _grids(images: np.ndarray, grid: int, quality: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The verifier's float32 gray grids (N, 1, h, w), h = min(H, grid), of the images as given and of
    their luminance re-encoded as JPEG at ``quality`` (JPEG's own luma is this gray, so a colour JPEG
    copy's gray and the re-encoded gray of its source meet again).

    JPEG codes 8x8 blocks independently, so a chunk of images padded to whole blocks (edges replicated,
    as an encoder pads) and laid side by side in one mosaic is one encode and one decode, with each tile
    decoding to exactly what it would alone: ~50x faster than one PIL call per small image."""
    from PIL import Image

    n, _, h, w = images.shape
    size = (min(h, grid), min(w, grid))
    hp, wp = -(-h // 8) * 8, -(-w // 8) * 8
    raw = np.empty((n, 1, *size), np.float32)
    jpg = np.empty((n, 1, *size), np.float32)
    for s in range(0, n, chunk):
        g = hashing.gray(images, s, s + chunk)  # (m, H, W) float luminance
        m = len(g)
        g8 = np.pad(np.rint(g).clip(0, 255).astype(np.uint8), ((0, 0), (0, hp - h), (0, wp - w)), mode="edge")
        cols = max(1, min(m, 65000 // wp))  # JPEG's 65,535-pixel side limit
        rows = -(-m // cols)
        mosaic = np.zeros((rows * cols, hp, wp), np.uint8)
        mosaic[:m] = g8
        mosaic = mosaic.reshape(rows, cols, hp, wp).transpose(0, 2, 1, 3).reshape(rows * hp, cols * wp)
        buf = io.BytesIO()
        Image.fromarray(mosaic).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        dec = np.asarray(Image.open(buf, formats=("JPEG",)))
        tiles = dec.reshape(rows, hp, cols, wp).transpose(0, 2, 1, 3).reshape(rows * cols, hp, wp)[:m, :h, :w]
        raw[s : s + m, 0] = hashing.resize(g, size)
        jpg[s : s + m, 0] = hashing.resize(tiles.astype(np.float32), size)
    return raw, jpg


def _channel_normed(x: np.ndarray) -> np.ndarray:
    """(N, C, h, w) -> (N, C*h*w): each channel centred on its own mean, then the row scaled to unit
    length. Centring per channel keeps only spatial structure: two patches of blue sky with different
    detail are no longer 'similar' because both are blue (joint centring makes the channels' offsets
    dominate a colour image's variance)."""
    x = x.astype(np.float32)
    x = x - x.mean(axis=(2, 3), keepdims=True)
    x = x.reshape(len(x), -1)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-3
    return x


def structure_scores(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Scores in [0, 1] of pairs of uint8 grids a[k], b[k] (K, C, h, w): the correlation of their
    per-channel-centred pixels on the overlap, maximised over one-pixel shifts (as the duplicate engine's
    verifier, which centres all channels jointly)."""
    out = np.zeros(len(a), np.float32)
    for s in range(0, len(a), chunk):
        out[s : s + chunk] = best_shift_correlation(a[s : s + chunk], b[s : s + chunk], _channel_normed)
    return np.clip(out, 0.0, 1.0)


def _coarse(images: np.ndarray, side: tuple[int, int]) -> np.ndarray:
    """Row-normalised (centred, unit-length) gray grids of ``side``: dot products are correlations."""
    per = max(1, (1 << 22) // max(1, images.shape[2] * images.shape[3]))
    parts = [_normed(hashing.resize(hashing.gray(images, s, s + per), side)) for s in range(0, len(images), per)]
    return np.concatenate(parts) if parts else np.zeros((0, side[0] * side[1]), np.float32)


def calibrate(index: _Index, seed: int = 0) -> dict[str, Any]:
    """The copy threshold and its operating point on the training set (see the module docstring)."""
    p = index.p
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero((index.nd.rep == np.arange(index.n)) & ~index.uniform)
    m = min(len(pool), int(p["calibration_items"]))
    if m < 2:
        t = float(p["threshold"] if p["threshold"] is not None else max(p["min_threshold"], 0.97))
        return {"threshold": t, "calibrated": False, "note": "too few distinct training images to calibrate"}
    sample = np.sort(rng.choice(pool, m, replace=False))
    imgs = index.images[sample]
    _, neg, _ = index.search(imgs, exclude=index.gkey[sample])
    if p["threshold"] is None:
        q = float(np.quantile(neg, 1 - float(p["max_fpr"])))
        t = min(max(float(p["min_threshold"]), q + 0.1 * (1 - q)), 0.999)
    else:
        t = float(p["threshold"])
    op: dict[str, Any] = {"threshold": round(t, 4), "calibrated": p["threshold"] is None}
    lfp = np.zeros(1, bool)
    if index.local:
        # leave-one-out over distinct images (near-uniform ones too: held-out sets have them): each searched
        # without its identical copies, its match's scale taken without them too
        reps = np.flatnonzero(index.nd.rep == np.arange(index.n))
        loo = np.sort(rng.choice(reps, min(len(reps), int(p["calibration_items"])), replace=False))
        _, qs, _, qc = index.local_search(index.images[loo], exclude=index.nd.rep[loo])
        qs, qc = np.minimum(qs, 1e6), np.minimum(qc, 1e6)  # inf (no neighbour, or a textured item) -> large
        cap, f = float(p["local_max_ratio"]), float(p["local_fpr"])
        op["ratio_struct"], op["ratio_colour"] = _bar(qs, f, cap), _bar(qc, f, cap)
        lfp = (qs <= op["ratio_struct"]) | (qc <= op["ratio_colour"])
        op["local_negatives_under_cap"] = [round(float(np.mean(qs <= cap)), 4), round(float(np.mean(qc <= cap)), 4)]
    recall: dict[str, float] = {}
    few = slice(0, RECALL_ITEMS)  # the recall report needs fewer items than the bars
    for e in COPY_EDITS:
        edited = np.stack([apply_edit(im, e, rng) for im in imgs[few]])
        best, _, _, hit = decide(index, op, edited)
        hit &= (best >= 0) & (index.gkey[np.maximum(best, 0)] == index.gkey[sample[few]])
        recall[e] = round(float(hit.mean()), 4)
    op.update({
        "recall_by_edit": recall, "recall": round(float(np.mean(list(recall.values()))), 4),
        "fpr": round(float((neg >= t).mean()), 4), "local_fpr": round(float(lfp.mean()), 4), "n_calibration": int(m),
        "negatives": "each sampled training item's best match outside its duplicate group (for the ratios: "
                     "its best match other than its identical copies, against that match's other neighbours)",
        "negative_quantiles": {k: round(float(np.quantile(neg, k)), 4) for k in (0.5, 0.9, 0.99)},
    })
    return op


def _bar(q: np.ndarray, share: float, cap: float) -> float:
    """The ratio bar that lets through at most ``share`` of the negatives ``q`` (just under the order
    statistic there: a quantile interpolated between a kept value and an inf would be inf), at most ``cap``."""
    kk = int(np.floor(share * len(q)))
    v = float(np.partition(q, kk)[kk]) if kk < len(q) else cap
    return round(min(cap, v * 0.999), 4)


def decide(index: _Index, op: dict[str, Any], images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(item (Q,), similarity (Q,), identical (Q,), copy (Q,)) for uint8 queries: a copy when the verifier
    score clears the global threshold (or the pixels are identical), or, failing that, when the query is
    far closer to an item than the item's own neighbours in either low-pass distance (`copies_local`)."""
    best, score, same = index.search(images)
    hit = (best >= 0) & ((score >= float(op["threshold"])) | same)
    if "ratio_struct" in op:
        rest = np.flatnonzero(~hit)  # the global rule's copies need no second look
        bs, qs, bc, qc = (np.full(len(images), -1, np.int64), np.full(len(images), np.inf),
                          np.full(len(images), -1, np.int64), np.full(len(images), np.inf))
        bs[rest], qs[rest], bc[rest], qc[rest] = index.local_search(images[rest])
        via_s = ~hit & (bs >= 0) & (qs <= op["ratio_struct"])
        via_c = ~hit & ~via_s & (bc >= 0) & (qc <= op["ratio_colour"])
        new = np.flatnonzero(via_s | via_c)
        if len(new):
            item = np.where(via_s[new], bs[new], bc[new])
            qgrid, qjgrid = _grids(images[new], int(index.p["grid"]), int(index.p["jpeg_quality"]))
            # the similarity column keeps its meaning: the verifier's score of the pair reported
            score[new] = np.maximum(structure_scores(qgrid, index.grid[item]), structure_scores(qjgrid, index.jgrid[item]))
            best[new], hit[new] = item, True
    return best, score, same, hit


def find_copies(fake: Any, train: Any, heldout: Any = None, *, seed: int = 0, **params: Any):
    """One row per item of ``fake`` found to copy a training item: ``fake_id``, ``train_id`` (its closest
    training item), ``similarity`` (verifier score in [0, 1]), ``kind`` (`datacheck.copies_kind.KINDS`),
    ``group`` (the training item's duplicate group, -1 when it has none), worst (most similar) first.

    ``fake``, ``train``, ``heldout``: datacheck sources or Datasets of one image shape, or audit folders
    (read from the store's thumbnails, `datacheck.store.copies_sets`: then the summary names the store in
    ``train_store``/``heldout_store`` and the shape compared in ``compared_at``). ``params``
    override `COPY_DEFAULTS`. The DataFrame's ``attrs["summary"]`` holds ``n_fake``, ``n_train``,
    ``n_copies``, ``copy_rate``, ``n_exact``, ``n_near``, ``kinds`` (count per kind), the calibrated
    operating point (global threshold and local ratio bars) and, with
    ``heldout``, ``n_heldout``, ``heldout_rate`` and ``p_value`` (one-sided Fisher exact test that the
    fake set's copy rate exceeds the held-out set's)."""
    import pandas as pd

    unknown = sorted(set(params) - set(COPY_DEFAULTS))
    if unknown:
        raise UserError(f"unknown copy option(s) {', '.join(unknown)}; expected: {', '.join(COPY_DEFAULTS)}")
    p = {**COPY_DEFAULTS, **params}
    from .store import copies_sets

    # an audit folder is read from its store's thumbnails, the other sets loaded at their shape
    sets = copies_sets({"fake": fake, "train": train, **({"heldout": heldout} if heldout is not None else {})})
    for name, ds in sets.items():
        if len(ds) == 0:
            raise UserError(f"the {name} set ({ds.source or 'given data'}) is empty; nothing to compare")
    for name, ds in sets.items():
        if ds.shape != sets["train"].shape:
            raise UserError(f"the {name} set has images of shape {_shape(ds)} and the training set {_shape(sets['train'])}; "
                            "copies are searched between sets of one shape (datacheck copies --size HxW --channels C loads all three alike)")
    tr = sets["train"]
    index = _Index(tr, p, seed)
    op = calibrate(index, seed)

    def flagged(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        best, score, same, hit = decide(index, op, ds.images)
        return hit, best, score, same

    hit, best, score, same = flagged(sets["fake"])
    rows = np.flatnonzero(hit)
    rows = rows[np.lexsort((rows, -score[rows]))]
    df = pd.DataFrame({
        "fake_id": [sets["fake"].ids[i] for i in rows],
        "train_id": [tr.ids[best[i]] for i in rows],
        "similarity": np.round(score[rows].astype(float), 6),
        "kind": [("exact" if same[i] else classify(sets["fake"].images[i], tr.images[best[i]])) for i in rows],
        "group": index.group[best[rows]].astype(np.int64),
    }, columns=list(COLUMNS))
    n = len(sets["fake"])
    summary: dict[str, Any] = {
        "n_fake": n, "n_train": len(tr), "n_copies": int(len(rows)), "copy_rate": len(rows) / n,
        "n_exact": int(same[rows].sum()), "n_near": int((~same[rows]).sum()),
        "kinds": {k: int(v) for k, v in df["kind"].value_counts().items()},
        "n_train_groups": int(len(np.unique(index.group[index.group >= 0]))),
        "operating_point": op,
    }
    for name in ("train", "heldout"):  # where a set came from a store: it was compared on thumbnails
        if name in sets and sets[name].policy.get("store"):
            summary[f"{name}_store"] = str(sets[name].policy["store"])
            summary["compared_at"] = _shape(tr)
    if heldout is not None:
        hh, *_ = flagged(sets["heldout"])
        from scipy.stats import fisher_exact

        k_h, n_h = int(hh.sum()), len(sets["heldout"])
        summary.update(n_heldout=n_h, heldout_copies=k_h, heldout_rate=k_h / n_h,
                       p_value=float(fisher_exact([[len(rows), n - len(rows)], [k_h, n_h - k_h]],
                                                  alternative="greater")[1]))
    df.attrs["summary"] = summary
    return df


def _shape(ds: Dataset) -> str:
    c, h, w = ds.shape
    return f"{c}x{h}x{w}"


# ----------------------------------------------------------------------------- HTML
_HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>datacheck copies: {{ fake }}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:20px 24px 60px}
table{border-collapse:collapse;background:#fff}td,th{padding:4px 8px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:middle}
img{width:64px;height:64px;border:1px solid #ccd}img.px{image-rendering:pixelated}.num{text-align:right}
.note{color:#555}
</style>
</head>
<body><main>
<h1>Copies of training images</h1>
<p><b>{{ n_copies }}</b> of {{ n_fake }} items of <code>{{ fake }}</code> ({{ rate }}) copy an item of the
training set <code>{{ train }}</code> ({{ n_train }} items): {{ n_exact }} identical, {{ n_near }} near copies.
{% if heldout %}On held-out real images (<code>{{ heldout }}</code>, {{ n_heldout }} items, none a copy) the same
search flags {{ heldout_rate }}: the false-alarm baseline; one-sided Fisher exact test that the fake rate is
higher: p = {{ p_value }}.{% endif %}</p>
<p class="note">Threshold {{ threshold }} (calibrated on the training set: each sampled training item's best match
outside its duplicate group is a negative; false-positive rate {{ fpr }}; recall on edited copies:
{{ recall }}){% if ratios %}; and the local rule: a copy is also an item far closer to a training image than that
image's own nearest other training image is (distance ratio under {{ ratios }}, calibrated leave-one-out on the
training set){% endif %}. The kind names the edit that explains each copy.</p>
{% if rows %}<table><tr><th>#</th><th>generated</th><th>training</th><th>similarity</th><th>kind</th><th>fake id</th><th>training id</th><th>group</th></tr>
{% for r in rows %}<tr><td class="num">{{ loop.index }}</td><td><img class="{{ 'px' if r.fpx }}" src="{{ r.fsrc }}" alt="generated"></td>
<td><img class="{{ 'px' if r.tpx }}" src="{{ r.tsrc }}" alt="training"></td><td class="num">{{ r.similarity }}</td><td>{{ r.kind }}</td>
<td>{{ r.fake_id }}</td><td>{{ r.train_id }}</td><td class="num">{{ r.group }}</td></tr>{% endfor %}
</table>{% if more %}<p class="note">{{ more }} more in the CSV.</p>{% endif %}
{% else %}<p>No copies found.</p>{% endif %}
</main></body></html>
"""


def render_copies(df: Any, fake: Dataset, train: Dataset, heldout: Dataset | None = None, limit: int = 200) -> str:
    """A self-contained HTML page of `find_copies`' table: each copy beside its training image,
    most similar first (at most ``limit`` pairs). Every data-derived string is escaped."""
    from jinja2 import Environment

    from .report_html import _num, _thumb

    s = df.attrs.get("summary", {})
    op = s.get("operating_point", {})
    fpos = {k: i for i, k in enumerate(fake.ids)}
    tpos = {k: i for i, k in enumerate(train.ids)}
    rows = []
    for r in df.head(limit).itertuples(index=False):
        f, t = _thumb(fake.images[fpos[r.fake_id]], 64), _thumb(train.images[tpos[r.train_id]], 64)
        rows.append({"fsrc": f["src"], "fpx": f["pixelated"], "tsrc": t["src"], "tpx": t["pixelated"],
                     "similarity": _num(r.similarity), "kind": r.kind, "fake_id": r.fake_id,
                     "train_id": r.train_id, "group": int(r.group)})
    env = Environment(autoescape=True)
    return env.from_string(_HTML).render(
        fake=fake.source or "fake", train=train.source or "train", heldout=heldout.source if heldout is not None else "",
        n_copies=s.get("n_copies", len(df)), n_fake=s.get("n_fake", len(fake)), n_train=s.get("n_train", len(train)),
        rate=f"{100 * s.get('copy_rate', 0):.3g}%", n_exact=s.get("n_exact", 0), n_near=s.get("n_near", 0),
        n_heldout=s.get("n_heldout"), heldout_rate=f"{100 * s.get('heldout_rate', 0):.3g}%",
        p_value=_num(s.get("p_value")), threshold=_num(op.get("threshold")), fpr=_num(op.get("fpr")),
        recall=", ".join(f"{k} {_num(v)}" for k, v in op.get("recall_by_edit", {}).items()) or "n/a",
        ratios=(f"{_num(op['ratio_struct'])} in structure, {_num(op['ratio_colour'])} in colour for flat images"
                if "ratio_struct" in op else ""),
        rows=rows, more=max(0, len(df) - limit))


# ----------------------------------------------------------------------------- duplicated sources
def source_share(fake: Any, train: Any, source_ids: list[str], *, placebo: int = 200, seed: int = 0) -> dict[str, Any]:
    """How much generated mass lands on some training images (the ``source_ids``, e.g. the ones a study
    duplicated), against placebo sets of as many random training images that have no duplicates.

    Each generated item's nearest training item is found with the copy search (duplicate groups merged:
    a source and its copies are one item). ``dup_source_share`` is the share of generated items whose
    nearest item is one of the sources; ``dup_placebo_share`` the mean of the same share over ``placebo``
    seeded random sets; ``dup_p`` the permutation p-value (the observed share counted among the placebos)."""
    fake_d, train_d = as_dataset(fake), as_dataset(train)
    if fake_d.shape != train_d.shape:
        raise UserError(f"the fake set has images of shape {_shape(fake_d)} and the training set {_shape(train_d)}")
    index = _Index(train_d, dict(COPY_DEFAULTS), seed)
    best, _, _ = index.search(fake_d.images)
    pos = {k: i for i, k in enumerate(train_d.ids)}
    src = [pos[s] for s in source_ids if s in pos]
    if not src or not len(fake_d):
        return {"dup_source_share": None, "dup_placebo_share": None, "dup_p": None}
    near = np.where(best >= 0, index.gkey[np.maximum(best, 0)], np.iinfo(np.int64).min)
    src_keys = np.unique(index.gkey[src])
    observed = float(np.isin(near, src_keys).mean())
    singles = np.setdiff1d(np.flatnonzero(index.group < 0), src)
    m = len(src_keys)
    if len(singles) < m:
        return {"dup_source_share": observed, "dup_placebo_share": None, "dup_p": None}
    rng = np.random.default_rng(seed)
    shares = np.array([np.isin(near, index.gkey[rng.choice(singles, m, replace=False)]).mean()
                       for _ in range(int(placebo))])
    return {"dup_source_share": observed, "dup_placebo_share": float(shares.mean()),
            "dup_p": float((1 + np.sum(shares >= observed)) / (len(shares) + 1))}
