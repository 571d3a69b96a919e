"""The near-duplicate verifier and hashes (see `datacheck.checks.duplicates` for the pipeline): the
verifier grid (`verifier_grid`, or `GridRows` on demand), the best-shift correlation (`pair_scores`),
the plain and one-pixel-shifted pHashes (`hash_queries`) and the calibration's synthetic edits
(`apply_edit`)."""
from __future__ import annotations

import io
from typing import Callable

import numpy as np

from .. import hashing

EDITS = ("jpeg", "brightness_contrast", "noise", "rescale", "shift")


def verifier_grid(images: np.ndarray, grid: int) -> np.ndarray:
    """uint8 (N, C, h, w) with h = min(H, grid), w = min(W, grid): what the verifier compares."""
    n, c, h, w = images.shape
    size = (min(h, grid), min(w, grid))
    if size == (h, w):
        return images
    out = np.empty((n, c, *size), np.uint8)
    per = max(1, (1 << 22) // (c * h * w))
    for s in range(0, n, per):
        out[s : s + per] = np.rint(hashing.resize(images[s : s + per].astype(np.float32), size)).clip(0, 255)
    return out


class GridRows:
    """Verifier grids of ``images`` (uint8 (N, C, H, W)) computed on demand: ``rows[idx]`` is
    ``verifier_grid(images, grid)[idx]`` (same function on the same pixels), computed for those rows
    only, so no (N, C, h, w) copy of every item is held (3 KB an item at 32x32x3: 3 GB at 1M) when
    only candidate pairs and calibration samples are scored. `pair_scores` takes it as ``g``."""

    def __init__(self, images: np.ndarray, grid: int) -> None:
        self.images, self.grid = images, int(grid)
        self.same = min(images.shape[2], self.grid) == images.shape[2] and min(images.shape[3], self.grid) == images.shape[3]

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        if self.same:  # the grid is the image itself
            return np.asarray(self.images[idx])
        rows, inv = np.unique(idx, return_inverse=True)  # each row resized once per call
        return verifier_grid(np.asarray(self.images[rows]), self.grid)[inv.ravel()]


_SHIFTS = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))


def _crop(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    h, w = x.shape[-2:]
    return x[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]


def _normed(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    x -= x.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-3
    return x


def pair_scores(g: np.ndarray, a: np.ndarray, b: np.ndarray | None = None, *, ga: np.ndarray | None = None,
                chunk: int = 4096) -> np.ndarray:
    """Verifier scores in [0, 1] for pairs: max over one-pixel shifts of the correlation of the two
    grids on their overlap (negative correlation counts as 0).

    ``g``: uint8 (N, C, h, w) grids; pairs are ``(ga[k] if ga is given else g[a[k]], g[b[k]])``.
    """
    m = len(a) if ga is None else len(ga)
    out = np.zeros(m, np.float32)
    for s in range(0, m, chunk):
        x = g[a[s : s + chunk]] if ga is None else ga[s : s + chunk]
        out[s : s + chunk] = best_shift_correlation(x, g[b[s : s + chunk]])
    return np.clip(out, 0.0, 1.0)


def best_shift_correlation(x: np.ndarray, y: np.ndarray, normed: Callable[[np.ndarray], np.ndarray] = _normed
                           ) -> np.ndarray:
    """Row-wise correlation of x[k] and y[k] (K, C, h, w) on their overlap, maximised over the one-pixel
    shifts; ``normed`` centres and scales the flattened rows (`_normed`: all channels jointly)."""
    best = np.full(len(x), -1.0, np.float32)
    for dy, dx in _SHIFTS:
        # at 1-pixel scale a shift is a crop of both images to their overlap
        c = np.einsum("nd,nd->n", normed(_crop(x, dy, dx)), normed(_crop(y, -dy, -dx)))
        np.maximum(best, c, out=best)
    return best


def _shift_copies(x: np.ndarray) -> list[np.ndarray]:
    """The four one-pixel shifts (edge replicated) of an array (..., H, W)."""
    return [
        np.concatenate([x[..., :1], x[..., :-1]], -1),
        np.concatenate([x[..., 1:], x[..., -1:]], -1),
        np.concatenate([x[..., :1, :], x[..., :-1, :]], -2),
        np.concatenate([x[..., 1:, :], x[..., -1:, :]], -2),
    ]


def hash_queries(images: np.ndarray, shift: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """pHashes (N,) of uint8 (N, C, H, W) and, when ``shift``, the pHashes of the four one-pixel
    shifted copies (4, N). Luminance is computed once per chunk and shifted (shifts commute with it)."""
    n, _, hh, ww = images.shape
    h = np.empty(n, np.uint64)
    hq = np.empty((4, n), np.uint64) if shift else None
    per = max(1, (1 << 21) // max(1, hh * ww))
    for s in range(0, n, per):
        g = hashing.gray(images, s, s + per)
        h[s : s + len(g)] = hashing.phash_from_gray(hashing.resize(g, (32, 32)))
        if hq is not None:
            for k, gs in enumerate(_shift_copies(g)):
                hq[k, s : s + len(g)] = hashing.phash_from_gray(hashing.resize(gs, (32, 32)))
    return h, hq


# ----------------------------------------------------------------------------- synthetic edits
def apply_edit(img: np.ndarray, edit: str, rng: np.random.Generator) -> np.ndarray:
    """One calibration edit of a uint8 (C, H, W) image (same shape out)."""
    from PIL import Image

    c, h, w = img.shape
    hwc = img.transpose(1, 2, 0)
    pil = lambda a: Image.fromarray(a[:, :, 0] if c == 1 else a)  # noqa: E731
    back = lambda a: (a[:, :, None] if a.ndim == 2 else a).transpose(2, 0, 1)  # noqa: E731
    if edit == "jpeg":
        buf = io.BytesIO()
        pil(hwc).save(buf, "JPEG", quality=int(rng.integers(70, 91)))
        return back(np.array(Image.open(buf).convert("L" if c == 1 else "RGB")))
    if edit == "brightness_contrast":
        gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-25, 25)
        return np.clip(img.astype(np.float32) * gain + bias, 0, 255).round().astype(np.uint8)
    if edit == "noise":
        return np.clip(img + rng.normal(0, 5.0, img.shape), 0, 255).round().astype(np.uint8)
    if edit == "rescale":
        f = rng.uniform(0.8, 0.9)
        small = pil(hwc).resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
        return back(np.array(small.resize((w, h), Image.BILINEAR)))
    if edit == "shift":
        axis = int(rng.integers(0, 2)) + 1
        sign = 1 if rng.random() < 0.5 else -1
        if axis == 2:
            return np.concatenate([img[:, :, :1], img[:, :, :-1]] if sign > 0 else [img[:, :, 1:], img[:, :, -1:]], 2)
        return np.concatenate([img[:, :1], img[:, :-1]] if sign > 0 else [img[:, 1:], img[:, -1:]], 1)
    raise ValueError(f"unknown edit {edit!r}")

