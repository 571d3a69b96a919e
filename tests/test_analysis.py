"""reports.analysis: the declared plan, the exact sign-flip test and the interval that inverts it, dose
ranks and block statistics, Holm within the primary family, calibration under the null and power under a
planted effect (through the real analysis code), the pilot and control notes, and the one answer."""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd
import pytest

from reports.analysis import (AnalysisPlan, block_statistic, blocks_needed, control_note, dose_ranks,
                              factor_blocks, holm, min_p, pilot_note, plan_for, primary_tests, sign_flip_interval,
                              sign_flip_p, t_interval)
from reports.answer import answer

KINDS = {"size": "data", "corruption": "data", "capacity": "model", "steps": "model", "placebo": "control"}
BASELINES = {"size": 1.0, "corruption": 0.0, "capacity": 1.0, "steps": 1.0, "placebo": 0.0}
LEVELS = {"size": (0.5, 0.1), "corruption": (0.4,), "capacity": (0.5, 2.0), "steps": (2.0,), "placebo": (1.0,)}


def study(seeds: int, effects: dict[str, float], rng: np.random.Generator, models=("cgan", "cvae"),
          noise: float = 1.0, heavy: bool = False) -> pd.DataFrame:
    """A results table shaped like a study: per (seed, model) a baseline FID and every factor's arms, each arm
    the block's level plus its own noise; ``effects``: the planted FID change at each factor's farthest level
    (intermediate levels get a share by dose rank)."""
    rows = []
    for s in range(seeds):
        for m in models:
            block = 50 + 10 * rng.normal()
            draw = (lambda: noise * rng.standard_t(3)) if heavy else (lambda: noise * rng.normal())
            rows.append({"factor": "baseline", "level": math.nan, "model": m, "seed": s, "fid": block + draw()})
            for f, lvs in LEVELS.items():
                ranks = dose_ranks(lvs, BASELINES[f])
                top = max(abs(v) for v in ranks.values())
                for lv in lvs:
                    shift = effects.get(f, 0.0) * ranks[lv] / top
                    rows.append({"factor": f, "level": lv, "model": m, "seed": s, "fid": block + shift + draw()})
    return pd.DataFrame(rows)


def test_sign_flip_is_exact_and_its_floor_is_two_over_two_to_the_n() -> None:
    d = np.array([3.0, 1.0, 2.0, -0.5, 4.0])
    brute = np.mean([abs(np.dot(s, d)) / 5 >= abs(d.mean()) - 1e-12 for s in itertools.product((1, -1), repeat=5)])
    assert sign_flip_p(d) == pytest.approx(brute)
    assert sign_flip_p([5.0, 7.0]) == 0.5 == min_p(2)
    assert sign_flip_p(np.ones(10)) == pytest.approx(2 / 1024) == pytest.approx(min_p(10))
    assert 0 < sign_flip_p(np.arange(1, 21.0)) < 0.001  # Monte Carlo beyond 16, seeded and repeatable
    assert sign_flip_p(np.arange(1, 21.0)) == sign_flip_p(np.arange(1, 21.0))
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.2]), [0.04, 0.09, 0.09, 0.2])
    assert np.isnan(holm([0.01, np.nan])[1])


def test_the_interval_inverts_the_test() -> None:
    """0 lies outside the interval exactly when the test rejects at alpha; with too few values it is unbounded."""
    rng = np.random.default_rng(1)
    for n in (6, 8, 10, 12):
        for _ in range(15):
            d = rng.normal(rng.choice([0.0, 0.8, 1.5]), 1.0, n)
            lo, hi = sign_flip_interval(d)
            assert lo <= d.mean() <= hi
            assert (not lo <= 0 <= hi) == (sign_flip_p(d) <= 0.05), (n, d)
    assert sign_flip_interval([1.0, 2.0, 3.0, 4.0, 5.0]) == (-math.inf, math.inf)  # 2/32 > 0.05
    lo, hi = t_interval([1.0, 1.2, 0.9, 1.1, 1.0, 0.95])
    assert 0.9 < lo < 1.025 < hi < 1.15


def test_dose_ranks_and_the_block_statistic() -> None:
    assert dose_ranks([0.5, 0.25, 0.1], 1.0) == {1.0: 0, 0.5: 1, 0.25: 2, 0.1: 3}
    assert dose_ranks([0.5, 2.0], 1.0) == {1.0: 0, 0.5: -1, 2.0: 1}
    assert dose_ranks([8, 32, 128], 1.0) == {1.0: 0, 8.0: 1, 32.0: 2, 128.0: 3}
    # one level: exactly the paired difference; a straight line: its rise from the baseline to the end
    assert block_statistic({0.0: 50.0, 0.4: 57.0}, dose_ranks([0.4], 0.0)) == pytest.approx(7.0)
    assert block_statistic({1.0: 10.0, 0.5: 12.0, 0.1: 14.0}, dose_ranks([0.5, 0.1], 1.0)) == pytest.approx(4.0)
    # levels on both sides: the change per rank step, from the baseline to either end
    assert block_statistic({1.0: 10.0, 0.5: 7.0, 2.0: 13.0}, dose_ranks([0.5, 2.0], 1.0)) == pytest.approx(3.0)
    df = study(3, {"corruption": 9.0}, np.random.default_rng(0), noise=0.0)
    blocks = factor_blocks(df, "corruption", 0.0, "fid")
    assert sorted(blocks) == [(s, m) for s in range(3) for m in ("cgan", "cvae")]
    assert all(v == pytest.approx(9.0) for v in blocks.values())


