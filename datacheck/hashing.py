"""Perceptual hashes and a fast Hamming-radius search, in plain vectorized numpy.

* `gray` / `resize` turn uint8 (N, C, H, W) images into float32 grayscale grids of any
  size (area averaging when shrinking, bilinear when enlarging, so 8x8 digits and 1024x1024 photos
  go through the same code).
* `phash` (DCT sign pattern) and `dhash` (horizontal gradient signs) give uint64 hashes.
* `hamming_pairs` finds every pair of hashes within a Hamming radius without comparing all
  pairs: multi-index hashing (Norouzi et al. 2012) splits the 64 bits into bands; two hashes within
  radius ``r`` must agree on some band up to ``r // bands`` bits (pigeonhole), so each band is
  probed with every key within that small radius and only the bucket hits are compared in full.
* `hamming_pairs_bruteforce` is the plain blocked all-pairs reference (benchmarks, tests).
"""
from __future__ import annotations

import hashlib
import itertools
from functools import lru_cache

import numpy as np

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


# ----------------------------------------------------------------------------- resampling
@lru_cache(maxsize=64)
def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """float32 (n_out, n_in) linear map along one axis: box (area) filter when shrinking, bilinear
    (half-pixel centres) when enlarging; rows sum to 1."""
    m = np.zeros((n_out, n_in), np.float64)
    if n_out <= n_in:
        scale = n_in / n_out
        for o in range(n_out):
            a, b = o * scale, (o + 1) * scale
            for i in range(int(np.floor(a)), min(int(np.ceil(b)), n_in)):
                m[o, i] = min(b, i + 1) - max(a, i)
    else:
        for o in range(n_out):
            x = (o + 0.5) * n_in / n_out - 0.5
            x = min(max(x, 0.0), n_in - 1.0)
            i0 = int(np.floor(x))
            i1 = min(i0 + 1, n_in - 1)
            f = x - i0
            m[o, i0] += 1 - f
            m[o, i1] += f
    m /= m.sum(1, keepdims=True)
    return m.astype(np.float32)


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample float (N, H, W) or (N, C, H, W) to (..., size[0], size[1]) (float32)."""
    x = np.asarray(x, np.float32)
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x.copy()
    mh, mw = _resample_matrix(h, size[0]), _resample_matrix(w, size[1])
    lead = x.shape[:-2]
    m = int(np.prod(lead)) if lead else 1
    # two plain 2-D GEMMs: broadcasting a 2-D matrix over a stack in np.matmul is far slower
    y = x.reshape(m * h, w) @ mw.T  # (m*h, W')
    y = y.reshape(m, h, size[1]).transpose(0, 2, 1).reshape(m * size[1], h) @ mh.T  # (m*W', H')
    return np.ascontiguousarray(y.reshape(m, size[1], size[0]).transpose(0, 2, 1)).reshape(*lead, size[0], size[1])


def gray(images: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 (n, H, W) luminance in 0..255 for items ``start:stop``."""
    x = images[start:stop]
    if x.shape[1] == 1:
        return x[:, 0].astype(np.float32)
    return np.einsum("nchw,c->nhw", x.astype(np.float32), _LUMA[: x.shape[1]])


