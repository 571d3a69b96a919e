"""Feature extractors: the classifier trains on digits to a real accuracy and is cached; inception only
loads a user-given weights file and never downloads; pixels and random keep working."""
from __future__ import annotations

import numpy as np
import pytest

import datacheck
from datacheck import features as F
from datacheck.errors import UserError


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAMATTERS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


@pytest.fixture(scope="module")
def digits() -> datacheck.Dataset:
    return datacheck.load("digits")


def test_pixels_and_random_extractors(digits: datacheck.Dataset) -> None:
    px = F.get_extractor("pixels")(digits.images[:7])
    assert px.shape == (7, 64) and px.dtype == np.float32 and px.max() <= 1.0
    rnd = F.get_extractor("random", seed=1)
    a, b = rnd(digits.images[:7]), F.get_extractor("random", seed=1)(digits.images[:7])
    assert a.shape == (7, rnd.dim) and np.array_equal(a, b)
    assert rnd.identity["weights"] != F.get_extractor("random", seed=2).identity["weights"]


def test_classifier_trains_to_high_accuracy_and_is_cached(digits: datacheck.Dataset, cache) -> None:
    F._CLASSIFIER_MEMORY.clear()
    ext = F.get_extractor("classifier", reference=digits)
    ident = ext.identity
    assert ident["name"] == "classifier" and ident["accuracy"] >= 0.97  # stratified 20% held out, seeded
    assert ident["n_heldout"] == pytest.approx(0.2 * len(digits), abs=10)
    feats = ext(digits.images[:50])
    assert feats.shape == (50, ext.dim) and feats.dtype == np.float32
    probs = ext.predict_proba(digits.images[:200])
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == digits.labels[:200]).mean() > 0.95
    files = list(cache.glob("*.pt"))
    assert len(files) == 1
    # a fresh process would read the disk cache: same weights, no retraining
    F._CLASSIFIER_MEMORY.clear()
    again = F.get_extractor("classifier", reference=digits)
    assert again.identity == ident
    np.testing.assert_array_equal(again(digits.images[:50]), feats)
    # other settings or other data give another cache entry
    F.get_extractor("classifier", reference=digits.subset(np.arange(600)), epochs=3)
    assert len(list(cache.glob("*.pt"))) == 2


def test_classifier_needs_a_labeled_reference(digits: datacheck.Dataset) -> None:
    with pytest.raises(UserError, match="reference"):
        F.get_extractor("classifier")
    unlabeled = digits.replace(labels=np.full(len(digits), -1, np.int64), class_names=())
    with pytest.raises(UserError, match="2 labeled classes"):
        F.get_extractor("classifier", reference=unlabeled)


def test_inception_without_weights_names_the_option(tmp_path) -> None:
    with pytest.raises(UserError, match="weights=PATH"):
        F.get_extractor("inception")
    with pytest.raises(UserError, match="does not exist"):
        F.get_extractor("inception", weights=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable"):
        F.get_extractor("inception", weights=bad)


def test_inception_loads_a_state_dict_in_the_fid_format(tmp_path, digits: datacheck.Dataset) -> None:
    torch = pytest.importorskip("torch")
    net = F._fid_inception_net()
    # the pytorch-fid / torch-fidelity file has no BatchNorm counters; mimic that
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert "Mixed_7c.branch3x3dbl_3b.conv.weight" in state and state["fc.weight"].shape == (1008, 2048)
    path = tmp_path / "pt_inception-test.pth"
    torch.save(state, path)
    ext = F.get_extractor("inception", weights=path)
    out = ext(digits.images[:2])
    assert out.shape == (2, 2048) and np.isfinite(out).all()
    assert ext.identity["weights"] and ext.identity["name"] == "inception"
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(UserError, match="not the FID Inception"):
        F.get_extractor("inception", weights=wrong)
