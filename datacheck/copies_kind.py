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
    if min(h, w) >= 12 and r0 > 0.5 and _recrop_fits(f, t) < 0.6 * r0:
        return "shifted/re-cropped"
    # a JPEG copy differs from its item most across 8-pixel block edges and is itself stable under
    # re-encoding (a shifted or recoloured crop of a JPEG photo has block edges in its difference too)
    if min(h, w) >= 16 and r0 > 0.5 and _blockiness(ga - gb) > 1.3 and _jpeg_change(ga + 128) < 0.8 * _jpeg_change(gb + 128):
        return "re-encoded"
    la, lb = _laplacian_energy(ga), _laplacian_energy(gb)
    if lb > 1.5 and la < 0.7 * lb:
        return "blurred"
    if min(h, w) >= 8:
        ja, jb = _jpeg_change(ga + 128), _jpeg_change(gb + 128)
        if jb > 1.0 and ja < 0.6 * jb and r0 > 0.5:
            return "re-encoded"
    d = ga - gb
    # white noise puts most of a difference's energy in its finest detail (Laplacian variance ~20x its
    # variance); a smooth change of light or colour puts almost none there
    if r0 > 1.0 and la > lb and _laplacian_energy(d) ** 2 > 10 * d.var():
        return "noisy"
    sa, sb = ga.std(), gb.std()
    if abs(float(dm.mean())) > 3 or (sb > 1 and abs(sa / sb - 1) > 0.08):
        return "brightness/contrast"
    return "near"


def _blockiness(d: np.ndarray) -> float:
    """How much larger a difference image's steps are across JPEG's 8-pixel block edges than elsewhere
    (about 1 for a difference without block structure)."""
    num = den = 0.0
    for g in (np.abs(np.diff(d, axis=1)), np.abs(np.diff(d, axis=0)).T):
        edge = (np.arange(g.shape[1]) + 1) % 8 == 0
        num += g[:, edge].mean()
        den += g[:, ~edge].mean()
    return num / max(den, 1e-6)


def _recrop_fits(f: np.ndarray, t: np.ndarray) -> float:
    """The smallest gray RMS difference between ``f`` and ``t`` re-cropped by 2-5% (box at a few offsets)
    and resized back, both with their means removed."""
    from PIL import Image

    gf = hashing.gray(f[None])[0]
    gf = gf - gf.mean()
    im = Image.fromarray(hashing.gray(t[None])[0], "F")
    h, w = gf.shape
    best = np.inf
    for s in (0.96, 0.98):
        for fy in (0.0, 0.5, 1.0):
            for fx in (0.0, 0.5, 1.0):
                x0, y0 = fx * w * (1 - s), fy * h * (1 - s)
                g = np.asarray(im.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + w * s, y0 + h * s)))
                best = min(best, float(np.sqrt(np.mean((gf - (g - g.mean())) ** 2))))
    return best