def small_gray(images: np.ndarray, size: tuple[int, int], chunk: int = 4096) -> np.ndarray:
    """float32 (N, *size) grayscale thumbnails, computed in chunks so big images stay in budget."""
    n = len(images)
    out = np.empty((n, *size), np.float32)
    per = max(1, chunk * 1024 // max(1, images.shape[2] * images.shape[3]))
    for s in range(0, n, per):
        out[s : s + per] = resize(gray(images, s, s + per), size)
    return out


# ----------------------------------------------------------------------------- hashes
def _pack(bits: np.ndarray) -> np.ndarray:
    """bool (N, 64) -> uint64 (N,) (bit k of the hash = column k)."""
    return np.packbits(bits.astype(np.uint8), axis=1, bitorder="little").view("<u8")[:, 0].astype(np.uint64)


@lru_cache(maxsize=8)
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


def phash_from_gray(g32: np.ndarray) -> np.ndarray:
    """pHash of float (N, 32, 32) grayscale grids: signs of the 8x8 lowest DCT frequencies against
    their median (the DC term is replaced by the (0, 8) term, which carries information)."""
    d = _dct_matrix(g32.shape[-1])
    coef = d[:9] @ g32 @ d[:9].T  # (N, 9, 9)
    low = coef[:, :8, :8].reshape(len(g32), 64).copy()
    low[:, 0] = coef[:, 0, 8]
    med = np.median(low, axis=1, keepdims=True)
    return _pack(low > med)


def phash(images: np.ndarray) -> np.ndarray:
    """uint64 (N,) perceptual hash of uint8 (N, C, H, W) images (any size; small ones are
    upsampled to the 32x32 hash grid)."""
    return phash_from_gray(small_gray(images, (32, 32)))


def dhash(images: np.ndarray) -> np.ndarray:
    """uint64 (N,) difference hash: signs of horizontal differences on an 8x9 grayscale grid."""
    g = small_gray(images, (8, 9))
    return _pack((g[:, :, 1:] > g[:, :, :-1]).reshape(len(g), 64))


def exact_keys(images: np.ndarray) -> np.ndarray:
    """(N,) 16-byte digests of each image's decoded pixels and shape (not its file bytes)."""
    out = np.empty(len(images), dtype="S16")
    for i, im in enumerate(images):
        out[i] = hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest()
    return out


def item_keys(ids: "list[str] | tuple[str, ...]", digests: np.ndarray) -> np.ndarray:
    """S16 (N,) key of each item of a store: a 64-bit hash of its id (pandas' vectorised `hash_array`,
    fixed key) then the first 8 bytes of its thumbnail digest (`exact_keys`): equal keys = same item
    with the same pixels. The near-duplicate and graph stores name their rows by it."""
    import pandas as pd

    out = np.empty((len(ids), 2), np.uint64)
    # as bytes: an id from an undecodable file name holds lone surrogates, which pandas will not encode
    # (the same hash as the str for any other id)
    raw = np.array([i.encode("utf-8", "surrogatepass") for i in ids], dtype=object)
    out[:, 0] = pd.util.hash_array(raw) if len(ids) else 0
    out[:, 1] = np.ascontiguousarray(digests, "S16").view(np.uint64).reshape(-1, 2)[:, 0]
    return out.view("S16").ravel()


def lookup_keys(table: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """int64 (len(keys),) position of each key in ``table`` (S16), -1 when absent (a key the table holds
    more than once: one of its positions). Sorted on the keys' first 8 bytes (numbers sort ~10x faster
    than bytes strings), then checked in full."""
    if not len(table) or not len(keys):
        return np.full(len(keys), -1, np.int64)
    t64 = np.ascontiguousarray(table, "S16").view(np.uint64)[::2]
    k64 = np.ascontiguousarray(keys, "S16").view(np.uint64)[::2]
    order = np.argsort(t64)
    st = t64[order]
    if len(st) > 1 and (st[1:] == st[:-1]).any():  # a shared prefix (repeated keys): sort the full keys
        order = np.argsort(table, kind="stable")
        pos = np.searchsorted(table[order], keys).clip(0, len(table) - 1)
        return np.where(table[order][pos] == keys, order[pos], -1).astype(np.int64)
    pos = np.searchsorted(st, k64).clip(0, len(table) - 1)
    hit = order[pos]
    return np.where((st[pos] == k64) & (table[hit] == keys), hit, -1).astype(np.int64)


# ----------------------------------------------------------------------------- search
def popcount64(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64."""
    return np.bitwise_count(x).astype(np.int64)


@lru_cache(maxsize=16)
def _flip_masks(bits: int, radius: int) -> np.ndarray:
    masks = [0]
    for r in range(1, radius + 1):
        for pos in itertools.combinations(range(bits), r):
            masks.append(sum(1 << p for p in pos))
    return np.array(masks, np.int64)


def hamming_pairs(hashes: np.ndarray, radius: int, *, bands: int = 4, queries: np.ndarray | None = None,
                  query_radius: int | None = None, chunk: int = 8192) -> np.ndarray:
    """All pairs (i, j), i < j, with ``popcount(h[i] ^ h[j]) <= radius``, by multi-index hashing.

    Args:
        hashes: uint64 (N,).
        radius: Hamming radius (inclusive). Exact: every pair within it is returned.
        bands: the 64 bits are split into this many equal bands (64 must divide evenly); each band is
            probed with every key within ``radius // bands`` bits of the query's band.
        queries: optional uint64 (M, N) extra hashes per item (e.g. of shifted copies): pair (i, j)
            is also returned when ``queries[m, i]`` is within ``query_radius`` of ``hashes[j]``.
        query_radius: radius for ``queries`` (default ``radius``); smaller is much cheaper.
        chunk: items probed per step (bounds memory).

    Returns:
        int64 (P, 2) unique pairs with i < j, sorted.
    """
    h = np.ascontiguousarray(hashes, np.uint64)
    n = len(h)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    if 64 % bands:
        raise ValueError("bands must divide 64")
    width = 64 // bands
    keymask = np.uint64((1 << width) - 1)
    qr = radius if query_radius is None else query_radius
    jobs = [(h, radius, True)] + ([(np.asarray(q, np.uint64), qr, False) for q in queries] if queries is not None else [])
    found: list[np.ndarray] = []
    small = width <= 20 and n < 2**31  # int32 indices halve the memory traffic, the bottleneck here
    itype = np.int32 if small else np.int64
    for b in range(bands):
        shift = np.uint64(b * width)
        keys = ((h >> shift) & keymask).astype(itype)
        order = np.argsort(keys, kind="stable").astype(itype)
        if small:  # direct bucket table: O(1) lookups instead of binary search
            counts = np.bincount(keys, minlength=1 << width).astype(itype)
            starts = (np.cumsum(counts) - counts).astype(itype)
        else:
            skeys = keys[order]
        for q, r, plain in jobs:
            masks = _flip_masks(width, r // bands).astype(itype)
            qkeys = ((q >> shift) & keymask).astype(itype)
            for s in range(0, n, chunk):
                items = np.arange(s, min(s + chunk, n), dtype=itype)
                probe = (qkeys[items, None] ^ masks[None, :]).ravel()
                if small:
                    lo, cnt = starts[probe], counts[probe]
                else:
                    lo = np.searchsorted(skeys, probe, "left")
                    cnt = np.searchsorted(skeys, probe, "right") - lo
                hit = np.flatnonzero(cnt)
                probe_src = items[hit // len(masks)]
                lo, cnt = lo[hit], cnt[hit]
                ends = np.cumsum(cnt, dtype=np.int64)
                tot = int(ends[-1]) if len(ends) else 0
                if tot == 0:
                    continue
                src = np.repeat(probe_src, cnt)
                pos = np.arange(tot, dtype=np.int64) + np.repeat(lo.astype(np.int64) - (ends - cnt), cnt)
                dst = order[pos]
                keep = src < dst if plain else src != dst  # plain hashes find each pair from both ends
                src, dst = src[keep], dst[keep]
                close = np.bitwise_count(q[src] ^ h[dst]) <= r
                src, dst = src[close].astype(np.int64), dst[close].astype(np.int64)
                found.append(np.minimum(src, dst) * n + np.maximum(src, dst))
    if not found:
        return np.zeros((0, 2), np.int64)
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // n, codes % n], 1)


def hamming_pairs_bruteforce(hashes: np.ndarray, radius: int, block: int = 2048) -> np.ndarray:
    """Reference: every pair within ``radius`` by blocked all-pairs XOR + popcount. O(N^2)."""
    h = np.ascontiguousarray(hashes, np.uint64)
    n = len(h)
    out = []
    for s in range(0, n, block):
        a = h[s : s + block]
        d = np.bitwise_count(a[:, None] ^ h[None, s:])  # only j >= s: upper triangle blocks
        i, j = np.nonzero(d <= radius)
        j = j + s
        i = i + s
        keep = i < j
        out.append(np.stack([i[keep], j[keep]], 1))
    if not out:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(out).astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
