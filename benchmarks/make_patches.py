"""Write a labelled set of real RGB 32x32 images cut from scikit-learn's bundled sample photos.

The two photos (``sklearn.datasets.load_sample_images``: china.jpg and flower.jpg, 427 x 640) are cut
into 32 x 32 patches on a stride of 16 px (975 per photo, 1,950 in all); the class of a patch is its
photo and which fifth of the photo's width its centre lies in (10 classes: ``china-0`` .. ``flower-4``).
Neighbouring patches overlap by half, as crops of one photo do: a hard case for near-duplicate checks
and a real one for a generator (textures, edges, sky).

    python benchmarks/make_patches.py OUT.npz          # or a folder: OUT/ (class sub-folders of PNGs)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def patches(size: int = 32, stride: int = 16) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 (N, size, size, 3) patches, int64 labels (N,), class names."""
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    imgs, labels, names = [], [], []
    for k, (photo, fname) in enumerate(zip(data.images, data.filenames)):
        stem = Path(fname).stem
        names += [f"{stem}-{j}" for j in range(5)]
        h, w, _ = photo.shape
        for y in range(0, h - size + 1, stride):
            for x in range(0, w - size + 1, stride):
                imgs.append(photo[y:y + size, x:x + size])
                labels.append(5 * k + min(4, (x + size // 2) * 5 // w))
    return np.stack(imgs).astype(np.uint8), np.asarray(labels, np.int64), names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="an .npz file, or a folder to fill with class sub-folders of PNGs")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--stride", type=int, default=16)
    args = ap.parse_args(argv)
    x, y, names = patches(args.size, args.stride)
    out = Path(args.out)
    if out.suffix == ".npz":
        np.savez_compressed(out, images=x, labels=y, class_names=np.asarray(names))
    else:
        from PIL import Image

        for i, (img, lab) in enumerate(zip(x, y)):
            d = out / names[lab]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.png")
    print(f"{len(x)} patches of {args.size}x{args.size} in {len(names)} classes -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
