"""Data factors: deterministic with a seed, and they do exactly what they say."""
from __future__ import annotations

import re

import numpy as np
import pytest

import datacheck
from datacheck.errors import UserError
from reports.factors import FACTORS, apply_factor, get_factor, long_tail_counts, stratified_take


@pytest.fixture(scope="module")
def digits() -> datacheck.Dataset:
    return datacheck.load("digits")


LEVELS = {"size": 0.3, "duplicates": 0.2, "label_noise": 0.25, "corruption": 0.2, "imbalance": 8.0, "dirty": 0.3}


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_same_seed_same_result_other_seed_differs(digits, name) -> None:
    a, ma = apply_factor(name, digits, LEVELS[name], seed=3)
    b, mb = apply_factor(name, digits, LEVELS[name], seed=3)
    c, _ = apply_factor(name, digits, LEVELS[name], seed=4)
    assert a.fingerprint == b.fingerprint and a.ids == b.ids and ma == mb
    assert c.fingerprint != a.fingerprint
    assert len(set(a.ids)) == len(a), "ids must stay unique"
    assert digits.fingerprint == datacheck.load("digits").fingerprint, "the input must not change"


@pytest.mark.parametrize("name", sorted(FACTORS.names()))
def test_baseline_level_is_the_identity(digits, name) -> None:
    out, man = apply_factor(name, digits, get_factor(name).baseline, seed=0)
    assert out is digits and man["changed"] == 0


def test_size_keeps_the_exact_fraction_stratified(digits) -> None:
    out, man = apply_factor("size", digits, 0.25, seed=0)
    assert len(out) == round(0.25 * len(digits)) == man["n_after"]
    full = np.bincount(digits.labels, minlength=10) / len(digits)
    kept = np.bincount(out.labels, minlength=10) / len(out)
    assert np.abs(full - kept).max() < 0.01  # class shares kept to within rounding
    assert set(out.ids) | set(man["removed_ids"]) == set(digits.ids)
    assert not set(out.ids) & set(man["removed_ids"])
    count, _ = apply_factor("size", digits, 100, seed=0)
    assert len(count) == 100 and len(np.unique(count.labels)) == 10
    with pytest.raises(UserError):
        apply_factor("size", digits, 5000, seed=0)


def test_stratified_take_meets_the_count_exactly() -> None:
    labels = np.array([0] * 7 + [1] * 3 + [2] * 1)
    for k in range(12):
        idx = stratified_take(labels, k, np.random.default_rng(0))
        assert len(idx) == k and len(set(idx)) == k


