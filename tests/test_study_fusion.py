"""reports ablate --fuse: arms trained as fused groups agree with arms trained alone; the plan, the
dry run, study.json and the results say how arms were trained; groups respect the memory budget; a
killed fused group resumes from its population checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datacheck.errors import UserError
from reports.cli import main
from reports.fusion import GroupTask, plan_training
from reports.study import StudyConfig, grid, prepare_data

SMALL = ["--factors", "size,label_noise", "--levels", "size=0.25;label_noise=0.3", "--models", "cgan,cvae",
         "--seeds", "2", "--steps", "40", "--n-samples", "60", "--workers", "2"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fuse")
    assert main(["ablate", "--out", str(root / "on"), "--fuse", "on", *SMALL]) == 0
    assert main(["ablate", "--out", str(root / "off"), "--fuse", "off", *SMALL]) == 0
    return root / "on", root / "off"


def test_fused_and_solo_studies_agree_arm_by_arm(pair) -> None:
    on, off = (pd.read_csv(p / "results.csv").set_index("arm_id") for p in pair)
    assert sorted(on.index) == sorted(off.index) and len(on) == 12
    assert set(on.trained) == {"fused x3"} and set(off.trained) == {"solo"}
    assert (on.steps == 40).all() and (on.n_train == off.loc[on.index].n_train).all()
    off = off.loc[on.index]
    # each member saw its solo run's data, noise and initial weights; after 40 steps the float-order
    # drift is far below the seed spread (the fused FID stays within 5% of the solo FID, arm by arm)
    np.testing.assert_allclose(on.fid, off.fid, rtol=0.05)
    spread = off.groupby(["factor", "model"]).fid.std().max()
    assert (on.fid - off.fid).abs().max() < spread
    np.testing.assert_allclose(on.label_agreement, off.label_agreement, atol=0.1)


def test_study_json_records_how_arms_trained_and_work_folder_is_cleared(pair) -> None:
    on, off = pair
    rec = json.loads((on / "study.json").read_text())["training"][-1]
    assert rec["fuse"] == "on" and rec["models"]["cgan"]["fused"] and rec["models"]["cgan"]["groups"] == [3, 3]
    assert "fused group" in rec["summary"]
    rec_off = json.loads((off / "study.json").read_text())["training"][-1]
    assert not rec_off["models"]["cvae"]["fused"] and rec_off["models"]["cvae"]["reason"] == "--fuse off"
    # the members' run folders and population checkpoints are gone once their arms are saved
    assert not any(p.is_file() for p in (on / "work").rglob("*"))
    assert "fused x3" in (on / "report.html").read_text()


def test_dry_run_shows_groups_and_estimate(tmp_path: Path, capsys) -> None:
    assert main(["ablate", "--out", str(tmp_path / "s"), "--fuse", "on", "--dry-run", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "cgan: 6 arms, 6 in 2 fused group(s) of 3, 3" in out and "estimate:" in out
    assert not (tmp_path / "s" / "results.csv").exists()


def test_planner_splits_groups_to_the_memory_budget_and_spreads_them_over_workers() -> None:
    cfg = StudyConfig(factors=("size",), levels={"size": (0.5, 0.25, 0.1)}, models=("cvae",), seeds=(0, 1, 2),
                      steps=5)
    data = prepare_data(cfg)
    arms = grid(cfg)
    assert len(arms) == 12
    plan = plan_training(cfg, arms, data.pool, fuse="on", workers=2)
    assert [len(t.arms) for t in plan.tasks] == [6, 6] and all(isinstance(t, GroupTask) for t in plan.tasks)
    from generative.population import member_bytes

    per = member_bytes("cvae", data.pool.shape, data.pool.n_classes, cfg.batch_size, {"g_width": 16, "d_width": 16})
    tight = plan_training(cfg, arms, data.pool, fuse="on", workers=1, budget=int(4.5 * per))
    assert max(len(t.arms) for t in tight.tasks) <= 4 and sum(len(t.arms) for t in tight.tasks) == 12
    alone = plan_training(cfg, arms, data.pool, fuse="on", workers=1, budget=per)
    assert not alone.models["cvae"]["fused"] and "budget" in alone.models["cvae"]["reason"]
    assert len(alone.tasks) == 12
    with pytest.raises(UserError, match="--fuse must be one of"):
        plan_training(cfg, arms, data.pool, fuse="sometimes")
    # a model whose option sets split (a capacity tweak changes shapes): the summary counts both kinds
    mixed = StudyConfig(factors=("size", "capacity"), levels={"size": (0.5,), "capacity": (0.5,)}, models=("cvae",),
                        seeds=(0,), steps=5)
    plan = plan_training(mixed, grid(mixed), data.pool, fuse="on", workers=1)
    assert sorted(len(getattr(t, "arms", [t])) for t in plan.tasks) == [1, 2]
    assert plan.describe() == ("training: cvae: 3 arms, 2 in 1 fused group(s) of 2; "
                               "1 alone (a single arm with these options)")


def test_a_killed_fused_group_resumes_from_its_population_checkpoint(tmp_path: Path, monkeypatch) -> None:
    import generative.population as population
    from reports.runner import run_study

    cfg = StudyConfig(factors=("size",), levels={"size": (0.5,)}, models=("vae",), seeds=(0, 1), steps=250,
                      n_samples=40)
    real = population.train_population
    calls: list[int] = []

    class Killed(Exception):
        pass

    def dying(*args, **kwargs):
        def on_step(step: int) -> None:
            calls.append(step)
            if step == 120:  # after the checkpoint at 100
                raise Killed
        return real(*args, **{**kwargs, "on_step": on_step})

    monkeypatch.setattr(population, "train_population", dying)
    with pytest.raises(Killed):
        run_study(cfg, tmp_path / "s", fuse="on", render=False)
    states = list((tmp_path / "s" / "work").glob("*.pt"))
    assert len(states) == 1
    calls.clear()
    monkeypatch.setattr(population, "train_population",
                        lambda *a, **k: real(*a, **{**k, "on_step": calls.append}))
    df = run_study(cfg, tmp_path / "s", fuse="on", render=False)
    assert len(df) == 4 and set(df.trained) == {"fused x4"}
    assert calls[0] == 101 and calls[-1] == 250  # resumed after step 100, not from scratch
    assert not states[0].exists()


def test_cpu_resolution_and_width_rules_and_their_record(tmp_path: Path) -> None:
    from reports.study import reduce_resolution
    import datacheck

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb32.npz", images=imgs, labels=np.arange(120) % 3)
    ds = datacheck.load(str(tmp_path / "rgb32.npz"))
    small = reduce_resolution(ds, 16)
    assert small.shape == (3, 16, 16) and len(small) == 120
    block = ds.images[7, 1, 4:6, 10:12].astype(float).mean()
    assert small.images[7, 1, 2, 5] == int(np.rint(block))  # each pixel is its 2x2 block's rounded mean
    assert reduce_resolution(ds, 32) is ds and reduce_resolution(ds, None) is ds
    assert reduce_resolution(ds, 8).shape == (3, 8, 8)
    cpu = StudyConfig(width="cpu", resolution="cpu")
    assert cpu.max_side() == 16 and cpu.widths((1, 8, 8)) == 16 and cpu.widths((3, 16, 16)) == 16
    assert cpu.widths((3, 32, 32)) == 8 and StudyConfig().widths((3, 32, 32)) is None
    gpu = StudyConfig(width="cpu", resolution="cpu", device="cuda")
    assert gpu.max_side() is None and gpu.widths((3, 32, 32)) is None
    assert StudyConfig(width=24).widths((3, 32, 32)) == 24 and StudyConfig(resolution=8).max_side() == 8
    for bad in ({"width": "wide"}, {"width": 0}, {"resolution": "half"}, {"resolution": 4}):
        with pytest.raises(UserError, match="width|resolution"):
            StudyConfig(**bad)
    # the quick preset on 32 px colour images trains and evaluates at 16 px, and says so
    out = tmp_path / "s"
    assert main(["ablate", "--data", str(tmp_path / "rgb32.npz"), "--out", str(out), "--factors", "size",
                 "--levels", "size=0.5", "--models", "cvae", "--seeds", "1", "--steps", "3", "--n-samples", "40",
                 "--workers", "1"]) == 0
    meta = json.loads((out / "study.json").read_text())
    assert meta["images"] == {"original_shape": [3, 32, 32], "trained_shape": [3, 16, 16]}
    assert meta["protocol"]["widths"] == {"cvae": 16} and meta["config"]["resolution"] == "cpu"
    with np.load(out / "arms" / "baseline-cvae-s0" / "samples.npz") as z:
        assert z["images"].shape[1:] == (16, 16, 3)
    html = (out / "report.html").read_text()
    assert "area-downsampled from 3x32x32" in html and "reduced for a CPU study" in html