def _plan() -> AnalysisPlan:
    return plan_for(list(LEVELS), KINDS)


def _any_significant(df: pd.DataFrame, plan: AnalysisPlan) -> bool:
    return any(r["significant"] for r in primary_tests(df, plan, BASELINES, intervals=False))


@pytest.mark.parametrize("seeds,heavy", [(2, False), (5, False), (6, True)])
def test_calibration_under_the_null(seeds: int, heavy: bool) -> None:
    """No effect anywhere: the share of studies with any significant primary test stays at or below alpha
    (Holm over the family; 400 simulated studies, so the bound allows for simulation error)."""
    rng = np.random.default_rng(seeds)
    plan = _plan()
    hits = sum(_any_significant(study(seeds, {}, rng, heavy=heavy), plan) for _ in range(400))
    assert hits / 400 <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 400), hits


def test_power_for_an_effect_twice_the_paired_spread() -> None:
    """One factor moved by twice the standard deviation of its paired differences (sqrt 2 x the noise), at 6
    seeds x 2 models: found in at least 80% of studies, and the others' false alarms stay rare."""
    rng = np.random.default_rng(7)
    plan = _plan()
    found = wrong = 0
    for _ in range(200):
        rows = {r["factor"]: r for r in primary_tests(study(6, {"corruption": 2 * math.sqrt(2)}, rng), plan, BASELINES,
                                                      intervals=False)}
        found += rows["corruption"]["significant"] and rows["corruption"]["direction"] == "worse"
        wrong += any(r["significant"] for f, r in rows.items() if f != "corruption")
    assert found / 200 >= 0.8 and wrong / 200 <= 0.08, (found, wrong)


def test_a_pilot_says_so_and_how_many_seeds_it_would_take() -> None:
    plan = _plan()
    rows = primary_tests(study(2, {"corruption": 20.0}, np.random.default_rng(3)), plan, BASELINES)
    assert all(not r["significant"] for r in rows)  # 4 blocks: the smallest p is 1/8
    note = pilot_note(rows, plan, n_models=2)
    assert note.startswith("A pilot: with 2 seeds (4 blocks) no primary test can reach p < 0.05 after Holm over 5 tests")
    assert "corruption" in note and "seeds" in note
    assert pilot_note(primary_tests(study(6, {}, np.random.default_rng(3)), plan, BASELINES), plan, 2) is None
    # a tweak that applies to one model has half the blocks: the note names it instead of calling the study a pilot
    df = study(6, {}, np.random.default_rng(3))
    df = df[~((df.factor == "steps") & (df.model == "cvae"))]
    note = pilot_note(primary_tests(df, plan, BASELINES), plan, 2)
    assert note.startswith("Too few blocks for 1 of the 5 primary tests (steps: at most 6 blocks")
    assert blocks_needed(1.0, 2.0, 0.01) >= math.ceil(math.log2(2 / 0.01))


def test_the_negative_control_is_read_out_loud() -> None:
    plan = _plan()
    ok = primary_tests(study(6, {"corruption": 20.0}, np.random.default_rng(4)), plan, BASELINES)
    assert control_note(ok).startswith("The negative control (placebo) came out not significant")
    bad = primary_tests(study(6, {"placebo": 30.0}, np.random.default_rng(4)), plan, BASELINES)
    assert control_note(bad).startswith("Not trustworthy: the negative control (placebo) came out significant")


def test_one_answer_compares_like_with_like() -> None:
    """A huge model harm (DiffAugment-like) against a data harm and a data gain against a model gain: the
    answer compares harm with harm and gain with gain, and says one thing."""
    plan = _plan()
    rng = np.random.default_rng(5)
    # data harms more than any model tweak: "data"
    rows = primary_tests(study(6, {"corruption": 30.0, "capacity": 3.0}, rng), plan, BASELINES)
    a = answer(rows, plan)
    assert a.verdict == "data" and a.sentence.startswith("Yes: the data mattered more")
    assert [c["what"] for c in a.comparisons] == ["harm"] and a.comparisons[0]["data_factor"] == "corruption"
    # the model harms far more than the data: "model"
    rows = primary_tests(study(6, {"corruption": 3.0, "capacity": 40.0}, rng), plan, BASELINES)
    assert answer(rows, plan).verdict == "model"
    # comparable harms: no clear difference
    rows = primary_tests(study(6, {"corruption": 10.0, "capacity": 10.0}, rng), plan, BASELINES)
    assert answer(rows, plan).verdict == "no clear difference"
    # no model tweak in the study: nothing to compare
    only_data = plan_for(["size", "corruption"], KINDS)
    rows = primary_tests(study(6, {"corruption": 30.0}, rng), only_data, BASELINES)
    assert answer(rows, only_data).verdict == "n/a"


