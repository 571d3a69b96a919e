"""What kind of copy a found pair is: the edit that best explains how the copy differs from its training item.

Each test reads one property of the pair, so a user reading the table sees why it matched:

* ``exact``: identical pixels (decided by hash before this module);
* ``grayscale`` / ``colourised``: one side has colour and the other none (R = G = B, or one channel);
* ``recoloured``: the channels' mean levels moved by different amounts (hue or saturation shift);
* ``shifted/re-cropped``: a one-pixel shift of one side fits much better than none, or the difference
  grows from the centre to the border (a small re-crop or rescale moves the border most);
* ``blurred``: the copy has clearly less fine detail (Laplacian energy) than its item;
* ``re-encoded``: the copy is JPEG-stable (re-encoding it changes it much less than re-encoding the item);
* ``noisy``: the copy has more fine detail than its item and the difference is fine-grained;
* ``brightness/contrast``: the same picture, lighter, darker or with more or less contrast;
* ``near``: none of these stands out.
"""
from __future__ import annotations

import io

import numpy as np

from . import hashing

KINDS = ("exact", "grayscale", "colourised", "recoloured", "shifted/re-cropped", "blurred", "re-encoded", "noisy",
         "brightness/contrast", "near")


def colourful(img: np.ndarray) -> float:
    """Mean spread between the channels of uint8 (C, H, W) in levels (0 for a gray or one-channel image)."""
    if img.shape[0] < 3:
        return 0.0
    x = img.astype(np.float32)
    return float((x.max(0) - x.min(0)).mean())


def _laplacian_energy(g: np.ndarray) -> float:
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.sqrt(np.mean(lap**2))) if lap.size else 0.0


def _jpeg_change(g: np.ndarray, quality: int = 75) -> float:
    from PIL import Image

    g8 = np.rint(g).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(g8).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return float(np.sqrt(np.mean((np.asarray(Image.open(buf), np.float32) - g8) ** 2)))


def classify(f: np.ndarray, t: np.ndarray, colour_f: float | None = None) -> str:
    """The kind of copy of uint8 (C, H, W) ``f`` of ``t`` (same shape; see the module docstring).
    ``colour_f``: the copy's colourfulness before it was converted to the training set's channels."""
    cf = colourful(f) if colour_f is None else colour_f
    ct = colourful(t)
    if cf < 2 and ct >= 8:
        return "grayscale"
    if ct < 2 and cf >= 8:
        return "colourised"
    a, b = f.astype(np.float32), t.astype(np.float32)
    dm = a.reshape(len(a), -1).mean(1) - b.reshape(len(b), -1).mean(1)  # per-channel mean change
    if len(dm) > 1 and dm.max() - dm.min() > 6:
        return "recoloured"
    ga, gb = hashing.gray(f[None])[0], hashing.gray(t[None])[0]
    ga, gb = ga - ga.mean(), gb - gb.mean()
    h, w = ga.shape
    res = {}
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            x = ga[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
            y = gb[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
            res[(dy, dx)] = float(np.sqrt(np.mean((x - y) ** 2)))
    r0 = res[(0, 0)]
    if min(res.values()) < 0.6 * r0 and r0 > 1.0:
        return "shifted/re-cropped"
    if min(h, w) >= 12:
        m = max(2, min(h, w) // 8)
        d = np.abs(ga - gb)
        centre = d[m:-m, m:-m].mean()
        ring = (d.sum() - d[m:-m, m:-m].sum()) / (d.size - d[m:-m, m:-m].size)
        if ring > 2.5 * centre + 1.0 and r0 > 1.5:
            return "shifted/re-cropped"
    la, lb = _laplacian_energy(ga), _laplacian_energy(gb)
    if lb > 4 and la < 0.75 * lb:
        return "blurred"
    if min(h, w) >= 8:
        ja, jb = _jpeg_change(ga + 128), _jpeg_change(gb + 128)
        if jb > 1.0 and ja < 0.6 * jb and r0 > 0.5:
            return "re-encoded"
    if la > 1.15 * lb + 1 and r0 > 1.5:
        return "noisy"
    sa, sb = ga.std(), gb.std()
    if abs(float(dm.mean())) > 3 or (sb > 1 and abs(sa / sb - 1) > 0.08):
        return "brightness/contrast"
    return "near"
