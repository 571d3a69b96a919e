"""Training-data leakage: a black-box membership-inference score (GAN-Leaks' full black-box attack, Chen et
al., CCS 2020).

The attacker sees only generated samples. For each real image it measures the distance to the nearest
generated sample; a generator that leaks its training set puts samples closer to its training images
(members) than to real images it never saw (non-members). The score is the AUC of telling members from
non-members by that distance (0.5: the samples do not give the training set away), with a bootstrap
interval (members and non-members resampled separately).

Space: pixels, area-averaged to at most 16 x 16 per channel and scaled to [0, 1]. No learned feature
extractor is involved, so the score cannot reflect which images an extractor was trained on (the study's
classifier features are trained on part of the reference, i.e. on some of the non-members), and copies are
close in pixels by definition; the averaging keeps the all-pairs search cheap (10k samples x 2k images
in about a second) and blunts pixel noise, as the copy search's low-pass distances do.
"""
from __future__ import annotations

from typing import Any

import numpy as np

MAX_SIDE = 16  # images are compared at most at this side
MAX_QUERIES = 1000  # members and non-members scored, at most, each (equal numbers: a balanced AUC)
BOOTSTRAP = 1000


def _vectors(images: np.ndarray) -> np.ndarray:
    """float32 (N, D) of uint8 (N, C, H, W): area-averaged to at most MAX_SIDE, scaled to [0, 1]."""
    from datacheck import hashing

    _, c, h, w = images.shape
    size = (min(h, MAX_SIDE), min(w, MAX_SIDE))
    out = [hashing.resize(images[s : s + 4096].astype(np.float32) / 255.0, size).reshape(len(images[s : s + 4096]), -1)
           for s in range(0, len(images), 4096)]
    return np.concatenate(out) if out else np.zeros((0, c * size[0] * size[1]), np.float32)


def nearest_distance(queries: np.ndarray, fake: np.ndarray, block: int = 1024) -> np.ndarray:
    """(Q,) L2 distance of each query vector (Q, D) to its nearest fake vector (F, D)."""
    fn = (fake * fake).sum(1)
    out = np.empty(len(queries), np.float32)
    for s in range(0, len(queries), block):
        q = queries[s : s + block]
        d2 = (q * q).sum(1)[:, None] + fn[None, :] - 2 * q @ fake.T
        out[s : s + block] = np.sqrt(np.maximum(d2.min(1), 0))
    return out


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + half the ties (Mann-Whitney U / (n_pos n_neg))."""
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([pos, neg]))
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def membership_auc(*, members: np.ndarray, nonmembers: np.ndarray, fake: np.ndarray, seed: int = 0,
                   n_boot: int = BOOTSTRAP, level: float = 0.95) -> dict[str, Any]:
    """GAN-Leaks full black-box AUC of uint8 (N, C, H, W) training images (``members``) against real
    images the generator never saw (``nonmembers``), from generated ``fake`` images.

    Returns ``mia_auc`` (score = minus the distance to the nearest fake: members closer -> AUC > 0.5),
    ``mia_auc_low``/``mia_auc_high`` (percentile bootstrap interval at ``level``), ``mia_n_members``,
    ``mia_n_nonmembers``; the AUC keys are None when a group is empty."""
    from datacheck import hashing

    none = {"mia_auc": None, "mia_auc_low": None, "mia_auc_high": None, "mia_n_members": 0, "mia_n_nonmembers": 0}
    # a "non-member" with the pixels of a training image is a member in all but name
    train_keys = set(hashing.exact_keys(members).tolist())
    nonmembers = nonmembers[[k not in train_keys for k in hashing.exact_keys(nonmembers).tolist()]]
    if len(members) == 0 or len(nonmembers) == 0 or len(fake) == 0:
        return none
    rng = np.random.default_rng(seed)
    m = min(len(members), len(nonmembers), MAX_QUERIES)
    mem = members[np.sort(rng.choice(len(members), m, replace=False))]
    non = nonmembers[np.sort(rng.choice(len(nonmembers), m, replace=False))]
    fv = _vectors(fake)
    sm, sn = -nearest_distance(_vectors(mem), fv), -nearest_distance(_vectors(non), fv)
    point = auc(sm, sn)
    boots = np.array([auc(sm[rng.integers(0, m, m)], sn[rng.integers(0, m, m)]) for _ in range(int(n_boot))])
    a = (1 - level) / 2
    return {"mia_auc": round(point, 4), "mia_auc_low": round(float(np.quantile(boots, a)), 4),
            "mia_auc_high": round(float(np.quantile(boots, 1 - a)), 4),
            "mia_n_members": int(m), "mia_n_nonmembers": int(m)}
