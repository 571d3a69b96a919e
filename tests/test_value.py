"""``reports value`` (issue 22): a tiny run end to end through the CLI, its pieces on synthetic numbers,
the bad-input one-liners, the report in Chromium, and a small study with the ``valued`` factor.

Training here is a few steps (the numbers say nothing about digits); benchmarks/bench_value.py measures."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _browser import open_report
from reports.cli import main

HOSTILE = "<img src=x onerror=alert(1)>"
TINY = ["--members", "2", "--steps", "2", "--seeds", "2", "--group-seeds", "1", "--fractions", "0.1",
        "--groups", "cluster,finding", "--clusters", "2", "--n-samples", "60"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    import datacheck

    # 300 unlabeled digits: an unconditional model, the random-CNN features (no classifier to train), a cheap split
    root = tmp_path_factory.mktemp("value")
    np.savez(root / "train.npz", images=datacheck.load("digits").images[:300, 0])
    out = root / "v"
    assert main(["value", "--data", str(root / "train.npz"), "--model", "vae", "--out", str(out), *TINY]) == 0
    return out


def test_tiny_run_writes_every_file_with_one_row_per_item(run) -> None:
    items = pd.read_csv(run / "items.csv")
    doc = json.loads((run / "value.json").read_text())
    assert len(items) == doc["n_items"] and items["id"].is_unique
    assert sorted(items["rank"]) == list(range(1, len(items) + 1))
    # rank 1 is the lowest score; each value is the recorded FID points per unit of score times the item's
    # centred score (from the retraining's calibration when it was used, else the population's)
    assert items.loc[items["rank"] == 1, "score"].item() == pytest.approx(items["score"].min())
    vc = doc["value_calibration"]
    c = vc["per_item"] if vc["source"] == "retraining" else doc["calibration"]["per_item"]
    assert c >= 0 and items["value"].to_numpy() == pytest.approx(c * (items["score"] - items["score"].mean()),
                                                                  abs=1e-9)
    assert {"fit", "margin", "n_oob", "audit_score", "cluster"} <= set(items.columns)
    assert items["margin"].isna().all()  # an unconditional model has no label margin
    assert (items["n_oob"] == 1).all()  # two complementary members: each item out of exactly one
    groups = pd.read_csv(run / "groups.csv")
    assert set(groups["kind"]) >= {"cluster"} and (groups["n"] >= 2).all()
    clusters = groups[groups["kind"] == "cluster"]
    assert clusters["n"].sum() == len(items)
    assert {"coverage_full", "coverage_without", "recall_change", "fid_change"} <= set(clusters.columns)
    ver = pd.read_csv(run / "verification.csv")
    assert set(ver["comparison"]) == {"top vs random", "top vs audit", "top vs full"}
    assert ver["primary"].all() and (ver["n_pairs"] == 2).all() and not ver["significant"].any()
    arms = pd.read_csv(run / "arms.csv")
    assert len(arms) == 2 * (1 + 3) + 1 * 2 and arms["fid"].gt(0).all()
    top = arms[(arms["kind"] == "top")]
    assert (top["n_removed"] == round(0.1 * len(items))).all()
    assert any("smallest possible p" in n for n in doc["notes"])  # 2 seeds cannot reach Holm's alpha
    assert doc["config"]["members"] == 2 and "FID points" in doc["value_meaning"]
    assert doc["value_calibration"]["source"] == "population"  # 2 seeds cannot show top beating random
    html = (run / "report.html").read_text()
    assert "<script" not in html and html.count("data:image/png;base64,") == 2 * 24


@pytest.mark.parametrize("argv, msg", [
    (["--groups", "class,colour"], "groups must be some of class, cluster, finding, folder"),
    (["--members", "3"], "members must be an even number"),
    (["--seeds", "2", "--group-seeds", "3"], "group_seeds (3) must be at most seeds (2)"),
    (["--fractions", "0.7"], "fractions must be numbers in (0, 0.5)"),
    (["--budget", "huge"], "budget must be one of quick, standard"),
    (["--model", "nope"], "nope"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, msg) -> None:
    assert main(["value", "--data", "digits", "--out", str(tmp_path / "v"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err


def test_unlabeled_by_class_and_too_small_for_clusters_are_one_line_errors(tmp_path, capsys) -> None:
    import datacheck

    npz = tmp_path / "unlabeled.npz"
    np.savez(npz, images=datacheck.load("digits").images[:120, 0])
    base = ["value", "--data", str(npz), "--out", str(tmp_path / "v"), "--members", "2", "--steps", "1"]
    assert main([*base, "--model", "cvae"]) == 2
    assert "needs labels" in capsys.readouterr().err
    assert main([*base, "--model", "vae", "--groups", "class"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--groups class needs labels" in err
    assert main([*base, "--model", "vae", "--groups", "cluster", "--clusters", "40"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "too few for 40 clusters" in err


def test_halves_are_complementary_and_scores_find_a_flipped_and_a_misfit_item() -> None:
    from reports.value_estimate import calibrate, halves, item_scores

    inc = halves(101, 6, seed=0)
    assert (inc.sum(0) == 3).all() and (inc[0] ^ inc[1]).all()
    rng = np.random.default_rng(0)
    labels = np.arange(101) % 3
    fits = []
    for _ in range(6):
        f = rng.normal(0, 0.1, (101, 3))
        f[np.arange(101), labels] += 2.0  # every item fits its own label best ...
        f[7, labels[7]] -= 2.0
        f[7, (labels[7] + 1) % 3] += 2.0  # ... but item 7 fits another label (a flipped label)
        f[11] -= 5.0  # item 11 fits nothing (a corrupted image)
        fits.append(f)
    sc = item_scores(fits, inc, labels, conditional=True)
    worst = set(np.argsort(sc["score"])[:2].tolist())
    assert worst == {7, 11}
    # a population whose FID rises as its items' mean score falls calibrates to a positive value per score
    score = sc["score"]
    fid = np.array([50 - 40 * score[m].mean() for m in inc]) + rng.normal(0, 0.01, 6)
    cal = calibrate(fid, inc, score)
    assert cal["slope"] == pytest.approx(-40, rel=0.05) and cal["supported"] and cal["per_item"] > 0


def test_compare_tests_top_against_each_arm_with_holm_at_the_largest_fraction() -> None:
    from reports.value_verify import compare, curves, group_coverage

    rows = []
    for s in range(8):
        rows.append({"kind": "full", "fraction": math.nan, "group": "", "seed": s, "fid": 20.0 + s})
        for k in (0.05, 0.1):
            rows += [{"kind": "top", "fraction": k, "group": "", "seed": s, "fid": 15.0 + s + 0.01 * (s % 3)},
                     {"kind": "random", "fraction": k, "group": "", "seed": s, "fid": 20.5 + s},
                     {"kind": "audit", "fraction": k, "group": "", "seed": s, "fid": 15.0 + s + 0.3 * (-1) ** s}]
    out = {(r["fraction"], r["comparison"]): r for r in compare(rows, (0.05, 0.1))}
    assert len(out) == 6
    assert out[(0.1, "top vs random")]["significant"] and out[(0.1, "top vs random")]["direction"] == "better"
    assert out[(0.1, "top vs full")]["significant"]
    assert not out[(0.1, "top vs audit")]["significant"]  # the signs flip from seed to seed
    assert not out[(0.05, "top vs random")]["primary"] and math.isnan(out[(0.05, "top vs random")]["p_holm"])
    # Holm over exactly three: top vs random and top vs full share the smallest p (every seed one way, 2/2^8),
    # so both are adjusted to 3p
    for comp in ("top vs random", "top vs full"):
        assert out[(0.1, comp)]["p_value"] == pytest.approx(2 / 2**8)
        assert out[(0.1, comp)]["p_holm"] == pytest.approx(3 * out[(0.1, comp)]["p_value"])
    # the retraining's calibration: FID points per item per unit score, from top vs random at 0.1, with the
    # random sets the random arms actually removed (paired by seed)
    from reports.value_verify import removal_arms, verified_calibration

    score = np.linspace(-2.0, 2.0, 200)
    ranking = np.argsort(score)
    cal = verified_calibration(rows, ranking, score, 0.1, draw_seed=0)
    arms = {a.seed: a for a in removal_arms(200, ranking, np.arange(0), (0.1,), range(8), draw_seed=0)
            if a.kind == "random"}
    want = []
    for s in range(8):
        gone = np.setdiff1d(np.arange(200), arms[s].keep)
        assert len(gone) == 20
        dfid = (20.5 + s) - (15.0 + s + 0.01 * (s % 3))  # FID(random) - FID(top) in the rows above
        want.append(dfid / (20 * (score[gone].mean() - score[ranking[:20]].mean())))
    assert cal["seeds"] == 8 and cal["per_item"] == pytest.approx(np.mean(want))
    assert cal["low"] < cal["per_item"] < cal["high"]
    cv = curves(rows, (0.05, 0.1))
    assert [x for x, _ in cv["top"]] == [0.0, 0.05, 0.1] and len(cv["random"][0][1]) == 8
    a = np.random.default_rng(0).normal(size=(30, 4))
    real = np.concatenate([a, a + 100.0])  # two far-apart groups of real images
    groups = {"a": np.arange(60) < 30, "b": np.arange(60) >= 30}
    cov = group_coverage(real, a + 1e-3, groups)  # samples only near group a
    assert cov["a"]["coverage"] == 1.0 and cov["b"]["coverage"] < 0.5 and cov["b"]["recall"] < 0.5


def test_report_renders_offline_in_chromium_and_escapes(tmp_path) -> None:
    import datacheck
    from reports.value_html import render_value

    ds = datacheck.load("digits").subset(np.arange(60))
    ds = ds.replace(ids=tuple(f"{HOSTILE}{i}" for i in range(60)))
    items = pd.DataFrame({"id": list(ds.ids), "label": [HOSTILE] * 60, "value": np.linspace(-1, 1, 60),
                          "rank": np.arange(1, 61), "score": np.linspace(-3, 3, 60), "audit_checks": [HOSTILE] * 60})
    vals = [10.0, 11.0, 12.0]
    result = {"config": {"data": HOSTILE, "model": "cvae", "members": 2, "seeds": 3, "steps": 2, "group_seeds": 1,
                         "group_keep": 0.0},
              "items": items, "n_items": 60, "n_reference": 30, "features": {"name": HOSTILE},
              "seconds": {"total": 1.0}, "headline": HOSTILE, "value_meaning": "FID points", "notes": [HOSTILE],
              "curves": {"top": [(0.0, vals), (0.1, vals)], "random": [(0.0, vals), (0.1, [12.0, 13, 14])],
                         "audit": [(0.0, vals), (0.1, [11.0, 12, 13])]},
              "tests": [{"fraction": 0.1, "comparison": "top vs random", "top_mean": 11.0, "other_mean": 13.0,
                         "effect": -2.0, "ci_low": -math.inf, "ci_high": math.inf, "p_value": 0.25, "p_holm": 0.75,
                         "n_pairs": 3, "primary": True, "significant": False, "direction": "none"}],
              "groups": [{"group": HOSTILE, "kind": "cluster", "n": 5, "value": 0.1, "value_low": 0.0,
                          "value_high": 0.2, "fid_change": 1.0, "fid_change_low": math.nan,
                          "fid_change_high": math.nan, "coverage_full": 0.5, "coverage_without": 0.2,
                          "recall_full": 0.6, "recall_without": 0.3}]}
    page = render_value(result, ds)
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page and "<script" not in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    path = tmp_path / "report.html"
    path.write_text(page)
    with open_report(path) as seen:
        pg = seen.page
        text = pg.inner_text("body")
        n_thumbs = pg.locator("#harmful img").count() + pg.locator("#helpful img").count()
        imgs_ok = pg.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        n_svg = pg.locator("svg").count()
    errors, dialogs, requests = seen.errors, seen.dialogs, seen.requests
    assert errors == [] and dialogs == [] and imgs_ok and n_svg == 1 and n_thumbs == 48
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert HOSTILE in text and "top vs random" in text and "unbounded" in text


def test_a_small_study_runs_the_valued_factor(tmp_path) -> None:
    from reports.factors import apply_factor, get_factor

    assert get_factor("valued").reference == "baseline" and get_factor("valued").expect == "gain"
    from reports.runner import run_study
    from reports.study import StudyConfig

    out = tmp_path / "s"
    import datacheck

    small = tmp_path / "small.npz"  # 150 digits: the study's evaluation stays cheap
    d = datacheck.load("digits")
    np.savez(small, images=d.images[:150, 0], labels=d.labels[:150])
    cfg = StudyConfig(data=str(small), factors=("valued",), levels={"valued": (0.1,)}, models=("cvae",), seeds=(0,),
                      steps=2, n_samples=60, features="pixels", factor_options={"valued": {"members": 2, "steps": 2}})
    run_study(cfg, out, fuse="off")  # the default executor runs in this process
    df = pd.read_csv(out / "results.csv").set_index("arm_id")
    base, arm = df.loc["baseline-cvae-s0"], df.loc["valued-0.1-cvae-s0"]
    assert arm.n_train == base.n_train - round(0.1 * base.n_train)
    man = json.loads((out / "arms" / "valued-0.1-cvae-s0" / "manifest.json").read_text())
    assert len(man["removed_ids"]) == round(0.1 * base.n_train) and man["estimate_model"] == "cvae"

    ds = datacheck.load("digits").subset(np.arange(200))
    a, ma = apply_factor("valued", ds, 0.1, seed=3, members=2, steps=2)
    _, mb = apply_factor("valued", ds, 0.1, seed=3, members=2, steps=2)
    assert ma["removed_ids"] == mb["removed_ids"] and len(a) == 180
