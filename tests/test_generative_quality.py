"""A cheap version of benchmarks/quality_digits.py: a short cvae run on the real digits must cover
every class and honour the requested labels (judged by a nearest-centroid classifier on pixels, which
fits in milliseconds; the benchmark uses a logistic regression)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import datacheck
import generative


def test_short_cvae_run_covers_all_digits_and_honours_labels(tmp_path: Path) -> None:
    digits = datacheck.load("digits")
    x = digits.images.reshape(len(digits), -1) / 255.0
    centroids = np.stack([x[::2][digits.labels[::2] == k].mean(0) for k in range(10)])

    def predict(flat: np.ndarray) -> np.ndarray:
        return ((flat[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)

    assert (predict(x[1::2]) == digits.labels[1::2]).mean() > 0.85  # the judge itself is sound
    run = generative.train(model="cvae", data=digits, out=tmp_path / "r", steps=150, checkpoint_every=0)
    imgs, labels = run.model.sample_with_labels(500, generator=torch.Generator().manual_seed(0))
    pred = predict(imgs.reshape(500, -1) / 255.0)
    shares = np.bincount(pred, minlength=10) / 500
    assert shares.min() >= 0.03, shares
    assert (pred == labels).mean() >= 0.8
    # Noise alone (what an untrained decoder gives) would not pass: the bar has teeth.
    untrained = generative.build_model("cvae", digits.shape, 10)
    u_imgs, u_labels = untrained.sample_with_labels(500, generator=torch.Generator().manual_seed(0))
    assert (predict(u_imgs.reshape(500, -1) / 255.0) == u_labels).mean() < 0.5
