"""Quality checks: plant each issue in digits and in drawn 32x32 RGB images; assert recall AND precision."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import datacheck
from datacheck import Dataset
from datacheck.checks import CHECKS, run_checks
from datacheck.errors import UserError


def draw_shapes(n: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """uint8 (n, 3, size, size) colored rectangles and discs on a colored background, mild noise."""
    out = np.empty((n, 3, size, size), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = np.ones((3, size, size)) * rng.uniform(30, 225, (3, 1, 1))
        for _ in range(rng.integers(3, 7)):
            col = rng.uniform(0, 255, (3, 1, 1))
            if rng.random() < 0.5:
                y0, x0 = rng.integers(0, size - 2, 2)
                h, w = rng.integers(2, max(3, size // 2), 2)
                m = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
            else:
                cy, cx = rng.uniform(0, size, 2)
                r = rng.uniform(size / 10, size / 3)
                m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            img = np.where(m, col, img)
        out[i] = np.clip(img + rng.normal(0, 3, img.shape), 0, 255)
    return out


def make(images: np.ndarray, **kw) -> Dataset:
    n = len(images)
    return Dataset(images=images, labels=np.full(n, -1), ids=tuple(f"img{i:04d}.png" for i in range(n)), **kw)


def pr(flags: np.ndarray, planted: np.ndarray) -> tuple[float, float]:
    found = np.flatnonzero(flags)
    tp = len(set(found.tolist()) & set(planted.tolist()))
    return tp / len(planted), tp / max(len(found), 1)


def assert_finds_planted(r, planted: np.ndarray, check: str) -> None:
    """Recall and precision of at least 0.9 on the planted items, and score < 0.5 exactly for flagged
    items (the smooth mapping around the threshold)."""
    recall, precision = pr(r.flags, planted)
    assert recall >= 0.9 and precision >= 0.9, (check, recall, precision, r.n_flagged)
    assert np.array_equal(r.scores < 0.5, r.flags)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return datacheck.load("digits")


@pytest.fixture(scope="module")
def planted_digits(digits: Dataset):
    """digits with 25 dark, 25 light, 25 blurry, 25 blank and 25 pure-noise images planted at known positions."""
    rng = np.random.default_rng(0)
    imgs = digits.images.copy()
    pos = rng.choice(len(imgs), 125, replace=False)
    kinds = {"dark": pos[:25], "light": pos[25:50], "blurry": pos[50:75], "low_information": pos[75:100],
             "noisy": pos[100:]}
    f = imgs.astype(np.float64)
    imgs[kinds["dark"]] = np.rint(f[kinds["dark"]] * 0.15)
    imgs[kinds["light"]] = np.rint(205 + f[kinds["light"]] * 0.18)
    blurred = gaussian_filter(f[kinds["blurry"]], (0, 0, 1.0, 1.0), mode="nearest")
    imgs[kinds["blurry"]] = np.rint(blurred * 255 / blurred.max(axis=(1, 2, 3), keepdims=True))
    blank = 128 + rng.normal(0, 1.5, (25, 1, 8, 8))
    imgs[kinds["low_information"]] = np.clip(np.rint(blank), 0, 255)
    imgs[kinds["noisy"]] = rng.integers(0, 256, (25, 1, 8, 8))
    ds = digits.replace(images=imgs.astype(np.uint8))
    return ds, kinds, run_checks(ds, ["dark", "light", "blurry", "noisy", "low_information", "grayscale"])


@pytest.mark.parametrize("check", ["dark", "light", "blurry", "noisy", "low_information"])
def test_planted_quality_issues_in_digits(planted_digits, check: str) -> None:
    ds, kinds, res = planted_digits
    r = res[check]
    assert_finds_planted(r, kinds[check], check)
    assert r.scores.min() >= 0 and r.scores.max() <= 1
    assert r.summary["n_flagged"] == r.flags.sum()
    assert all(r.details[i] for i in np.flatnonzero(r.flags))


def test_grayscale_on_one_channel_dataset_flags_nothing(planted_digits) -> None:
    _, _, res = planted_digits
    assert res["grayscale"].n_flagged == 0 and "1-channel" in res["grayscale"].summary["note"]


def test_clean_digits_are_not_flagged_by_quality_checks(digits: Dataset) -> None:
    res = run_checks(digits, ["dark", "light", "blurry", "noisy", "low_information", "odd_size", "odd_aspect_ratio"])
    for name, r in res.items():
        assert r.n_flagged <= 0.002 * len(digits), (name, r.n_flagged)


@pytest.fixture(scope="module")
def planted_rgb():
    """300 drawn RGB images with 20 each of dark, light, blurry, blank, grayscale-stored-as-RGB and
    pixel noise."""
    rng = np.random.default_rng(1)
    imgs = draw_shapes(300, rng)
    pos = rng.choice(300, 120, replace=False)
    kinds = {"dark": pos[:20], "light": pos[20:40], "blurry": pos[40:60], "low_information": pos[60:80],
             "grayscale": pos[80:100], "noisy": pos[100:]}
    f = imgs.astype(np.float64)
    imgs[kinds["dark"]] = np.rint(f[kinds["dark"]] * 0.2)
    imgs[kinds["light"]] = np.rint(200 + f[kinds["light"]] * 0.2)
    imgs[kinds["blurry"]] = np.rint(gaussian_filter(f[kinds["blurry"]], (0, 0, 1.5, 1.5), mode="nearest"))
    # colored blank frames (a gray blank would rightly also be "grayscale")
    imgs[kinds["low_information"]] = np.clip(rng.uniform(40, 200, (20, 3, 1, 1)) + rng.normal(0, 1.0, (20, 3, 32, 32)), 0, 255)
    lum = np.rint(f[kinds["grayscale"]].mean(1, keepdims=True))
    imgs[kinds["grayscale"]] = np.repeat(lum, 3, axis=1)
    imgs[kinds["noisy"]] = rng.integers(0, 256, (20, 3, 32, 32))
    ds = make(imgs.astype(np.uint8))
    return ds, kinds, run_checks(ds, ["dark", "light", "blurry", "noisy", "low_information", "grayscale"])


@pytest.mark.parametrize("check", ["dark", "light", "blurry", "noisy", "low_information", "grayscale"])
def test_planted_quality_issues_in_drawn_rgb(planted_rgb, check: str) -> None:
    """Light, blur and grayscale-as-RGB are where CleanVision misses (0/200, 16/200, 0/200)."""
    ds, kinds, res = planted_rgb
    assert_finds_planted(res[check], kinds[check], check)


def test_grayscale_majority_is_a_dataset_level_finding() -> None:
    rng = np.random.default_rng(2)
    imgs = draw_shapes(40, rng)
    imgs[:30] = imgs[:30].mean(1, keepdims=True).astype(np.uint8)  # 75% gray
    r = run_checks(make(imgs), ["grayscale"])["grayscale"]
    assert r.n_flagged == 0 and r.summary["gray_fraction"] == 0.75 and "channels=1" in r.summary["note"]
    # the threshold is a parameter: with max_fraction=0.8 the 30 gray items are flagged
    r = run_checks(make(imgs), ["grayscale"], params={"grayscale": {"max_fraction": 0.8}})["grayscale"]
    assert np.array_equal(np.flatnonzero(r.flags), np.arange(30))


def test_odd_size_and_aspect_ratio_use_original_sizes() -> None:
    rng = np.random.default_rng(3)
    n = 200
    sizes = np.tile(np.array([[480, 640]], np.int32), (n, 1)) + rng.integers(-20, 20, (n, 2)).astype(np.int32)
    small = np.arange(0, 10)  # 16x smaller area
    huge = np.arange(10, 15)  # 9x larger area
    wide = np.arange(15, 25)  # panoramas: aspect 4.4 vs median 1.33; area only 1.5x
    sizes[small] = [120, 160]
    sizes[huge] = [1440, 1920]
    sizes[wide] = [300, 1320]
    ds = make(draw_shapes(n, rng, 8), orig_sizes=sizes)
    res = run_checks(ds, ["odd_size", "odd_aspect_ratio"])
    assert set(np.flatnonzero(res["odd_size"].flags)) == set(small) | set(huge)
    assert set(np.flatnonzero(res["odd_aspect_ratio"].flags)) == set(wide)
    # same-size datasets flag nothing
    assert run_checks(make(draw_shapes(20, rng, 8)), ["odd_size", "odd_aspect_ratio"])["odd_size"].n_flagged == 0


def test_unreadable_lists_refused_files_in_summary() -> None:
    refused = ({"path": "cats/broken.png", "reason": "truncated PNG"}, {"path": "x.jpg", "reason": "not an image"})
    ds = make(draw_shapes(5, np.random.default_rng(4), 8), unreadable=refused)
    r = run_checks(ds, ["unreadable"])["unreadable"]
    assert r.summary["n_flagged"] == 2 and r.flags.sum() == 0 and len(r.scores) == 5
    assert r.summary["items"] == [dict(u) for u in refused]


def test_every_check_is_registered_with_documented_defaults() -> None:
    expected = {"unreadable", "exact_duplicate", "near_duplicate", "dark", "light", "blurry", "noisy", "low_information",
                "odd_size", "odd_aspect_ratio", "grayscale", "outlier", "label_issue", "class_imbalance"}
    assert expected <= set(CHECKS.names())
    for name in expected:
        check = CHECKS.get(name)
        assert check.description and check.fn.__doc__
    assert CHECKS.get("label_issue").needs_labels and CHECKS.get("class_imbalance").needs_labels
    with pytest.raises(UserError, match="threshold"):
        run_checks(make(draw_shapes(3, np.random.default_rng(5), 8)), ["dark"], params={"dark": {"treshold": 1}})


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_every_check_runs_on_tiny_datasets(n: int) -> None:
    """A folder with a handful of images must audit, not crash; neighbour and label checks stay quiet."""
    rng = np.random.default_rng(n)
    imgs = rng.integers(0, 256, (n, 3, 12, 10)).astype(np.uint8)
    ds = Dataset(images=imgs, labels=np.arange(n) % 2, ids=tuple(f"t{i}" for i in range(n)), class_names=("a", "b"))
    names = ["unreadable", "exact_duplicate", "near_duplicate", "dark", "light", "blurry", "noisy", "low_information",
             "odd_size", "odd_aspect_ratio", "grayscale", "outlier", "label_issue", "class_imbalance"]
    res = run_checks(ds, names)
    assert set(res) == set(names) - ({"label_issue", "class_imbalance"} if n == 0 else set())  # n=0: unlabeled
    for r in res.values():
        assert len(r.scores) == n and r.flags.dtype == bool
    assert res["outlier"].n_flagged == 0 and (n == 0 or res["label_issue"].n_flagged == 0)
