"""Label issues (confident learning), class imbalance and outliers: planted issues, recall AND precision."""
from __future__ import annotations

import numpy as np
import pytest

import datacheck
from datacheck import Dataset
from datacheck.checks import CheckContext, run_checks
from datacheck.checks.labels import confident_learning


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return datacheck.load("digits")


def flip_labels(ds: Dataset, rate: float, seed: int) -> tuple[Dataset, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ds), int(rate * len(ds)), replace=False)
    labels = ds.labels.copy()
    labels[idx] = (labels[idx] + rng.integers(1, ds.n_classes, len(idx))) % ds.n_classes
    return ds.replace(labels=labels), idx


@pytest.mark.parametrize("seed", [0, 1])
def test_label_issue_finds_planted_flips(digits: Dataset, seed: int) -> None:
    noisy, flipped = flip_labels(digits, 0.05, seed)
    r = run_checks(noisy, ["label_issue"], ctx=CheckContext(noisy, seed=seed))["label_issue"]
    found = np.flatnonzero(r.flags)
    tp = np.intersect1d(found, flipped)
    recall, precision = len(tp) / len(flipped), len(tp) / max(len(found), 1)
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)
    # the suggested label is the true one for nearly every true positive
    right = [r.details[i] == f"suggested label: {digits.class_names[digits.labels[i]]}" for i in tp]
    assert np.mean(right) >= 0.95
    assert 0.03 <= r.summary["estimated_noise_rate"] <= 0.08
    assert r.scores[found].mean() < r.scores[np.setdiff1d(np.arange(len(noisy)), found)].mean()
    assert r.summary["features"] == "pixels"


def test_label_issue_is_quiet_on_clean_labels_and_skipped_without_labels(digits: Dataset) -> None:
    r = run_checks(digits, ["label_issue"])["label_issue"]
    assert r.n_flagged <= 0.01 * len(digits)
    unlabeled = digits.replace(labels=np.full(len(digits), -1))
    assert "label_issue" not in run_checks(unlabeled, ["label_issue", "class_imbalance"])


def test_confident_learning_on_known_probabilities() -> None:
    # 3 classes; item 3 is labeled 0 but the model is confident it is class 2
    probs = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.85, 0.1, 0.05], [0.05, 0.05, 0.9],
                      [0.1, 0.8, 0.1], [0.05, 0.9, 0.05], [0.1, 0.1, 0.8], [0.05, 0.05, 0.9]])
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    cl = confident_learning(probs, y)
    assert np.flatnonzero(cl["flags"]).tolist() == [3] and cl["suggested"][3] == 2
    assert abs(cl["noise_rate"] - 1 / 8) < 1e-9
    assert np.allclose(cl["thresholds"], [(0.9 + 0.8 + 0.85 + 0.05) / 4, 0.85, 0.85])


def test_class_imbalance_flags_members_of_small_classes(digits: Dataset) -> None:
    rng = np.random.default_rng(0)
    keep = np.ones(len(digits), bool)
    threes = np.flatnonzero(digits.labels == 3)
    keep[rng.choice(threes, len(threes) - 15, replace=False)] = False  # class 3: 15 of ~165 expected
    ds = digits.subset(keep)
    r = run_checks(ds, ["class_imbalance"])["class_imbalance"]
    assert np.array_equal(r.flags, ds.labels == 3)
    assert r.summary["small_classes"] == ["3"] and r.summary["classes"]["3"]["count"] == 15
    assert np.all(r.scores[r.flags] < 0.5) and np.all(r.scores[~r.flags] >= 0.5)
    assert run_checks(digits, ["class_imbalance"])["class_imbalance"].n_flagged == 0
    # the ratio is a parameter: at 0.05 of the fair share, 15 items are no longer "far below"
    assert run_checks(ds, ["class_imbalance"], params={"class_imbalance": {"ratio": 0.05}})["class_imbalance"].n_flagged == 0


def planted_outliers(rng: np.random.Generator, digits: Dataset, n: int = 24) -> np.ndarray:
    """Distinct images that are not digits: noise, inverted digits and gratings of random
    frequency, orientation and phase."""
    yy, xx = np.mgrid[0:8, 0:8]
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            im = rng.integers(0, 256, (8, 8))
        elif kind == 1:
            im = 255 - digits.images[rng.integers(len(digits)), 0].astype(int)
        else:
            f, th = rng.uniform(0.5, 2), rng.uniform(0, np.pi)
            im = 127 + 127 * np.sin(2 * np.pi * f * (np.cos(th) * xx + np.sin(th) * yy) / 8 + rng.uniform(0, 6))
        out.append(np.asarray(im, np.uint8)[None])
    return np.stack(out)


@pytest.mark.parametrize("features", ["auto", "random"])
def test_outlier_finds_non_digits(digits: Dataset, features: str) -> None:
    rng = np.random.default_rng(0)
    odd = planted_outliers(rng, digits)
    ds = Dataset(images=np.concatenate([digits.images, odd]), labels=np.concatenate([digits.labels, np.zeros(len(odd), np.int64)]),
                 ids=digits.ids + tuple(f"odd{i}" for i in range(len(odd))), class_names=digits.class_names)
    r = run_checks(ds, ["outlier"], params={"outlier": {"features": features}})["outlier"]
    assert r.summary["features"] == ("pixels" if features == "auto" else "random")
    found = np.flatnonzero(r.flags)
    tp = (found >= len(digits)).sum()
    assert tp / len(odd) >= 0.9 and tp / max(len(found), 1) >= 0.9, (tp, len(found))
    assert np.all(r.scores[r.flags] < 0.5)
    assert run_checks(digits, ["outlier"])["outlier"].n_flagged <= 0.005 * len(digits)


def test_label_issue_refuses_to_judge_with_a_weak_classifier(digits: Dataset) -> None:
    """Labels unrelated to the images (item index mod 3): no classifier beats the majority class, and
    flagging its 'disagreements' would flag most labels. The check flags nothing and says why."""
    small = digits.subset(range(300))
    shuffled = small.replace(labels=np.arange(300) % 3)
    r = run_checks(shuffled, ["label_issue"])["label_issue"]
    assert r.n_flagged == 0 and r.summary["skill"] < 0.5 and "too weak" in r.summary["note"]
    ok = run_checks(small, ["label_issue"])["label_issue"]
    assert ok.summary["skill"] > 0.9 and ok.summary["estimated_noise_rate"] is not None
