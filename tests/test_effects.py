"""reports.effects: effects.csv under the study's analysis plan (primary tests first, then descriptive
paired effects), the report's answer card and table, model tweaks and copying in the verdict."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from reports.effects import COLUMNS, holm, paired_effects, sign_flip_p
from test_study_browser import assert_one_story  # tests/ is on sys.path (rootdir-relative test modules)


def test_sign_flip_test_is_exact() -> None:
    d = np.array([3.0, 1.0, 2.0, -0.5, 4.0])
    brute = np.mean([abs(np.dot(s, d)) / 5 >= abs(d.mean()) - 1e-12
                     for s in itertools.product((1, -1), repeat=5)])
    assert sign_flip_p(d) == pytest.approx(brute)
    assert sign_flip_p([5.0, 7.0]) == 0.5  # two pairs can never be significant
    assert sign_flip_p(np.ones(10)) == pytest.approx(2 / 1024)
    assert 0 < sign_flip_p(np.arange(1, 21.0)) < 0.001  # Monte Carlo beyond 16 pairs, seeded
    assert sign_flip_p(np.arange(1, 21.0)) == sign_flip_p(np.arange(1, 21.0))


def test_holm() -> None:
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.2]), [0.04, 0.09, 0.09, 0.2])
    assert np.isnan(holm([0.01, np.nan])[1]) and holm([0.01, np.nan])[0] == pytest.approx(0.01)


def test_paired_effects_orient_by_metric_and_pair_by_seed() -> None:
    rows = []
    for seed in range(6):
        noise = 0.1 * seed
        rows.append({"arm_id": f"b{seed}", "factor": "baseline", "level": np.nan, "model": "m", "seed": seed,
                     "fid": 50 + noise, "recall": 0.5})
        rows.append({"arm_id": f"s{seed}", "factor": "size", "level": 0.1, "model": "m", "seed": seed,
                     "fid": 60 + noise + 0.01 * seed, "recall": 0.5 + 0.001 * (-1) ** seed})
    table = paired_effects(pd.DataFrame(rows))
    assert list(table.columns) == list(COLUMNS)
    prim = table[table.primary]
    assert len(prim) == 1  # one primary test per factor, on FID, pooled over models
    p = prim.iloc[0]
    assert (p.factor, p.metric, p.model, p.n_pairs) == ("size", "fid", "all", 6)
    assert p.effect == pytest.approx(10.025) and p.p_value == pytest.approx(2 / 64) and p.p_holm == p.p_value
    assert p.significant and p.direction == "worse" and 9.9 < p.ci_low < 10.025 < p.ci_high
    desc = table[~table.primary].set_index("metric")
    assert not desc.significant.any() and (desc.direction == "none").all() and desc.p_holm.isna().all()
    assert desc.loc["fid"].effect == pytest.approx(10.025) and desc.loc["fid"].ci_low > 9.9  # paired t interval
    assert desc.loc["recall"].p_value > 0.5


def test_study_writes_effects_csv_and_the_report_shows_them(tmp_path) -> None:
    from reports.cli import main

    out = tmp_path / "s"
    assert main(["ablate", "--out", str(out), "--factors", "size", "--levels", "size=0.25", "--models", "vae",
                 "--seeds", "2", "--steps", "3", "--n-samples", "40", "--workers", "1"]) == 0
    eff = pd.read_csv(out / "effects.csv")
    assert list(eff.columns) == list(COLUMNS) and set(eff.metric) >= {"fid", "recall"}
    assert (eff.n_pairs == 2).all() and (eff.p_value >= 0.5).all() and not eff.significant.any()
    assert eff.primary.sum() == 1
    html = (out / "report.html").read_text()
    assert 'id="answer"' in html and 'id="methods"' in html
    assert "A pilot: with 2 seeds (2 blocks) no primary test can reach p &lt; 0.05" in html
    assert_one_story(out)


def test_model_tweaks_are_factors_of_kind_model_in_the_same_grid(tmp_path) -> None:
    from reports.cli import main
    from reports.factors import FACTORS, apply_factor
    from reports.study import StudyConfig, arm_training, grid, prepare_data

    assert {f: FACTORS.get(f).kind for f in ("size", "capacity", "steps", "augment", "ema")} == \
        {"size": "data", "capacity": "model", "steps": "model", "augment": "model", "ema": "model"}
    cfg = StudyConfig(factors=("capacity", "steps", "augment", "ema", "label_noise"),
                      levels={"capacity": (0.5,), "steps": (2.0,), "augment": (1.0,), "ema": (1.0,),
                              "label_noise": (0.3,)},
                      models=("dcgan", "vae", "cvae"), seeds=(0,), steps=20, width=16)
    arms = {a.arm_id: a for a in grid(cfg)}
    # each tweak runs only where it changes something: DiffAugment on GANs, EMA-off where there is one
    assert "augment-1-dcgan-s0" in arms and "augment-1-vae-s0" not in arms
    assert "ema-1-dcgan-s0" in arms and "ema-1-vae-s0" not in arms
    assert "label_noise-0.3-cvae-s0" in arms and "label_noise-0.3-vae-s0" not in arms
    data = prepare_data(cfg)
    assert arm_training(cfg, arms["capacity-0.5-dcgan-s0"], data.pool) == ({"g_width": 8, "d_width": 8}, 20)
    assert arm_training(cfg, arms["steps-2-vae-s0"], data.pool)[1] == 40
    assert arm_training(cfg, arms["augment-1-dcgan-s0"], data.pool)[0]["augment"] == "color,translation,cutout"
    assert arm_training(cfg, arms["ema-1-dcgan-s0"], data.pool)[0]["ema"] == 0.0
    assert arm_training(cfg, arms["baseline-dcgan-s0"], data.pool) == ({"g_width": 16, "d_width": 16}, 20)
    same, man = apply_factor("capacity", data.pool, 0.5, seed=0)
    assert same is data.pool and man["kind"] == "model"
    # through a real study: tweaks train as told, share the baseline, and effects.csv says their kind
    out = tmp_path / "s"
    assert main(["ablate", "--out", str(out), "--factors", "size,capacity,steps", "--levels",
                 "size=0.5;capacity=0.5;steps=2", "--models", "vae", "--seeds", "2", "--steps", "4",
                 "--n-samples", "40", "--workers", "1", "--fuse", "on"]) == 0
    df = pd.read_csv(out / "results.csv").set_index("arm_id")
    assert df.loc["steps-2-vae-s0", "steps"] == 8 and df.loc["capacity-0.5-vae-s0", "steps"] == 4
    assert df.loc["steps-2-vae-s0", "trained"].startswith("fused")  # a steps tweak fuses with the baseline
    eff = pd.read_csv(out / "effects.csv")
    assert set(zip(eff.factor, eff.kind)) == {("size", "data"), ("capacity", "model"), ("steps", "model")}
    assert sorted(eff[eff.primary].factor) == ["capacity", "size", "steps"]
    html = (out / "report.html").read_text()
    assert "Model tweak: training 2x as long" in html
    # the card says the analysis' one answer, whichever way these few steps went
    import html as html_mod

    from reports.effects import study_plan
    from reports.verdict import study_analysis

    ans = study_analysis(pd.read_csv(out / "results.csv"), study_plan(out)[0])["answer"]
    assert ans.verdict != "n/a" or "nothing like-with-like" in ans.sentence  # both kinds are in this study
    assert html_mod.escape(ans.sentence, quote=False) in html
    assert_one_story(out)


def test_copying_is_never_reported_as_quality() -> None:
    from reports.verdict import copying_arms, verdict

    rows = []
    for seed in range(2):
        base = {"factor": "baseline", "level": np.nan, "model": "cvae", "seed": seed, "fid": 57.5 + seed,
                "recall": 0.04, "copy_rate": 0.002, "copy_rate_heldout": 0.004, "copy_p": 0.9, "n_train": 1258}
        small = {**base, "factor": "size", "level": 0.05, "fid": 48.0 + seed, "recall": 0.09, "n_train": 63,
                 "copy_rate": 0.044 if seed == 0 else 0.01, "copy_rate_heldout": 0.006,
                 "copy_p": 6.6e-5 if seed == 0 else 0.3}
        rows += [{**base, "arm_id": f"baseline-cvae-s{seed}"}, {**small, "arm_id": f"size-0.05-cvae-s{seed}"}]
    df = pd.DataFrame(rows)
    flagged = copying_arms(df)
    assert list(flagged) == [("size", 0.05, "cvae")] and "4.4% of its samples" in flagged[("size", 0.05, "cvae")]
    text = " ".join(verdict(df))
    assert "copies its training data: not an improvement" in text and "(against expectation)" not in text
    assert "0 significantly better" in text  # and 2 blocks cannot make anything significant
    clean = df.assign(copy_p=0.9)
    assert copying_arms(clean) == {} and "copies" not in " ".join(verdict(clean))


def test_standard_preset_puts_data_and_model_factors_on_six_paired_seeds() -> None:
    from reports.factors import FACTORS
    from reports.study import PRESET_PLANS, grid, preset

    cfg = preset("standard")
    kinds = {FACTORS.get(f).kind for f in cfg.factors}
    assert kinds == {"data", "model", "control"} and len(cfg.seeds) >= 6
    # every data factor but 'valued', which trains its own estimate population per arm (opt-in, issue 22)
    assert {f for f in FACTORS if FACTORS.get(f).kind == "data"} - {"valued"} <= set(cfg.factors)
    arms = grid(cfg)
    assert len(arms) == 216 and sum(a.factor == "baseline" for a in arms) == 12
    assert PRESET_PLANS["standard"] == {"cpu": 3600, "cuda": 600}


def test_forest_plot_escapes_its_labels_and_draws_unbounded_intervals_to_the_edge() -> None:
    from reports.svg import svg_forest

    svg = svg_forest([{"label": "<b>x</b>", "effect": 1.0, "ci_low": -1.0, "ci_high": 2.0, "kind": "model"},
                      {"label": "ctrl", "effect": 0.5, "ci_low": -np.inf, "ci_high": np.inf, "kind": "control",
                       "significant": False}], title="t")
    assert svg.startswith("<svg") and "&lt;b&gt;x&lt;/b&gt;" in svg and "<b>x</b>" not in svg
    assert svg.count("<circle") == 2 and "#ff7f0e" in svg and "#7f7f7f" in svg and "inf" not in svg


def test_duplicates_as_a_dose_and_the_per_sample_source_signal(tmp_path) -> None:
    import datacheck
    from datacheck.copies import source_share
    from reports.factors import apply_factor

    d = datacheck.load("digits").subset(np.arange(600))
    base, m1 = apply_factor("dup_dose", d, 1, seed=3)
    assert base is d  # k = 1 is the baseline
    new, man = apply_factor("dup_dose", d, 8, seed=3)
    new2, man2 = apply_factor("dup_dose", d, 32, seed=3)
    assert man["dup_sources"] == man2["dup_sources"] and len(man["dup_sources"]) == 5  # same sources, any k
    assert len(new) == 600 + 5 * 7 and len(new2) == 600 + 5 * 31
    assert np.array_equal(new.images[:600], d.images)  # the unique set stays as it was
    pos = {k: i for i, k in enumerate(d.ids)}
    for j, sid in enumerate(man["dup_sources"]):
        assert np.array_equal(new.images[600 + 7 * j], d.images[pos[sid]])
    near, _ = apply_factor("dup_dose", d, 8, seed=3, near=True)
    assert not np.array_equal(near.images[600:], new.images[600:])
    # generated samples that are all pictures of the sources: share 1, placebo ~0, smallest p
    src_imgs = np.stack([d.images[pos[s]] for s in man["dup_sources"]] * 20)
    fake = datacheck.Dataset(src_imgs, np.full(len(src_imgs), -1), [f"f{i}" for i in range(len(src_imgs))])
    sig = source_share(fake, new, man["dup_sources"], placebo=99)
    assert sig["dup_source_share"] == 1.0 and sig["dup_placebo_share"] < 0.05 and sig["dup_p"] == pytest.approx(0.01)
    # real samples from elsewhere land on the sources no more than on placebo images
    other = datacheck.load("digits").subset(np.arange(1000, 1400))
    sig = source_share(other, new, man["dup_sources"], placebo=99)
    assert sig["dup_source_share"] < 0.05 and sig["dup_p"] > 0.05


def test_study_reports_the_dose_response_columns(tmp_path) -> None:
    from reports.cli import main

    out = tmp_path / "s"
    assert main(["ablate", "--out", str(out), "--factors", "dup_dose", "--levels", "dup_dose=16", "--models", "vae",
                 "--seeds", "1", "--steps", "5", "--n-samples", "60", "--workers", "1"]) == 0
    df = pd.read_csv(out / "results.csv").set_index("arm_id")
    for arm in ("baseline-vae-s0", "dup_dose-16-vae-s0"):  # the baseline is the k = 1 point
        assert 0 <= df.loc[arm, "dup_source_share"] <= 1 and 0 < df.loc[arm, "dup_p"] <= 1
        assert df.loc[arm, "dup_placebo_share"] >= 0
    assert df.loc["dup_dose-16-vae-s0", "n_train"] == df.loc["baseline-vae-s0", "n_train"] + 5 * 15
    assert "samples nearest a duplicated source" in (out / "report.html").read_text()


def dose_table(seeds: int, excess: float, rng: np.random.Generator) -> pd.DataFrame:
    """A dup_dose study: per (seed, model) a baseline (k = 1) and arms at k = 8, 32, 128 whose share of samples
    nearest the duplicated sources rises by ``excess`` per step of the dose over the placebo share."""
    rows = []
    for seed in range(seeds):
        for model in ("cgan", "cvae"):
            for k, lv in enumerate((np.nan, 8.0, 32.0, 128.0)):
                share = 0.01 + excess * k + rng.normal(0, 0.002)
                rows.append({"arm_id": f"{model}-{seed}-{k}", "factor": "baseline" if k == 0 else "dup_dose",
                             "level": lv, "model": model, "seed": seed, "fid": 57.0 + rng.normal(0, 2.0),
                             "dup_source_share": share, "dup_placebo_share": 0.01 + rng.normal(0, 0.001),
                             "dup_p": 0.005 if k else 0.5})
    return pd.DataFrame(rows)


def test_a_duplicate_dose_that_is_copied_is_one_trend_test_in_the_primary_family() -> None:
    """The dose's copy signal is tested once, as a dose trend over blocks, inside the Holm family: with 6 seeds
    a rising excess share is significant and counts as copying; with none it is not; and the per-arm placebo p
    (floor 1/201) no longer decides anything, so 2 seeds say 'not significant' even at dup_p = 0.005."""
    from reports.effects import default_plan, paired_effects
    from reports.verdict import copying_arms, copying_factor, factor_sentences, study_analysis

    rng = np.random.default_rng(0)
    df = dose_table(6, 0.02, rng)
    plan = default_plan(["dup_dose"])
    assert plan.tests() == [("dup_dose", "fid"), ("dup_dose", "dup_excess")]
    an = study_analysis(df, plan)
    row = an["copy"]["dup_dose"]
    assert row["significant"] and row["effect"] > 0 and row["metric"] == "dup_excess" and row["n_pairs"] == 12
    assert copying_factor(df, "dup_dose", an) and not copying_arms(df)
    assert "draw the generator's samples as their dose rises" in factor_sentences(df, an, {})["dup_dose"]
    eff = paired_effects(df, plan=plan)
    prim = eff[eff.primary]
    assert list(prim.metric) == ["fid", "dup_excess"] and prim.significant.tolist() == [False, True]
    # no excess: not significant, not copying
    flat = dose_table(6, 0.0, np.random.default_rng(1))
    an = study_analysis(flat, plan)
    assert not an["copy"]["dup_dose"]["significant"] and not copying_factor(flat, "dup_dose", an)
    # two seeds: too few blocks for the trend, and the per-arm dup_p alone never flags
    two = dose_table(1, 0.02, np.random.default_rng(2))
    an = study_analysis(two, plan)
    assert not an["copy"]["dup_dose"]["significant"] and not copying_factor(two, "dup_dose", an)


def test_a_gain_whose_ct_score_fell_is_counted_as_copying_in_the_headline() -> None:
    """No per-sample copy signal, but C_T fell over the same blocks where FID significantly improved (the
    tutorial's 5% arm): the headline must not call it 'significantly better'; without the C_T fall it is."""
    from reports.verdict import headline, study_analysis

    rows = []
    for seed in range(6):
        base = {"factor": "baseline", "level": np.nan, "model": "cvae", "seed": seed, "fid": 25.0 + seed,
                "recall": 0.49, "ct_score": 3.3 + 0.5 * seed, "copy_rate": 0.0, "copy_rate_heldout": 0.02,
                "copy_p": 0.9, "n_train": 618}
        small = {**base, "factor": "size", "level": 0.05, "fid": 17.0 + 0.5 * seed, "ct_score": -0.7 - 0.2 * seed,
                 "n_train": 31}
        rows += [{**base, "arm_id": f"baseline-cvae-s{seed}"}, {**small, "arm_id": f"size-0.05-cvae-s{seed}"}]
    df = pd.DataFrame(rows)
    assert "0 significantly better, 1 better only by copying (size)" in headline(df, study_analysis(df))
    steady = df.assign(ct_score=3.3)
    assert "1 significantly better (size)" in headline(steady, study_analysis(steady))
    # a C_T that falls from far above 0 toward it is a model fitting better, not copying
    fitting = df.assign(ct_score=np.where(df.factor == "baseline", 6.0, 2.5) + 0.1 * df.seed)
    assert "1 significantly better (size)" in headline(fitting, study_analysis(fitting))


def test_a_newly_registered_factor_gets_its_grid_words_plots_and_test_without_edits_elsewhere(tmp_path) -> None:
    """What a study shows and tests for a factor comes from its registry entry: register one (a data factor
    flipping images upside down) and run a study of it through the CLI: its default levels make the grid, its
    axis words and its extra panel appear in the report, its sentence opens with its phrase, and it has a
    primary test in effects.csv."""
    from reports.cli import main
    from reports.factors import FACTORS, Factor
    from reports.study import preset
    from reports.verdict import axis_words, panels

    def vflip(ds, level, rng):
        idx = np.sort(rng.choice(len(ds), size=int(round(level * len(ds))), replace=False))
        images = ds.images.copy()
        images[idx] = images[idx][:, :, ::-1, :]
        return ds.replace(images=images), {"changed": len(idx)}

    FACTORS.add("vflip", Factor("vflip", vflip, 0.0, "fraction of images upside down", default_levels=(0.5,),
                                axis="fraction of images upside down", phrase="Turning {pct} of the images upside down",
                                metrics=("fid", "coverage"), panels=("kid_mean",)))
    try:
        assert preset("quick", factors=("vflip",)).levels["vflip"] == (0.5,)
        assert panels("vflip")[-1] == "kid_mean" and axis_words("vflip") == "fraction of images upside down"
        out = tmp_path / "s"
        assert main(["ablate", "--out", str(out), "--factors", "vflip", "--models", "vae", "--seeds", "2",
                     "--steps", "5", "--n-samples", "60", "--workers", "1"]) == 0
        eff = pd.read_csv(out / "effects.csv")
        prim = eff[eff.primary]
        assert list(prim.factor) == ["vflip"] and prim.level.tolist() == [0.5] and list(prim.kind) == ["data"]
        html = (out / "report.html").read_text()
        assert "Turning 50% of the images upside down" in html and "fraction of images upside down" in html
        assert html.count("<svg") >= 1 and "KID" in html
    finally:
        FACTORS.remove("vflip")
