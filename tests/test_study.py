"""A tiny real study end to end through the CLI: results, resume, dry run, render, errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from reports.cli import main
from reports.study import METRIC_COLUMNS, PRESETS, StudyConfig, grid, preset

TINY = ["--factors", "size", "--levels", "size=0.25", "--models", "cvae", "--seeds", "1",
        "--steps", "3", "--n-samples", "60", "--workers", "1"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study") / "s"
    assert main(["ablate", "--out", str(out), *TINY]) == 0
    return out


def test_tiny_study_writes_results_samples_and_report(study) -> None:
    df = pd.read_csv(study / "results.csv")
    assert sorted(df.arm_id) == ["baseline-cvae-s0", "size-0.25-cvae-s0"]
    for col in ("factor", "level", "model", "seed", *METRIC_COLUMNS, "label_agreement", "n_train"):
        assert col in df.columns, col
    # every scalar metric the evaluator returned is a column
    res = json.loads((study / "arms" / "baseline-cvae-s0" / "result.json").read_text())
    scalars = [k for k, v in res["metrics"].items() if not isinstance(v, (dict, list))]
    assert set(scalars) <= set(df.columns)
    row = df.set_index("arm_id").loc["size-0.25-cvae-s0"]
    base = df.set_index("arm_id").loc["baseline-cvae-s0"]
    assert row.level == 0.25 and pd.isna(base.level) and base.factor == "baseline"
    assert row.n_train == round(0.25 * base.n_train) and row.steps == 3
    assert row.n_fake == 60 and 0 <= row.label_agreement <= 1 and row.fid > 0
    for arm in df.arm_id:
        d = study / "arms" / arm
        assert (d / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert json.loads((d / "manifest.json").read_text())["arm_id"] == arm
    man = json.loads((study / "arms" / "size-0.25-cvae-s0" / "manifest.json").read_text())
    assert man["n_after"] == row.n_train and len(man["removed_ids"]) == base.n_train - row.n_train
    meta = json.loads((study / "study.json").read_text())
    assert meta["protocol"]["data_fingerprint"] and "reports ablate" in meta["commands"][0]
    # the reference split is datacheck's, and no reference image is in the pool
    split = pd.read_csv(study / "split.csv")
    assert set(split.split) == {"train", "test"} and meta["reference"]["n"] == (split.split == "test").sum()
    html = (study / "report.html").read_text()
    assert "Verdict" in html and "baseline-cvae-s0" in html


def test_rerun_skips_finished_arms_and_resumes_a_killed_one(study, capsys) -> None:
    before = {a: (study / "arms" / a / "result.json").stat().st_mtime_ns
              for a in ("baseline-cvae-s0", "size-0.25-cvae-s0")}
    capsys.readouterr()
    assert main(["ablate", "--out", str(study), *TINY]) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out
    # simulate a kill during the second arm: its result.json never got written, results.csv is stale
    (study / "arms" / "size-0.25-cvae-s0" / "result.json").unlink()
    df = pd.read_csv(study / "results.csv")
    df[df.arm_id == "baseline-cvae-s0"].to_csv(study / "results.csv", index=False)
    assert main(["ablate", "--out", str(study), *TINY]) == 0
    out = capsys.readouterr().out
    assert "1 already finished, 1 to run" in out and "size-0.25-cvae-s0" in out
    assert (study / "arms" / "baseline-cvae-s0" / "result.json").stat().st_mtime_ns == before["baseline-cvae-s0"]
    assert sorted(pd.read_csv(study / "results.csv").arm_id) == ["baseline-cvae-s0", "size-0.25-cvae-s0"]


def test_render_rebuilds_the_html(study, capsys) -> None:
    (study / "report.html").unlink()
    assert main(["render", str(study)]) == 0
    assert (study / "report.html").exists() and str(study / "report.html") in capsys.readouterr().out
    assert main(["render", str(study / "arms")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a study folder" in err


def test_dry_run_prints_grid_and_estimate_and_trains_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "dry"
    args = ["ablate", "--out", str(out), "--dry-run", "--factors", "size,label_noise", "--models", "cvae,vae",
            "--seeds", "2", "--steps", "40", "--n-samples", "60", "--workers", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "size" in text and "label_noise" in text and "baseline" in text
    n = len(grid(preset("quick", factors=("size", "label_noise"), models=("cvae", "vae"), seeds=(0, 1))))
    assert "estimate:" in text and f"for {n} arms on 1 worker" in text and "min" in text
    assert not (out / "arms").exists() and not (out / "results.csv").exists()


def test_quick_preset_covers_all_six_factors_with_a_gan_and_a_vae() -> None:
    cfg = preset("quick")
    assert {"size", "duplicates", "label_noise", "corruption", "imbalance", "cleaned"} <= set(cfg.factors)
    assert any("gan" in m for m in cfg.models) and any("vae" in m for m in cfg.models)
    arms = grid(cfg)
    # one shared baseline per model x seed, never one per factor
    assert sum(a.factor == "baseline" for a in arms) == len(cfg.models) * len(cfg.seeds)
    assert len({a.arm_id for a in arms}) == len(arms)
    full = preset("full")
    assert len(full.seeds) >= 3 and sum(map(len, full.levels.values())) > sum(map(len, cfg.levels.values()))
    # every preset runs the negative control under its plan
    from reports.factors import FACTORS

    for name in PRESETS:
        assert "control" in {FACTORS.get(f).kind for f in preset(name).factors}, name


@pytest.mark.parametrize("argv, msg", [
    (["--seeds", "0"], "--seeds"),
    (["--factors", "size,nope"], "unknown data factor"),
    (["--models", "nope"], "unknown model"),
    (["--executor", "slurm"], "unknown executor"),
    (["--preset", "huge"], "unknown preset"),
    (["--levels", "size=a"], "--levels"),
    (["--levels", "corruption=1.5", "--factors", "corruption", "--dry-run"], "corruption"),
    (["--n-samples", "5", "--dry-run"], "n_samples must be >= 10"),
    (["--device", "tpu", "--dry-run"], "device must be"),
    (["--features", "inception"], "unknown --features 'inception'; expected one of: auto, classifier, random, pixels"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, msg) -> None:
    assert main(["ablate", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err and "Traceback" not in err


def test_a_study_folder_refuses_other_settings(study, capsys) -> None:
    other = list(TINY)
    other[other.index("--n-samples") + 1] = "80"
    assert main(["ablate", "--out", str(study), *other]) == 2
    assert "different settings" in capsys.readouterr().err


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(Exception, match="unknown study setting"):
        StudyConfig.from_dict({**PRESETS["quick"], "stepz": 3})


@pytest.mark.parametrize("key, value, msg", [
    ("n_samples", 5, "n_samples"), ("reference", 0.9, "reference"), ("batch_size", 1, "batch_size"),
    ("device", "tpu", "device"), ("features", "inception", "features must be one of auto"),
])
def test_config_validates_its_numbers(key, value, msg) -> None:
    with pytest.raises(Exception, match=msg):
        StudyConfig.from_dict({**PRESETS["quick"], key: value})


def test_unlabeled_data_refuses_label_needing_arms_in_one_line(tmp_path, capsys) -> None:
    import numpy as np

    import datacheck

    npz = tmp_path / "unlabeled.npz"
    np.savez(npz, images=datacheck.load("digits").images[:300, 0])
    assert main(["ablate", "--data", str(npz), "--out", str(tmp_path / "u"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no labels" in err and "label_noise" in err and "cgan" in err


def test_evaluation_warnings_that_differ_only_in_numbers_merge_into_one_line() -> None:
    from reports.study_html import _merge_warnings

    seen = {"memorization share: 13.9% of real held-out images are flagged too": ["a", "b", "c"],
            "memorization share: 19.9% of real held-out images are flagged too": ["d"],
            "FID with 266 images in a 512-d feature space": ["a", "b", "c", "d"],
            "FID with 40 images in a 512-d feature space": ["e"]}
    assert _merge_warnings(seen) == [
        "memorization share: 13.9-19.9% of real held-out images are flagged too (4 arms)",
        "FID with 40-266 images in a 512-d feature space (5 arms)"]
