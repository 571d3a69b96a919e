"""Files that documentation examples start from (see tests/test_docs.py, ``<!-- docs: setup NAME -->``).

Each function takes the page's working folder and makes what the page's prose describes, deterministically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def messy_photos(folder: Path) -> None:
    """``photos/``: two classes, one odd size, gray JPEGs beside colour PNGs, a truncated PNG, a text file
    named ``.png``, an empty ``.jpg`` and a ``README.txt`` (the datacheck guide's messy folder)."""
    rng = np.random.default_rng(0)
    root = folder / "photos"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True, exist_ok=True)

    def smooth(h: int, w: int, c: int) -> np.ndarray:
        # A smooth random picture (upsampled noise), so JPEG keeps it and checks see an ordinary image.
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, c), dtype=np.uint8)
        big = np.kron(small, np.ones((8, 8, 1), np.uint8))[:h, :w]
        return big if c == 3 else big[..., 0]

    for i in range(3):
        Image.fromarray(smooth(32, 32, 3)).save(root / "dogs" / f"dog{i}.png")
    Image.fromarray(smooth(48, 40, 3)).save(root / "dogs" / "big.png")  # 48 high, 40 wide
    for i in range(3):
        Image.fromarray(smooth(32, 32, 1)).save(root / "cats" / f"cat{i}.jpg", quality=95)
    good = (root / "dogs" / "dog0.png").read_bytes()
    (root / "cats" / "cut.png").write_bytes(good[: len(good) // 2])
    (root / "cats" / "notes.png").write_text("not a picture, a note someone saved with the wrong name\n")
    (root / "dogs" / "empty.jpg").write_bytes(b"")
    (root / "README.txt").write_text("photos for the profile example\n")