def test_the_plan_round_trips_and_names_its_rules() -> None:
    plan = _plan()
    assert AnalysisPlan.from_dict(plan.to_dict()) == plan
    text = " ".join(plan.methods())
    assert "Holm" in text and "sign-flip" in text and "5 tests" in text and "descriptive" in text.lower()
    with pytest.raises(ValueError):
        plan_for(["size"], KINDS, alpha=1.5)


def test_a_model_change_nobody_would_keep_is_set_aside_from_the_harms_not_from_the_tests() -> None:
    """A DiffAugment-like tweak that quadruples FID is tested and shown, but the answer compares the data's
    largest harm with the largest harm of a model change someone might keep; without the rule (a plan that
    did not declare it) the broken tweak decides the answer."""
    plan = _plan()
    rows = primary_tests(study(6, {"corruption": 30.0, "steps": 8.0, "capacity": 150.0}, np.random.default_rng(8)),
                         plan, BASELINES)
    cap = next(r for r in rows if r["factor"] == "capacity")
    assert cap["broken"] and cap["significant"] and not next(r for r in rows if r["factor"] == "steps")["broken"]
    a = answer(rows, plan)
    harm = next(c for c in a.comparisons if c["what"] == "harm")
    assert harm["model_factor"] == "steps" and harm["data_factor"] == "corruption" and a.verdict == "data"
    assert any(d.startswith("Set aside from the comparison of harms: capacity") for d in a.details)
    assert any("beyond 2x" in line for line in plan.methods())
    undeclared = dataclasses.replace(plan, broken_ratio=None)
    rows = primary_tests(study(6, {"corruption": 30.0, "steps": 8.0, "capacity": 150.0}, np.random.default_rng(8)),
                         undeclared, BASELINES)
    assert answer(rows, undeclared).verdict == "model"


def test_cleaning_is_tested_against_the_dirty_set_and_counts_as_the_datas_gain() -> None:
    """'cleaned' is compared with 'dirty' at the same level and seed (the recovery), so cleaning that recovers
    25 of a 30-point loss is a significant gain, which the answer weighs against the model's largest gain."""
    rng = np.random.default_rng(3)
    rows = []
    for s in range(6):
        for m in ("cgan", "cvae"):
            block = 60 + 5 * rng.normal()
            arms = {"baseline": 0.0, "dirty": 30.0, "cleaned": 5.0, "steps": -10.0}
            for f, shift in arms.items():
                rows.append({"factor": f, "level": {"baseline": math.nan, "steps": 2.0}.get(f, 0.4), "model": m,
                             "seed": s, "fid": block + shift + rng.normal()})
    df = pd.DataFrame(rows)
    kinds = {"dirty": "data", "cleaned": "data", "steps": "model"}
    plan = plan_for(["dirty", "cleaned", "steps"], kinds, references={"cleaned": "dirty"})
    assert plan.references == {"cleaned": "dirty"} and AnalysisPlan.from_dict(plan.to_dict()) == plan
    prim = {r["factor"]: r for r in primary_tests(df, plan, {"dirty": 0.0, "cleaned": 0.0, "steps": 1.0})}
    c = prim["cleaned"]
    assert c["reference"] == "dirty" and c["direction"] == "better" and c["effect"] == pytest.approx(-25, abs=2)
    assert c["baseline_mean"] == pytest.approx(prim["dirty"]["arm_mean"])  # the dirty arms stand in
    gain = next(x for x in answer(list(prim.values()), plan).comparisons if x["what"] == "gain")
    assert gain["data_factor"] == "cleaned" and gain["model_factor"] == "steps" and gain["winner"] == "data"
    # a plan without 'dirty' keeps the shared baseline as the reference
    alone = plan_for(["cleaned", "steps"], kinds, references={"cleaned": "dirty"})
    assert alone.references == {}


def test_a_gain_by_copying_is_not_the_models_gain_in_the_answer() -> None:
    """The caller marks gains that come with copying (`copying`); the answer then compares the data's gain with
    the largest gain of a model change that is not copying, and says which it set aside."""
    plan = _plan()
    rows = primary_tests(study(6, {"corruption": 30.0, "steps": -12.0, "capacity": -25.0}, np.random.default_rng(9)),
                         plan, BASELINES)
    rows = [dict(r, effect=-abs(r["effect"])) if r["factor"] == "size" else r for r in rows]  # a data gain
    gain = next(c for c in answer(rows, plan).comparisons if c["what"] == "gain")
    assert gain["model_factor"] == "capacity"
    rows = [dict(r, copying=r["factor"] == "capacity") for r in rows]
    a = answer(rows, plan)
    assert next(c for c in a.comparisons if c["what"] == "gain")["model_factor"] == "steps"
    assert any(d.startswith("Set aside from the comparison of gains: capacity") for d in a.details)
