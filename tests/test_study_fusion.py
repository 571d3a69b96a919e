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


class _Kill(BaseException):
    """A kill: not an Exception, so no runner turns it into a failed arm (as SIGKILL would not)."""


# one fused group of members with three step counts: steps-0.5 ends at 20, the baseline at 40, steps-2 at 80
MIXED = StudyConfig(factors=("steps",), levels={"steps": (0.5, 2.0)}, models=("vae",), seeds=(0,), steps=40,
                    n_samples=40)
TIMINGS = {"train_seconds", "eval_seconds", "seconds"}


def _arm_docs(study: Path) -> dict[str, dict]:
    """Every arm's result.json without its timings (which no two runs share)."""
    out = {}
    for p in sorted((study / "arms").glob("*/result.json")):
        doc = json.loads(p.read_text())
        doc["row"] = {k: v for k, v in doc["row"].items() if k not in TIMINGS}
        doc["metrics"] = {k: v for k, v in doc["metrics"].items() if k not in TIMINGS}
        doc.pop("provenance", None)
        out[p.parent.name] = doc
    return out


@pytest.fixture(scope="module")
def mixed_uninterrupted(tmp_path_factory) -> Path:
    from reports.runner import run_study

    study = tmp_path_factory.mktemp("mixed") / "s"
    df = run_study(MIXED, study, fuse="on", render=False)
    assert sorted(df.steps) == [20, 40, 80] and set(df.trained) == {"fused x3"}
    return study


@pytest.mark.parametrize("where", ["step 30", "saving arm 2", "tidying up"])
def test_a_killed_mixed_steps_group_resumes_to_the_uninterrupted_results(
        where: str, mixed_uninterrupted: Path, tmp_path: Path, monkeypatch) -> None:
    """Killed between two members' ends, while the driver saves the group's arms, or before
    it tidies the work folder: the same call again finishes the study with the uninterrupted run's
    results bitwise (timings aside), trains no member to its end twice and leaves STUDY/work empty."""
    import generative.population as population
    import reports.runner as runner

    real_train, real_save, real_clean = population.train_population, runner._save_arm, runner.clean_work
    runs: list[list[int]] = []  # the steps each train_population call ran
    counts = {"save": 0}

    def train(*a, **k):
        runs.append([])

        def on_step(step: int) -> None:
            runs[-1].append(step)
            if where == f"step {step}":
                raise _Kill
        return real_train(*a, **{**k, "on_step": on_step})

    def save(*a, **k):
        counts["save"] += 1
        if where == "saving arm 2" and counts["save"] == 2:
            raise _Kill
        return real_save(*a, **k)

    def clean(*a, **k):
        if where == "tidying up" and k.get("only"):
            raise _Kill
        return real_clean(*a, **k)

    monkeypatch.setattr(population, "train_population", train)
    monkeypatch.setattr(runner, "_save_arm", save)
    monkeypatch.setattr(runner, "clean_work", clean)
    study = tmp_path / "s"
    with pytest.raises(_Kill):
        runner.run_study(MIXED, study, fuse="on", render=False)
    work = study / "work"
    assert len(list(work.glob("*.json"))) == 1 and not (study / ".lock").exists()
    where_ = where
    where = "resumed"  # no more kills
    df = runner.run_study(MIXED, study, fuse="on", render=False)
    assert len(df) == 3 and set(df.trained) == {"fused x3"}
    assert _arm_docs(study) == _arm_docs(mixed_uninterrupted), where_
    assert (study / "results.csv").read_text().count("\n") == (mixed_uninterrupted / "results.csv").read_text().count("\n")
    assert not work.exists() or not any(work.rglob("*")), sorted(map(str, work.rglob("*")))
    events = [json.loads(line) for line in (study / "logs" / "training.jsonl").read_text().splitlines()]
    ended = sorted(e["member"] for e in events if e["event"] == "ended")
    assert ended == sorted(df.arm_id), ended  # each arm trained to its end once, across the kill
    assert [e["event"] for e in events if e["event"] in ("start", "resume")] == ["start", "resume"]
    if where_.startswith("step"):
        # resumed from the checkpoint written when the last member before the kill ended
        assert runs[-1][0] == 21 and runs[-1][-1] == 80
    else:  # every member had ended: the kept checkpoint gives them back without training
        assert len(runs) == 1 or runs[-1] == [], runs[-1][:3]


def test_an_error_in_a_fused_group_is_a_result_and_retry_failed_reruns_it(tmp_path: Path, monkeypatch) -> None:
    """A fused job that raises fails its arms with the reason, the study goes on (the other model's group
    finishes), and --retry-failed trains them again; an error evaluating one member fails that arm only."""
    import generative.population as population
    import reports.fusion as fusion
    from reports.runner import run_study

    cfg = StudyConfig(factors=("size",), levels={"size": (0.5,)}, models=("vae", "dcgan"), seeds=(0,), steps=20,
                      n_samples=40)
    real_train, real_result = population.train_population, fusion.arm_result

    def broken(model, *a, **k):
        if model == "vae":
            raise RuntimeError("simulated out of memory in the fused step")
        return real_train(model, *a, **k)

    monkeypatch.setattr(population, "train_population", broken)
    df = run_study(cfg, tmp_path / "s", fuse="on", render=False)
    assert sorted(df.arm_id) == ["baseline-dcgan-s0", "size-0.5-dcgan-s0"]  # the dcgan group went on
    for arm in ("baseline-vae-s0", "size-0.5-vae-s0"):
        doc = json.loads((tmp_path / "s" / "arms" / arm / "result.json").read_text())
        assert doc["status"] == "failed" and doc["error"] == "RuntimeError: simulated out of memory in the fused step"
    assert not (tmp_path / "s" / "work").exists()
    monkeypatch.setattr(population, "train_population", real_train)
    # a resume leaves failed arms alone; --retry-failed runs them again (a fresh group)
    assert len(run_study(cfg, tmp_path / "s", fuse="on", render=False)) == 2

    def bad_eval(arm, *a, **k):
        if arm.factor == "size":
            raise ValueError("simulated evaluation error")
        return real_result(arm, *a, **k)

    monkeypatch.setattr(fusion, "arm_result", bad_eval)
    df = run_study(cfg, tmp_path / "s", fuse="on", render=False, retry_failed=True)
    assert sorted(df.arm_id) == ["baseline-dcgan-s0", "baseline-vae-s0", "size-0.5-dcgan-s0"]
    doc = json.loads((tmp_path / "s" / "arms" / "size-0.5-vae-s0" / "result.json").read_text())
    assert doc["status"] == "failed" and doc["error"] == "ValueError: simulated evaluation error"
    monkeypatch.setattr(fusion, "arm_result", real_result)
    assert len(run_study(cfg, tmp_path / "s", fuse="on", render=False, retry_failed=True)) == 4


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
