"""generative: smoke runs, exact resume, NaN guard, checkpoints (tiny CPU runs on digits)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import datacheck
import generative
from datacheck.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits() -> datacheck.Dataset:
    return datacheck.load("digits").subset(np.arange(300))


def _state_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's model state (networks, EMA, optimizers), flattened."""
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}/{i}", v)

    walk("model", ck["model"])
    walk("sampler", ck["sampler"])
    walk("noise", ck["rng"]["noise"])
    assert ck["step"] > 0
    return out


def _assert_same_state(a: Path, b: Path) -> None:
    sa, sb = _state_tensors(a), _state_tensors(b)
    assert sa.keys() == sb.keys()
    assert len(sa) > 20
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not diff, f"tensors differ after resume: {diff[:5]}"


@pytest.mark.parametrize("name", generative.MODELS.names())
def test_two_step_smoke_run_writes_artifacts_and_samples(name: str, digits, tmp_path: Path) -> None:
    run = generative.train(model=name, data=digits, out=tmp_path / name, steps=2, batch_size=16, log_every=1)
    for f in ("config.json", "train.jsonl", "checkpoint.pt", "samples.png"):
        assert (tmp_path / name / f).stat().st_size > 0, f
    cfg = json.loads((tmp_path / name / "config.json").read_text())
    assert cfg["model"] == name and cfg["data"]["fingerprint"] == digits.fingerprint
    assert cfg["train"]["steps"] == 2 and cfg["status"] == "finished"
    recs = [json.loads(l) for l in (tmp_path / name / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and all(np.isfinite(r["seconds"]) for r in recs)
    model = generative.load(tmp_path / name)
    imgs = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert imgs.dtype == np.uint8 and imgs.shape == (5, 1, 8, 8)
    # The loaded model samples exactly what the trained one does (EMA weights included).
    np.testing.assert_array_equal(imgs, run.model.sample(5, generator=torch.Generator().manual_seed(1)))
    assert generative.default_steps(name) == generative.MODELS.get(name).default_steps > 0


@pytest.mark.parametrize("name,opts", [
    ("dcgan", {"augment": "translation,cutout,color", "ema": 0.99}),
    ("cgan", {"d_steps": 2}),
    ("cvae", {}),
])
def test_resume_ends_bitwise_equal_to_a_straight_run(name: str, opts: dict, digits, tmp_path: Path) -> None:
    kw = dict(model=name, data=digits, batch_size=32, seed=3, checkpoint_every=4, **opts)
    generative.train(out=tmp_path / "straight", steps=10, **kw)
    generative.train(out=tmp_path / "split", steps=4, **kw)
    # Disturb the global RNGs between the two halves: resume must restore them itself.
    torch.manual_seed(999); np.random.seed(999)
    generative.train(out=tmp_path / "split", steps=10, resume=True, **kw)
    _assert_same_state(tmp_path / "straight", tmp_path / "split")
    # The log holds each step once, as if never interrupted.
    steps = [json.loads(l)["step"] for l in (tmp_path / "split" / "train.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_resume_after_sigkill_matches_a_straight_run(digits, tmp_path: Path) -> None:
    data = tmp_path / "d.npz"
    digits.save(data)
    args = ["--model", "vae", "--data", str(data), "--steps", "80", "--batch-size", "16",
            "--checkpoint-every", "5", "--seed", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "generative", "train", *args]
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "killed")], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ck.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step_killed = torch.load(ck, weights_only=True)["step"]
    assert 0 < step_killed < 80, "the run should have been killed before it finished"
    # Resume and the straight run happen in this process, on one thread like the killed one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kw = dict(model="vae", data=data, steps=80, batch_size=16, checkpoint_every=5, seed=1)
        generative.train(out=tmp_path / "killed", resume=True, **kw)
        generative.train(out=tmp_path / "straight", **kw)
    finally:
        torch.set_num_threads(threads)
    _assert_same_state(tmp_path / "straight", tmp_path / "killed")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(digits, tmp_path: Path, monkeypatch) -> None:
    real_step = generative.VAE._step
    calls = {"n": 0}

    def poisoned(self, x, y, g):
        calls["n"] += 1
        losses = real_step(self, x, y, g)
        if calls["n"] == 7:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(generative.VAE, "_step", poisoned)
    with pytest.raises(generative.NonFiniteLossError, match=r"non-finite loss at step 7 .*step 5\)"):
        generative.train(model="vae", data=digits, out=tmp_path / "r", steps=20, batch_size=16, checkpoint_every=5)
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["step"] == 5
    events = [json.loads(l) for l in (tmp_path / "r" / "train.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "non_finite_loss"


def test_huge_learning_rate_fails_with_one_line_cli_error(digits, tmp_path: Path, capsys) -> None:
    data = tmp_path / "d.npz"
    digits.save(data)
    from generative.cli import main

    rc = main(["train", "--model", "vae", "--data", str(data), "--out", str(tmp_path / "r"), "--steps", "50",
               "--batch-size", "16", "--no-progress", "--set", "lr=1e30"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "non-finite loss" in err


def test_checkpoint_loads_weights_only_and_rejects_other_files(digits, tmp_path: Path) -> None:
    generative.train(model="sngan", data=digits, out=tmp_path / "r", steps=1, batch_size=8)
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ck["format"] == "generative-checkpoint" and ck["step"] == 1
    assert isinstance(ck["rng"]["noise"], torch.Tensor) and "global" not in ck["rng"]  # see the RNG test
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="is not a generative checkpoint"):
        generative.load(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(UserError, match="is not a generative checkpoint"):
        generative.load(other)


def test_options_are_checked(digits, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unknown dcgan model option lr\b.*allowed: .*lr_g"):
        generative.train(model="dcgan", data=digits, out=tmp_path / "a", steps=1, lr=1e-3)
    with pytest.raises(UserError, match="unknown model 'gan'; expected one of"):
        generative.train(model="gan", data=digits, out=tmp_path / "b", steps=1)
    unlabeled = digits.replace(labels=np.full(len(digits), -1), class_names=())
    with pytest.raises(UserError, match="needs labeled data"):
        generative.train(model="cgan", data=unlabeled, out=tmp_path / "c", steps=1)
    generative.train(model="dcgan", data=digits, out=tmp_path / "d", steps=1, batch_size=8)
    with pytest.raises(UserError, match="already holds a run"):
        generative.train(model="dcgan", data=digits, out=tmp_path / "d", steps=2, batch_size=8)
    with pytest.raises(UserError, match="cannot change model options"):
        generative.train(model="dcgan", data=digits, out=tmp_path / "d", steps=2, resume=True, lr_g=1.0)
    generative.train(model="dcgan", data=digits, out=tmp_path / "d", steps=3, resume=True)
    with pytest.raises(UserError, match="already at step 3; --steps must be at least"):
        generative.train(model="dcgan", data=digits, out=tmp_path / "d", steps=2, resume=True)
    with pytest.raises(UserError, match="resume needs the run's batch_size=8, got 16"):
        generative.train(model="dcgan", data=digits, out=tmp_path / "d", steps=4, resume=True, batch_size=16)


def test_estimate_seconds_per_step_is_a_small_positive_number() -> None:
    s = generative.estimate_seconds_per_step("dcgan", (1, 8, 8), batch_size=16, steps=3)
    assert 0 < s < 5


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 28, 28), (3, 64, 64), (1, 12, 20)])
@pytest.mark.parametrize("name", ["cgan", "cvae"])
def test_models_size_themselves_for_8_to_64_px_and_1_or_3_channels(name: str, shape: tuple) -> None:
    # Narrow nets keep the test cheap; the sizing (blocks per resolution) is what is tested.
    model = generative.build_model(name, shape, n_classes=4, class_names=("a", "b", "c", "d"), g_width=4, d_width=4)
    c, h, w = shape
    g = torch.Generator().manual_seed(0)
    x = model.to_float(torch.randint(0, 256, (4, c, h, w), dtype=torch.uint8, generator=g))
    losses = model.train_step(x, torch.tensor([0, 1, 2, 3]), g)
    assert all(np.isfinite(v) for v in losses.values())
    imgs = model.sample(3, generator=g, labels=2)
    assert imgs.shape == (3, c, h, w) and imgs.dtype == np.uint8


def test_partially_labeled_data_trains_conditional_models_on_the_labeled_part(digits, tmp_path: Path) -> None:
    labels = digits.labels.copy()
    labels[::3] = -1
    run = generative.train(model="cvae", data=digits.replace(labels=labels), out=tmp_path / "r", steps=1, batch_size=8)
    assert run.config["data"]["n"] == int((labels >= 0).sum())
    generative.train(model="vae", data=digits, out=tmp_path / "v", steps=1, batch_size=8)
    with pytest.raises(UserError, match="holds a 'vae' run, not 'dcgan'"):
        generative.train(model="dcgan", data=digits, out=tmp_path / "v", steps=2, resume=True)


def test_collapsing_discriminator_loss_is_warned_once(digits, tmp_path: Path, monkeypatch, caplog) -> None:
    real_step = generative.GAN._step

    def winning_d(self, x, y, g):
        losses = real_step(self, x, y, g)
        return {"loss_d": losses["loss_d"] * 0 + 1e-5, "loss_g": losses["loss_g"]}

    monkeypatch.setattr(generative.GAN, "_step", winning_d)
    with caplog.at_level("WARNING", logger="generative.trainer"):
        generative.train(model="dcgan", data=digits, out=tmp_path / "r", steps=130, batch_size=4, checkpoint_every=0)
    warnings = [r for r in caplog.records if "discriminator loss collapsed" in r.getMessage()]
    assert len(warnings) == 1 and "at step 100" in warnings[0].getMessage()
    events = [json.loads(l) for l in (tmp_path / "r" / "train.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "warning"] == [100]


@pytest.mark.parametrize("groups,channels_last", [(1, False), (1, True), (2, False), (3, True)])
@pytest.mark.parametrize("shape", [(2, 5, 32, 4, 4), (3, 7, 6, 7, 7), (1, 3, 2, 4, 6)])
def test_upsample_conv_equals_interpolate_then_conv_forward_and_backward(shape: tuple, groups: int,
                                                                         channels_last: bool) -> None:
    """The generator's fused nearest-x2 upsample + 3x3 conv (sub-pixel form) against the stock
    formulation: same outputs and the same gradients for input, weight and bias, also grouped (the
    fused population's form) and on channels-last inputs (which once failed in a view)."""
    from torch.nn import functional as F

    from generative.nets import upsample_conv

    b, c, o, h, w = shape
    c, o = c * groups, o * groups
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    wt = torch.randn(o, c // groups, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(o, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(b, o, 2 * h, 2 * w, generator=g, dtype=torch.float64)  # upstream gradient
    ours = upsample_conv(x, wt, bias, groups=groups)
    grads = torch.autograd.grad(ours, (x, wt, bias), up)
    ref = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), wt, bias, padding=1, groups=groups)
    ref_grads = torch.autograd.grad(ref, (x, wt, bias), up)
    assert ours.shape == ref.shape == (b, o, 2 * h, 2 * w)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_generator_fused_upsample_matches_the_stock_layers(monkeypatch) -> None:
    """Large enough blocks take the fused path (counted), small ones the stock one; outputs agree."""
    from generative import nets

    calls: list[tuple[int, ...]] = []
    fused_fn = nets.upsample_conv
    monkeypatch.setattr(nets, "upsample_conv", lambda x, w, b=None: (calls.append(tuple(x.shape[1:])), fused_fn(x, w, b))[1])
    for shape, width, n_fused in [((1, 16, 16), 32, 2), ((3, 28, 28), 32, 2), ((1, 8, 8), 16, 0)]:
        torch.manual_seed(0)
        net = nets.Generator(shape, z_dim=16, width=width, n_classes=10).eval()
        z, y = torch.randn(5, 16), torch.arange(5)
        calls.clear()
        fused = net(z, y)
        assert len(calls) == n_fused, (shape, calls)
        net.fused_upsample = False
        torch.testing.assert_close(fused, net(z, y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["dcgan", "vae"])
def test_training_and_resume_leave_the_global_rngs_alone(name: str, digits, tmp_path: Path) -> None:
    """The trainer draws everything from its own generators: a run, and a run resumed from its first
    checkpoint, leave torch's, numpy's and python's global RNG states exactly as they were, and the
    resumed run ends bitwise where the uninterrupted one does."""
    import random

    def states():
        return torch.get_rng_state().clone(), repr(np.random.get_state()), random.getstate()

    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(5)
    before = states()
    generative.train(model=name, data=digits, out=tmp_path / "full", steps=6, batch_size=16, checkpoint_every=3)
    after = states()
    assert torch.equal(before[0], after[0]) and before[1:] == after[1:]
    generative.train(model=name, data=digits, out=tmp_path / "part", steps=3, batch_size=16, checkpoint_every=3)
    torch.manual_seed(999)  # a different process state before the resume must not matter
    generative.train(model=name, data=digits, out=tmp_path / "part", steps=6, batch_size=16, checkpoint_every=3,
                     resume=True)
    _assert_same_state(tmp_path / "full", tmp_path / "part")
