"""Sample grids as PNG, nearest-upscaled so 8x8 images stay visible."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from datacheck.io import write_bytes


def make_grid(images: np.ndarray, ncol: int = 8, pad: int = 1, min_size: int = 32) -> np.ndarray:
    """uint8 (N, C, H, W) -> one uint8 (H', W', C) image; each tile is scaled up by an integer
    factor (nearest) until it is at least ``min_size`` pixels high."""
    n, c, h, w = images.shape
    scale = max(1, -(-min_size // h))
    tiles = images.repeat(scale, axis=2).repeat(scale, axis=3)
    th, tw = h * scale, w * scale
    ncol = max(1, min(ncol, n))
    nrow = max(1, -(-n // ncol))
    canvas = np.full((c, nrow * (th + pad) + pad, ncol * (tw + pad) + pad), 64, np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        y0, x0 = pad + r * (th + pad), pad + k * (tw + pad)
        canvas[:, y0:y0 + th, x0:x0 + tw] = tiles[i]
    return canvas.transpose(1, 2, 0)


def save_grid(images: np.ndarray, path: str | os.PathLike, ncol: int = 8, min_size: int = 32) -> None:
    """Write a grid of uint8 (N, C, H, W) images to ``path`` (PNG, atomically)."""
    arr = make_grid(images, ncol=ncol, min_size=min_size)
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())
