"""reports.evaluation on digits with the classifier extractor: metrics move the right way for blurred,
collapsed and copied samples; keys that do not apply are null; the CLI writes the JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest

import datacheck
import sys

from reports.evaluation import Evaluator, RESULT_KEYS, evaluate
from reports.cli import main


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    import os

    old = os.environ.get("DATAMATTERS_CACHE")
    os.environ["DATAMATTERS_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # never the user's cache
    d = datacheck.load("digits")
    p = np.random.default_rng(0).permutation(len(d))
    yield d.subset(p[:600]), d.subset(p[600:1200]), d.subset(p[1200:])  # reference, train, fresh
    if old is None:
        os.environ.pop("DATAMATTERS_CACHE", None)
    else:
        os.environ["DATAMATTERS_CACHE"] = old


def _blur(x: np.ndarray) -> np.ndarray:
    f = x.astype(np.float32)
    g = (f + np.roll(f, 1, 2) + np.roll(f, -1, 2) + np.roll(f, 1, 3) + np.roll(f, -1, 3)) / 5
    return g.astype(np.uint8)


def test_metrics_move_the_right_way_on_digits(parts) -> None:
    real, train, fresh = parts
    ev = Evaluator(real=real, features="classifier")
    assert ev.identity["accuracy"] > 0.9
    good = ev.evaluate(fake=fresh, train=train)
    blurred = ev.evaluate(fake=_blur(fresh.images), train=train)
    one = ev.evaluate(fake=fresh.images[fresh.labels == 3], train=train)
    copied = ev.evaluate(fake=train.images, train=train)
    for r in (good, blurred, one, copied):
        assert set(RESULT_KEYS) <= set(r)
        json.dumps(r)  # JSON-ready
    assert good["n_real"] == 600 and good["n_fake"] == len(fresh)
    assert good["kid_subset_size"] == 298 and good["kid_std"] > 0  # half the smaller set: a real spread
    assert good["features"]["name"] == "classifier" and "accuracy" in good["features"]
    assert blurred["fid"] > 3 * good["fid"] and one["fid"] > 3 * good["fid"]
    assert blurred["kid_mean"] > good["kid_mean"] and one["kid_mean"] > good["kid_mean"]
    assert blurred["coverage"] < good["coverage"] - 0.2 and blurred["recall"] < good["recall"] - 0.2
    assert good["precision"] > 0.9 and good["coverage"] > 0.85
    assert good["modes_covered"] == 10 and one["modes_covered"] <= 2
    assert one["mode_kl"] > 1.5 > 0.05 > good["mode_kl"]
    assert one["recall"] < good["recall"] - 0.5
    assert copied["memorization"] > 0.9 and good["memorization"] < 0.1
    assert copied["ct_score"] < -3 < good["ct_score"]


def test_null_keys_and_evaluator_reuse(parts) -> None:
    real, _, fresh = parts
    unlabeled = real.images  # a bare array: no labels, so no mode keys
    r = evaluate(real=unlabeled, fake=fresh.images, features="pixels", n=300)
    assert r["n_real"] == 300 and r["n_fake"] == 300
    for key in ("modes_covered", "mode_kl", "memorization", "ct_score", "per_class_recall"):
        assert key in r and r[key] is None
    assert r["features"] == {"name": "pixels"} and r["fid"] > 0
    before = len(sys.modules["reports.evaluation"]._EVALUATORS)
    again = evaluate(real=unlabeled, fake=fresh.images, features="pixels", n=300)
    assert len(sys.modules["reports.evaluation"]._EVALUATORS) == before  # same reference: the evaluator was reused
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in r.items() if k != "seconds"}
    # an unlabeled reference defaults to the random-CNN features (the classifier needs labels)
    assert evaluate(real=unlabeled, fake=fresh.images, n=200)["features"]["name"] == "random"
    with pytest.raises(datacheck.UserError, match="shape"):
        evaluate(real=unlabeled, fake=np.zeros((10, 3, 8, 8), np.uint8), features="pixels")


def test_cli_evaluate_writes_json_with_null_keys(parts, tmp_path, capsys) -> None:
    real, train, fresh = parts
    real.save(tmp_path / "real.npz")
    fresh.save(tmp_path / "fake.npz")
    train.save(tmp_path / "train.npz")
    out = tmp_path / "res.json"
    rc = main(["evaluate", "--real", str(tmp_path / "real.npz"), "--fake", str(tmp_path / "fake.npz"),
               "--out", str(out), "--features", "random", "--n", "400"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["memorization"] is None and res["n_real"] == 400 and res["features"]["name"] == "random"
    assert res["modes_covered"] == 10  # labeled reference: mode coverage via the classifier
    rc = main(["evaluate", "--real", str(tmp_path / "real.npz"), "--fake", str(tmp_path / "fake.npz"),
               "--train", str(tmp_path / "train.npz"), "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert 0 <= res["memorization"] < 0.1 and res["features"]["name"] == "classifier"
    assert "wrote" in capsys.readouterr().out
    rc = main(["evaluate", "--real", "digits", "--fake", str(tmp_path / "fake.npz"), "--out", str(out),
               "--features", "inception"])
    err = capsys.readouterr().err
    assert rc == 2 and "--weights" in err and len(err.strip().splitlines()) == 1


def test_cli_evaluate_draws_samples_from_a_generative_run(parts, tmp_path) -> None:
    generative = pytest.importorskip("generative")
    real, train, _ = parts
    run = tmp_path / "run"
    generative.train(model="vae", data=train, out=run, steps=30, checkpoint_every=30, log_every=30)
    real.save(tmp_path / "real.npz")
    out = tmp_path / "res.json"
    assert main(["evaluate", "--real", str(tmp_path / "real.npz"), "--fake", str(run), "--out", str(out),
                 "--n", "200", "--features", "pixels"]) == 0
    res = json.loads(out.read_text())
    assert res["n_fake"] == 200 and res["fid"] > 0 and res["sources"]["fake"] == str(run)


def test_feature_space_copy_tests_leave_out_the_extractors_training_images() -> None:
    """The classifier extractor trains on 80% of the reference; the memorization share and C_T compare
    with the 20% it never saw. A separate real sample scored as 'fake' then looks like held-out data:
    C_T near 0 (a z-like score) and a per-sample copy rate near the held-out rate."""
    import datacheck
    from reports.evaluation import Evaluator

    d = datacheck.load("digits")
    perm = np.random.default_rng(0).permutation(len(d))
    ref, train, other = d.subset(perm[:540]), d.subset(perm[540:1340]), d.subset(perm[1340:])
    ev = Evaluator(real=ref, features="classifier", n=500)
    held_ids = {ref.ids[i] for i in ev.extractor.heldout_index}
    assert ev.heldout_mask.sum() == sum(i in held_ids for i in ev.real.ids) > 50
    assert not (set(np.asarray(ev.real.ids)[ev.heldout_mask]) - held_ids)  # none of its training images
    res = ev.evaluate(fake=other, train=train)
    assert res["n_heldout"] == ev.heldout_mask.sum()
    assert abs(res["ct_score"]) < 2.5
    assert abs(res["copy_rate"] - res["copy_rate_heldout"]) <= 0.02 and res["copy_p"] > 0.05
    copied = ev.evaluate(fake=train.subset(np.arange(300)), train=train)
    assert copied["ct_score"] < -5 and copied["copy_rate"] == 1.0 and copied["copy_p"] < 1e-6


def test_membership_auc_tells_leaked_training_images_from_held_out_ones() -> None:
    """GAN-Leaks' black-box score: a separate real sample scored as 'fake' gives the training set away no
    more than chance (its interval holds 0.5); samples that are noisy replays of a fifth of the training
    images put members nearer their nearest sample than non-members (interval above 0.5); no --train, no
    score."""
    d = datacheck.load("digits")
    perm = np.random.default_rng(1).permutation(len(d))
    ref, train, other = d.subset(perm[:500]), d.subset(perm[500:1000]), d.subset(perm[1000:1500])
    ev = Evaluator(real=ref, features="pixels", n=500)
    honest = ev.evaluate(fake=other, train=train)
    assert honest["mia_n_members"] == honest["mia_n_nonmembers"] == 500
    assert honest["mia_auc_low"] < 0.5 < honest["mia_auc_high"], honest["mia_auc"]
    assert honest["mia_auc_low"] <= honest["mia_auc"] <= honest["mia_auc_high"]
    rng = np.random.default_rng(2)
    leaked = train.images[:100].astype(np.float32) + rng.normal(0, 12, (100, *train.shape))
    fake = np.concatenate([np.clip(leaked, 0, 255).astype(np.uint8), other.images[:400]])
    leaky = ev.evaluate(fake=fake, train=train)
    assert leaky["mia_auc_low"] > 0.5 and leaky["mia_auc"] > honest["mia_auc"]
    # every number is the generator's: the same call scored twice agrees
    assert ev.evaluate(fake=fake, train=train)["mia_auc"] == leaky["mia_auc"]
    no_train = ev.evaluate(fake=other)
    assert no_train["mia_auc"] is None and no_train["mia_auc_low"] is None and no_train["mia_auc_high"] is None
