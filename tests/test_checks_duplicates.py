"""Exact and near duplicates: hashing, the multi-index search, planted near-duplicates (recall AND
precision), near-uniform images, and the dedupe table."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import datacheck
from datacheck import Dataset, hashing
from datacheck.checks import run_checks
from datacheck.deduplication import dedupe, find_duplicate_groups

from test_checks_quality import draw_shapes


# --------------------------------------------------------------------- edits the tests plant
# (written here independently of the library's calibration edits)
def jpeg(img: np.ndarray, q: int) -> np.ndarray:
    c = img.shape[0]
    buf = io.BytesIO()
    Image.fromarray(img[0] if c == 1 else img.transpose(1, 2, 0)).save(buf, "JPEG", quality=q)
    out = np.asarray(Image.open(buf))
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)


def brightness(img: np.ndarray, gain: float, bias: float) -> np.ndarray:
    return np.clip(np.rint(img * gain + bias), 0, 255).astype(np.uint8)


def noise(img: np.ndarray, rng: np.random.Generator, sigma: float = 4.0) -> np.ndarray:
    return np.clip(np.rint(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


def shift(img: np.ndarray, axis: int) -> np.ndarray:
    """One pixel down (axis 1) or right (axis 2); the vacated border row/column repeats the old one."""
    out = np.roll(img, 1, axis=axis)
    if axis == 1:
        out[:, 0] = img[:, 0]
    else:
        out[:, :, 0] = img[:, :, 0]
    return out


def rescale(img: np.ndarray, f: float) -> np.ndarray:
    c, h, w = img.shape
    pil = Image.fromarray(img[0] if c == 1 else img.transpose(1, 2, 0))
    back = np.asarray(pil.resize((round(w * f), round(h * f)), Image.BICUBIC).resize((w, h), Image.BICUBIC))
    return back[None] if back.ndim == 2 else back.transpose(2, 0, 1)


def plant(base: Dataset, edits: dict, per_edit: int, seed: int) -> tuple[Dataset, dict[str, list[tuple[int, int]]]]:
    """Append edited copies of distinct random items; return the dataset and (source, copy) pairs per edit."""
    rng = np.random.default_rng(seed)
    n = len(base)
    src = rng.choice(n, per_edit * len(edits), replace=False)
    new, pairs = [], {}
    for k, (name, fn) in enumerate(edits.items()):
        chunk = src[k * per_edit : (k + 1) * per_edit]
        pairs[name] = [(int(s), n + len(new) + j) for j, s in enumerate(chunk)]
        new += [fn(base.images[s], rng) for s in chunk]
    imgs = np.concatenate([base.images, np.stack(new).astype(np.uint8)])
    ds = Dataset(images=imgs, labels=np.concatenate([base.labels, base.labels[src]]),
                 ids=base.ids + tuple(f"copy{i}" for i in range(len(new))), class_names=base.class_names)
    return ds, pairs


def score_groups(groups: np.ndarray, pairs: dict[str, list[tuple[int, int]]]) -> tuple[dict[str, float], float, int]:
    """Recall per edit (copy in the same group as its source), precision (flagged items that are a
    planted source or copy) and the number of groups without any planted item (false groups)."""
    recall = {e: float(np.mean([groups[a] >= 0 and groups[a] == groups[b] for a, b in p])) for e, p in pairs.items()}
    planted = {i for p in pairs.values() for ab in p for i in ab}
    flagged = set(np.flatnonzero(groups >= 0).tolist())
    precision = len(flagged & planted) / max(len(flagged), 1)
    false_groups = sum(1 for g in np.unique(groups[groups >= 0]) if not (set(np.flatnonzero(groups == g)) & planted))
    return recall, precision, false_groups


# --------------------------------------------------------------------- hashing and search
def test_multi_index_search_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 3000, dtype=np.int64).astype(np.uint64)
    # plant neighbours at every distance 0..14 so the radius boundary is exercised
    near = base[:300].copy()
    for i in range(300):
        for b in rng.choice(64, i % 15, replace=False):
            near[i] ^= np.uint64(1) << np.uint64(b)
    h = np.concatenate([base, near])
    for radius, bands in [(11, 4), (7, 4), (3, 2), (15, 8)]:
        fast = hashing.hamming_pairs(h, radius, bands=bands)
        slow = hashing.hamming_pairs_bruteforce(h, radius)
        assert np.array_equal(fast, slow), (radius, bands)
        assert len(slow) >= sum(1 for i in range(300) if i % 15 <= radius)


def test_hashes_work_from_8x8_to_large_images() -> None:
    rng = np.random.default_rng(1)
    small = datacheck.load("digits").images[:50]
    big = np.repeat(np.repeat(draw_shapes(20, rng, 60), 5, axis=2), 5, axis=3)[:, :, :, :250]  # 300x250 RGB
    for imgs in (small, big):
        for fn in (hashing.phash, hashing.dhash):
            h = fn(imgs)
            assert h.dtype == np.uint64 and h.shape == (len(imgs),)
            assert len(np.unique(h)) >= 0.9 * len(imgs)  # distinct images, distinct hashes
    m = hashing._resample_matrix(8, 32)
    assert np.allclose(m.sum(1), 1) and np.allclose(hashing._resample_matrix(250, 32).sum(1), 1)
    # a brightness/contrast change barely moves the pHash (a sign pattern of AC terms; only uint8
    # rounding flips coefficients that sit at the median)
    darker = np.clip(big.astype(int) // 2 + 20, 0, 255).astype(np.uint8)
    assert hashing.popcount64(hashing.phash(big) ^ hashing.phash(darker)).max() <= 4


# --------------------------------------------------------------------- planted near duplicates
DIGIT_EDITS = {
    "jpeg": lambda im, rng: jpeg(im, int(rng.integers(70, 95))),
    "brightness_contrast": lambda im, rng: brightness(im, rng.uniform(0.75, 0.95), rng.uniform(5, 30)),
    "noise": lambda im, rng: noise(im, rng, 4.0),
    "shift": lambda im, rng: shift(im, int(rng.integers(1, 3))),
}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return datacheck.load("digits")


def test_near_duplicates_planted_in_digits(digits: Dataset) -> None:
    ds, pairs = plant(digits, DIGIT_EDITS, 30, seed=0)
    res = run_checks(ds, ["near_duplicate", "exact_duplicate"])
    r = res["near_duplicate"]
    recall, precision, false_groups = score_groups(r.groups, pairs)
    assert all(v >= 0.9 for v in recall.values()), recall
    assert precision >= 0.9, precision
    assert false_groups <= 5, false_groups  # clean digits hold a handful of genuinely near-identical pairs
    op = r.summary["operating_point"]
    assert 0.9 <= op["threshold"] < 1 and op["calibrated"]
    assert op["recall_by_edit"]["jpeg"] >= 0.9 and op["precision"] >= 0.9
    assert set(op["recall_by_edit"]) == {"jpeg", "brightness_contrast", "noise", "rescale", "shift"}
    assert np.array_equal(r.flags, r.groups >= 0) and np.all(r.scores[r.flags] < 0.5)
    flagged = np.flatnonzero(r.flags)
    assert all("near duplicate of" in r.details[i] for i in flagged)
    assert res["exact_duplicate"].n_flagged == 0


def test_near_duplicates_planted_in_drawn_rgb_images() -> None:
    """All five edits, including the small rescale, on 32x32 RGB drawings."""
    rng = np.random.default_rng(2)
    imgs = draw_shapes(700, rng)
    base = Dataset(images=imgs, labels=np.full(700, -1), ids=tuple(f"s{i}.png" for i in range(700)))
    edits = {**DIGIT_EDITS, "rescale": lambda im, rng: rescale(im, rng.uniform(0.8, 0.9))}
    ds, pairs = plant(base, edits, 30, seed=3)
    r = run_checks(ds, ["near_duplicate"])["near_duplicate"]
    recall, precision, false_groups = score_groups(r.groups, pairs)
    assert all(v >= 0.9 for v in recall.values()), recall
    assert precision >= 0.9 and false_groups == 0, (precision, false_groups)
    assert r.summary["operating_point"]["recall"] >= 0.9


def test_threshold_is_a_parameter(digits: Dataset) -> None:
    ds, pairs = plant(digits.subset(range(600)), DIGIT_EDITS, 10, seed=4)
    strict = run_checks(ds, ["near_duplicate"], params={"near_duplicate": {"threshold": 0.9999}})["near_duplicate"]
    assert strict.summary["threshold"] == 0.9999 and not strict.summary["operating_point"]["calibrated"]
    loose = run_checks(ds, ["near_duplicate"])["near_duplicate"]
    assert strict.n_flagged < loose.n_flagged


def test_near_uniform_images_do_not_collapse_into_one_group() -> None:
    rng = np.random.default_rng(5)
    levels = np.arange(0, 256, 10)  # 26 flat images at distinct levels, plus blanks with faint noise
    flat = [np.full((3, 16, 16), v, np.uint8) for v in levels]
    twins = [noise(np.full((3, 16, 16), v, np.uint8), rng, 0.6) for v in (40, 41, 200)]  # near 40 and 200
    imgs = np.stack(flat + twins + list(draw_shapes(60, rng, 16)))
    ds = Dataset(images=imgs, labels=np.full(len(imgs), -1), ids=tuple(f"u{i}" for i in range(len(imgs))))
    dup = find_duplicate_groups(ds)
    g = dup.group
    n_flat = len(flat)
    i40, i200 = int(np.flatnonzero(levels == 40)[0]), int(np.flatnonzero(levels == 200)[0])
    assert g[i40] >= 0 and g[n_flat] == g[i40] == g[n_flat + 1]
    assert g[i200] >= 0 and g[n_flat + 2] == g[i200] and g[i200] != g[i40]
    grouped = np.flatnonzero(g[: n_flat + 3] >= 0)
    assert set(grouped) == {i40, i200, n_flat, n_flat + 1, n_flat + 2}
    assert dup.uniform[: n_flat + 3].all() and not dup.uniform[n_flat + 3 :].any()


# --------------------------------------------------------------------- exact duplicates and dedupe
def test_exact_duplicates_flag_every_member_and_dedupe_keeps_one(digits: Dataset) -> None:
    base = digits.subset(range(400))
    copies = [3, 3, 10, 77, 250]
    near = brightness(base.images[120], 0.9, 12)
    imgs = np.concatenate([base.images, base.images[copies], near[None]])
    sizes = np.tile(np.array([[8, 8]], np.int32), (len(imgs), 1))
    sizes[402] = [16, 16]  # a higher-resolution copy of item 10: dedupe keeps it
    ds = Dataset(images=imgs, labels=np.concatenate([base.labels, base.labels[copies], [base.labels[120]]]),
                 ids=base.ids + tuple(f"dup{i}" for i in range(6)), class_names=base.class_names, orig_sizes=sizes)
    r = run_checks(ds, ["exact_duplicate"])["exact_duplicate"]
    expected = {3, 400, 401, 10, 402, 77, 403, 250, 404}
    assert set(np.flatnonzero(r.flags)) == expected
    assert r.groups[3] == r.groups[400] == r.groups[401] and r.groups[10] == r.groups[402] != r.groups[3]
    assert r.summary["n_groups"] == 4 and r.summary["n_redundant"] == 5

    df = dedupe(ds)
    assert list(df.columns) == ["id", "path", "cluster", "keep", "reason"] and len(df) == len(ds)
    clustered = df[df.cluster.notna()]
    assert (clustered.groupby("cluster").keep.sum() == 1).all()
    assert df[df.cluster.isna()].keep.all() and (df[df.cluster.isna()].reason == "").all()
    assert df.loc[402, "keep"] and not df.loc[10, "keep"]  # larger original wins
    assert df.loc[3, "keep"] and not df.loc[400, "keep"]  # same size: first in order wins
    assert df.loc[405, "reason"] == "near" and df.loc[120, "cluster"] == df.loc[405, "cluster"]
    assert (df.loc[[3, 400, 401], "reason"] == "exact").all()
    # exact-only groups are not near-duplicate findings, the near pair is
    nd = run_checks(ds, ["near_duplicate"])["near_duplicate"]
    assert nd.flags[120] and nd.flags[405] and not nd.flags[[3, 400, 401]].any()
    # datasets without duplicates keep everything
    assert dedupe(digits.subset([0, 1, 2, 3])).keep.all()