def test_duplicates_replace_the_fraction_with_copies_of_a_few_items(digits) -> None:
    out, man = apply_factor("duplicates", digits, 0.2, seed=1, per_source=20)
    k = round(0.2 * len(digits))
    assert len(out) == len(digits) and man["changed"] == k == len(man["copies"])
    assert len(man["sources"]) == int(np.ceil(k / 20))
    by_id = dict(zip(digits.ids, range(len(digits))))
    kinds = {c["kind"] for c in man["copies"]}
    assert "exact" in kinds and kinds - {"exact"}, "both exact and near copies"
    for c in man["copies"]:
        src = digits.images[by_id[c["source_id"]]].astype(int)
        new = out.images[c["index"]].astype(int)
        assert out.labels[c["index"]] == digits.labels[by_id[c["source_id"]]]
        if c["kind"] == "exact":
            assert np.array_equal(src, new)
        elif c["kind"] == "shift":  # the source moved by one pixel, the uncovered edge zero
            assert any(np.array_equal(_shift(src, dy, dx), new) for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)))
        else:  # noise / brightness: close to the source
            assert 0 < np.abs(src - new).mean() < 40
    untouched = np.setdiff1d(np.arange(len(digits)), [c["index"] for c in man["copies"]])
    assert np.array_equal(out.images[untouched], digits.images[untouched])


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    h, w = img.shape[1:]
    out = np.zeros_like(img)
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = img[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_label_noise_flips_exactly_the_fraction(digits) -> None:
    out, man = apply_factor("label_noise", digits, 0.3, seed=0)
    changed = np.flatnonzero(out.labels != digits.labels)
    assert len(changed) == round(0.3 * len(digits)) == man["changed"]
    assert sorted(f["index"] for f in man["flips"]) == changed.tolist()
    for f in man["flips"]:
        assert digits.labels[f["index"]] == f["old"] and out.labels[f["index"]] == f["new"] != f["old"]
    assert np.array_equal(out.images, digits.images)
    # symmetric: flipped labels spread over the other classes
    assert len(set(out.labels[changed])) == 10
    pair, pm = apply_factor("label_noise", digits, 0.3, seed=0, mode="pair")
    for f in pm["flips"]:
        assert f["new"] == (f["old"] + 1) % 10


def test_corruption_changes_exactly_the_fraction_with_every_kind(digits) -> None:
    out, man = apply_factor("corruption", digits, 0.2, seed=0)
    k = round(0.2 * len(digits))
    idx = [c["index"] for c in man["corrupted"]]
    assert len(idx) == k == man["changed"] and set(man["kinds"]) == {"noise", "blur", "blank", "pure_noise"}
    assert max(man["kinds"].values()) - min(man["kinds"].values()) <= 1  # equal shares
    rest = np.setdiff1d(np.arange(len(digits)), idx)
    assert np.array_equal(out.images[rest], digits.images[rest])
    assert np.array_equal(out.labels, digits.labels)
    for c in man["corrupted"]:
        img = out.images[c["index"]]
        if c["kind"] == "blank":
            assert img.min() == img.max()
        else:
            assert not np.array_equal(img, digits.images[c["index"]])


@pytest.mark.parametrize("ratio", [4.0, 10.0])
def test_imbalance_achieves_the_ratio_with_an_exponential_tail(digits, ratio) -> None:
    out, man = apply_factor("imbalance", digits, ratio, seed=2)
    counts = np.sort(np.bincount(out.labels, minlength=10))[::-1]
    assert counts.min() >= 1
    assert abs(counts.max() / counts.min() - ratio) / ratio < 0.1
    assert man["ratio_achieved"] == pytest.approx(counts.max() / counts.min())
    expect = np.sort(long_tail_counts(counts.max(), 10, ratio))[::-1]
    assert np.array_equal(counts, expect)
    # roughly exponential: successive ratios near ratio^(1/9)
    step = counts[:-1] / counts[1:]
    assert np.allclose(step, ratio ** (1 / 9), rtol=0.35)
    with pytest.raises(UserError):
        apply_factor("imbalance", digits, 0.5, seed=0)


def test_bad_levels_and_names_are_user_errors(digits) -> None:
    for name, lv in [("corruption", 1.5), ("duplicates", -0.1), ("label_noise", 2.0)]:
        with pytest.raises(UserError):
            apply_factor(name, digits, lv, seed=0)
    with pytest.raises(UserError, match="expected one of"):
        apply_factor("nope", digits, 0.1)
    unlabeled = digits.replace(labels=np.full(len(digits), -1))
    with pytest.raises(UserError, match="labeled"):
        apply_factor("label_noise", unlabeled.replace(class_names=()), 0.1)


def test_cleaned_plants_the_dirty_set_and_removes_most_of_it(digits) -> None:
    small = apply_factor("size", digits, 600, seed=0)[0]
    dirty, dm = apply_factor("dirty", small, 0.3, seed=5)
    cleaned, cm = apply_factor("cleaned", small, 0.3, seed=5)
    # the same seed plants the very same items in both arms
    assert dm["corrupted"] == cm["corrupted"] and dm["copies"] == cm["copies"]
    assert cm["corrupted_planted"] + cm["copies_planted"] == round(0.3 * len(small))
    assert len(cleaned) == len(small) - cm["removed"]
    assert set(cleaned.ids) <= set(dirty.ids)
    assert set(cleaned.ids) == set(dirty.ids) - set(cm["removed_ids"])
    # every removal is accounted for: a planted corruption, a planted copy, or a clean item lost
    assert cm["removed"] == cm["corrupted_removed"] + cm["copies_removed"] + cm["clean_lost"]
    # what the audit can see goes: blanked and blurred images, and the copies (one per group stays)
    assert cm["recall_by_kind"]["blank"] >= 0.9 and cm["recall_by_kind"]["blur"] >= 0.9, cm["recall_by_kind"]
    assert cm["recall_copies"] >= 0.8, cm["recall_copies"]
    assert cm["recall"] >= 0.6, cm["recall"]  # (noisy images mostly escape the audit at this rate)
    assert cm["clean_lost_fraction"] <= 0.05, cm["clean_lost_fraction"]  # at little cost in clean items


@pytest.mark.parametrize("name,good,bad,want", [
    ("size", [0.05, 1.0, 300], [0, -1, 2.5], "a fraction in (0, 1] or a whole count"),
    ("imbalance", [1, 10, 2.5], [0.5, float("inf")], "a largest/smallest ratio >= 1"),
    ("label_noise", [0, 0.5, 1], [-0.1, 1.5], "a fraction in [0, 1]"),
    ("corruption", [0, 0.4], [2], "a fraction in [0, 1]"),
])
def test_each_factor_checks_its_own_levels(name: str, good: list, bad: list, want: str) -> None:
    factor = get_factor(name)
    for level in good:
        factor.check_level(level)
    for level in bad:
        with pytest.raises(UserError, match=re.escape(f"factor {name!r} is invalid; expected {want}")):
            factor.check_level(level)
