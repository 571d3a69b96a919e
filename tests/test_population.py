"""generative.population: a fused member equals its solo run (gradients, data order, noise), NaN
isolation, bitwise resume of a population, export to ordinary run folders, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import datacheck
import generative
from datacheck.errors import UserError
from generative.fused import fuse
from generative.nets import Discriminator, Generator
from generative.population import Member, fused_model, group_key, member_bytes, train_population
from generative.trainer import IndexSampler, build_for


@pytest.fixture(scope="module")
def digits() -> datacheck.Dataset:
    return datacheck.load("digits")


def _sets(digits: datacheck.Dataset) -> list[datacheck.Dataset]:
    # three members with different training sets (sizes differ, so epochs end at different steps)
    return [digits.subset(np.arange(0, 300)), digits.subset(np.arange(300, 700)), digits.subset(np.arange(100, 250))]


def _solo_grads(name: str, data: datacheck.Dataset, seed: int, opts: dict) -> dict:
    """Gradients each optimizer sees at its first step of a solo run (a pre-step hook records them)."""
    m = build_for(name, data, seed=seed, config=generative.MODELS.get(name).make_config(opts))
    rec: dict = {}
    names = {id(p): (n, k) for n, net in m.nets.items() for k, p in net.named_parameters()}
    for oname, opt in m.optimizers.items():
        def hook(o, _a, _k, oname=oname):
            rec.setdefault(oname, {names[id(p)]: p.grad.clone() for g in o.param_groups for p in g["params"]
                                   if p.grad is not None})
        opt.register_step_pre_hook(hook)
    sampler = IndexSampler(len(data), torch.Generator().manual_seed(seed))
    idx = sampler.next(64 * m.batches_per_step)
    x = m.to_float(torch.from_numpy(data.images))[idx]
    m._step(x, torch.from_numpy(data.labels)[idx], torch.Generator().manual_seed(seed + 1))
    return rec


def _fused_grads(name: str, datas: list, seeds: list[int], opts: dict) -> dict:
    cfg = generative.MODELS.get(name).make_config(opts)
    models = [build_for(name, d, config=cfg, seed=s) for d, s in zip(datas, seeds)]
    fm = fused_model(models, torch.device("cpu"))
    rec: dict = {}
    for oname, opt in fm.opts.items():
        step = opt.step

        def wrapped(oname=oname, opt=opt, step=step):
            rec.setdefault(oname, {nk: p.grad.clone() for nk, p in zip(fm.opt_keys[oname], opt.params)})
            step()
        opt.step = wrapped
    b = 64 * models[0].batches_per_step
    picks = [IndexSampler(len(d), torch.Generator().manual_seed(s)).next(b) for d, s in zip(datas, seeds)]
    x = torch.stack([models[0].to_float(torch.from_numpy(d.images))[p] for d, p in zip(datas, picks)], dim=1)
    y = torch.stack([torch.from_numpy(d.labels)[p] for d, p in zip(datas, picks)])
    fm.step(x, y, [torch.Generator().manual_seed(s + 1) for s in seeds])
    return rec


@pytest.mark.parametrize("name,opts", [
    ("dcgan", {}),
    ("sngan", {"augment": "color,translation,cutout"}),
    ("cgan", {"d_steps": 2}),
    ("vae", {}),
    ("cvae", {"beta": 0.5}),
])
def test_first_step_gradients_of_each_member_equal_its_solo_run(name: str, opts: dict, digits) -> None:
    datas, seeds = _sets(digits), [0, 5, 9]
    fused = _fused_grads(name, datas, seeds, opts)
    n_checked = n_zero = 0
    for m, (d, s) in enumerate(zip(datas, seeds)):
        for oname, grads in _solo_grads(name, d, s, opts).items():
            assert set(grads) == set(fused[oname])
            for key, g in grads.items():
                n_zero += int(g.abs().max() == 0)
                torch.testing.assert_close(fused[oname][key][m], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()))
                n_checked += 1
    assert n_checked >= 3 * 8
    # real gradients, not untouched parameters (a hinge-loss D's head bias has exactly 0 at init)
    assert n_zero <= 3


def test_fused_networks_equal_solo_networks_forward_and_running_stats() -> None:
    torch.manual_seed(0)
    gens = [Generator((3, 16, 16), 8, 16, 5, norm="bn") for _ in range(3)]
    dis = [Discriminator((3, 16, 16), 16, 1, 5, spectral_norm=True) for _ in range(3)]
    fg, fd = fuse(gens), fuse(dis)
    z, y = torch.randn(3, 6, 8), torch.randint(0, 5, (3, 6))
    x = torch.randn(6, 3, 3, 16, 16)
    for _ in range(2):  # twice: running stats and spectral-norm u/v carry over
        out_g, out_d = fg(z, y), fd(x, y)
        ref_g = torch.stack([g(z[m], y[m]) for m, g in enumerate(gens)], dim=1)
        ref_d = torch.stack([d(x[:, m], y[m]) for m, d in enumerate(dis)])
        torch.testing.assert_close(out_g, ref_g, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out_d, ref_d, rtol=1e-4, atol=1e-5)
    for m in range(3):
        for k, v in fg.member_state(m).items():
            torch.testing.assert_close(v, gens[m].state_dict()[k].detach(), rtol=1e-4, atol=1e-6)
        for k, v in fd.member_state(m).items():
            torch.testing.assert_close(v, dis[m].state_dict()[k].detach(), rtol=1e-4, atol=1e-6)


def test_members_draw_the_solo_data_order_and_noise_and_export_ordinary_runs(digits, tmp_path: Path) -> None:
    datas = _sets(digits)
    # per-member hyper-parameters (learning rates, betas, EMA decay) and step counts
    opts = [{}, {"lr_g": 1e-4, "betas": (0.5, 0.99)}, {"lr_d": 4e-4, "ema": 0.99}]
    members = [Member(d, tmp_path / f"m{i}", seed=s, steps=st, options=o) for i, (d, s, st, o) in
               enumerate(zip(datas, [0, 5, 9], [12, 7, 12], opts))]
    res = train_population("cgan", members, batch_size=32, log_every=5, checkpoint_every=0)
    assert [r.status for r in res] == ["finished"] * 3 and [r.steps for r in res] == [12, 7, 12]
    for i, (d, s) in enumerate(zip(datas, [0, 5, 9])):
        out = tmp_path / f"m{i}"
        solo = generative.train(model="cgan", data=d, out=tmp_path / f"solo{i}", steps=members[i].steps,
                                batch_size=32, seed=s, checkpoint_every=0, log_every=5, **opts[i])
        a = torch.load(out / "checkpoint.pt", weights_only=True)
        b = torch.load(solo.path / "checkpoint.pt", weights_only=True)
        # the data order and noise streams are bitwise the solo run's
        assert torch.equal(a["sampler"]["perm"], b["sampler"]["perm"]) and a["sampler"]["pos"] == b["sampler"]["pos"]
        assert torch.equal(a["sampler"]["generator"], b["sampler"]["generator"])
        assert torch.equal(a["rng"]["noise"], b["rng"]["noise"])
        assert a["step"] == b["step"] and a["model_config"] == b["model_config"]
        # the weights agree to float rounding after a few steps
        for part in (a["model"]["nets"]["G"], a["model"]["nets"]["D"], a["model"]["ema"]):
            ref = (b["model"]["nets"]["G"] if part is a["model"]["nets"]["G"] else
                   b["model"]["nets"]["D"] if part is a["model"]["nets"]["D"] else b["model"]["ema"])
            for k, v in ref.items():
                torch.testing.assert_close(part[k], v, rtol=1e-3, atol=1e-4)
        # the exported optimizer state is torch.optim.Adam's, with the member's own hyper-parameters
        for name in ("G", "D"):
            sa, sb = a["model"]["optim"][name], b["model"]["optim"][name]
            assert sa["param_groups"][0]["lr"] == sb["param_groups"][0]["lr"]
            assert tuple(sa["param_groups"][0]["betas"]) == tuple(sb["param_groups"][0]["betas"])
            for j, st in sb["state"].items():
                assert float(sa["state"][j]["step"]) == float(st["step"])
                torch.testing.assert_close(sa["state"][j]["exp_avg"], st["exp_avg"], rtol=1e-3, atol=1e-6)
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["status"] == "finished" and cfg["trained"]["fused"] and cfg["steps_done"] == members[i].steps
        logs = [json.loads(l) for l in (out / "train.jsonl").read_text().splitlines()]
        solo_logs = [json.loads(l) for l in (solo.path / "train.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logs] == [r["step"] for r in solo_logs]
        assert logs[-1]["loss_d"] == pytest.approx(solo_logs[-1]["loss_d"], rel=1e-3)
        assert (out / "samples.png").stat().st_size > 0
        # an exported member is an ordinary run: load, sample, and resume with the solo trainer
        model = generative.load(out)
        imgs = model.sample(20, generator=torch.Generator().manual_seed(1))
        assert imgs.shape == (20, 1, 8, 8) and imgs.dtype == np.uint8
        more = generative.train(model="cgan", data=d, out=out, steps=members[i].steps + 3, resume=True)
        assert more.steps == members[i].steps + 3


def test_a_diverging_member_is_stopped_and_the_others_go_on_unchanged(digits, tmp_path: Path) -> None:
    datas = _sets(digits)

    def run(out: Path, poison: bool) -> list:
        members = [Member(d, out / f"m{i}", seed=i, steps=10) for i, d in enumerate(datas)]
        if poison:
            # member 1's lr is so large its weights blow up to inf/NaN within a few steps
            members[1] = Member(datas[1], out / "m1", seed=1, steps=10, options={"lr": 1e30})
        return train_population("vae", members, batch_size=32, log_every=2, checkpoint_every=0)

    clean, bad = run(tmp_path / "a", False), run(tmp_path / "b", True)
    assert [r.status for r in bad] == ["finished", "failed", "finished"]
    assert "non-finite loss" in bad[1].error
    cfg = json.loads((tmp_path / "b" / "m1" / "config.json").read_text())
    assert cfg["status"] == "failed" and "non-finite" in cfg["error"]
    assert not (tmp_path / "b" / "m1" / "checkpoint.pt").exists()
    assert any(json.loads(l).get("event") == "non_finite_loss"
               for l in (tmp_path / "b" / "m1" / "train.jsonl").read_text().splitlines())
    for i in (0, 2):
        a = torch.load(tmp_path / "a" / f"m{i}" / "checkpoint.pt", weights_only=True)["model"]["nets"]
        b = torch.load(tmp_path / "b" / f"m{i}" / "checkpoint.pt", weights_only=True)["model"]["nets"]
        for net in a:
            for k in a[net]:
                assert torch.isfinite(b[net][k].float()).all()
                torch.testing.assert_close(b[net][k], a[net][k], rtol=1e-5, atol=1e-7)


def test_population_resumes_bitwise_after_an_interruption(digits, tmp_path: Path) -> None:
    datas = _sets(digits)

    def members(root: Path) -> list[Member]:
        return [Member(d, root / f"m{i}", seed=i, steps=st, options={"augment": "translation"})
                for i, (d, st) in enumerate(zip(datas, [9, 5, 9]))]

    full = train_population("sngan", members(tmp_path / "full"), batch_size=16, log_every=2, checkpoint_every=3)

    class Kill(Exception):
        pass

    def die(step: int) -> None:
        if step == 7:  # after the checkpoint at 6, with member 1 already exported at 5
            raise Kill

    state = tmp_path / "part" / "population.pt"
    with pytest.raises(Kill):
        train_population("sngan", members(tmp_path / "part"), batch_size=16, log_every=2, checkpoint_every=3,
                         state=state, on_step=die)
    assert state.exists() and (tmp_path / "part" / "m1" / "checkpoint.pt").exists()
    assert not (tmp_path / "part" / "m0" / "checkpoint.pt").exists()
    resumed = train_population("sngan", members(tmp_path / "part"), batch_size=16, log_every=2,
                               checkpoint_every=3, state=state)
    assert [r.status for r in resumed] == [r.status for r in full] == ["finished"] * 3
    assert not state.exists()
    for i in range(3):
        a = torch.load(tmp_path / "full" / f"m{i}" / "checkpoint.pt", weights_only=True)
        b = torch.load(tmp_path / "part" / f"m{i}" / "checkpoint.pt", weights_only=True)
        for part in ("model", "sampler"):
            flat_a, flat_b = _flatten(a[part]), _flatten(b[part])
            assert flat_a.keys() == flat_b.keys() and len(flat_a) >= (20 if part == "model" else 2)
            diff = [k for k in flat_a if not torch.equal(flat_a[k], flat_b[k])]
            assert not diff, diff[:5]
        assert torch.equal(a["rng"]["noise"], b["rng"]["noise"]) and a["sampler"]["pos"] == b["sampler"]["pos"]
        la = (tmp_path / "full" / f"m{i}" / "train.jsonl").read_text().splitlines()
        lb = (tmp_path / "part" / f"m{i}" / "train.jsonl").read_text().splitlines()
        assert [json.loads(l)["loss_d"] for l in la] == [json.loads(l)["loss_d"] for l in lb]
    # a state file of another population is refused with one line
    other = tmp_path / "other.pt"
    with pytest.raises(Kill):
        train_population("sngan", members(tmp_path / "o"), batch_size=16, checkpoint_every=3, state=other,
                         on_step=die)
    with pytest.raises(UserError, match="another population"):
        train_population("sngan", members(tmp_path / "o")[:2], batch_size=16, checkpoint_every=3, state=other)


def _flatten(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}/{i}"))
    return out


def test_members_that_cannot_share_a_group_get_one_line_errors(digits, tmp_path: Path) -> None:
    d = digits.subset(np.arange(200))
    with pytest.raises(UserError, match="z_dim"):
        train_population("dcgan", [Member(d, tmp_path / "a"), Member(d, tmp_path / "b", options={"z_dim": 8})])
    rgb = datacheck.Dataset(np.zeros((50, 3, 8, 8), np.uint8), np.zeros(50, np.int64), [str(i) for i in range(50)])
    with pytest.raises(UserError, match=r"shape \(3, 8, 8\).*\(1, 8, 8\)"):
        train_population("dcgan", [Member(d, tmp_path / "a"), Member(rgb, tmp_path / "b")])
    with pytest.raises(UserError, match="at least one member"):
        train_population("dcgan", [])
    # hyper-parameters that change no shape may differ; widths may not
    assert group_key("dcgan", {"lr_g": 1e-3}) == group_key("dcgan", {"lr_g": 5e-4, "ema": 0.99})
    assert group_key("dcgan", {"g_width": 8}) != group_key("dcgan", {})
    assert group_key("vae", {"ema": 0.0}) != group_key("vae", {"ema": 0.9})


def test_member_memory_estimate_grows_with_size_and_batch() -> None:
    small = member_bytes("cgan", (1, 8, 8), 10, 64)
    assert member_bytes("cgan", (3, 32, 32), 10, 64) > 4 * small
    assert member_bytes("cgan", (1, 8, 8), 10, 128) > small > 0


class _Kill(BaseException):
    """A kill: not an Exception, so nothing on the way turns it into a result (as SIGKILL would not)."""


def _kill_points() -> list[tuple[str, int]]:
    # members end at steps 5, 7 and 9 (checkpoints every 3): after every step, right after each
    # member's export (before the checkpoint that drops it), and inside each export
    return [("step", k) for k in range(1, 10)] + [("member", k) for k in range(3)] + [("export", k) for k in range(3)]


def test_population_resumes_from_any_kill_point_with_mixed_step_counts(digits, tmp_path: Path, monkeypatch) -> None:
    """Killed anywhere (between steps, between two members' ends, during an export), a population
    resumes from its checkpoint, trains no member to its end twice, and ends bitwise equal to an
    uninterrupted run (same machine)."""
    import generative.population as population

    datas = _sets(digits)
    steps = [9, 5, 7]

    def members(root: Path) -> list[Member]:
        return [Member(d, root / f"m{i}", seed=i, steps=st) for i, (d, st) in enumerate(zip(datas, steps))]

    kw = dict(batch_size=16, log_every=2, checkpoint_every=3)
    full = train_population("dcgan", members(tmp_path / "full"), **kw)
    assert [r.steps for r in full] == steps
    real_grid = population.save_sample_grid
    for kind, k in _kill_points():
        root = tmp_path / f"{kind}{k}"
        state = root / "population.pt"
        executed: list[int] = []

        def on_step(step: int) -> None:
            executed.append(step)
            if kind == "step" and step == k:
                raise _Kill

        def on_member(r) -> None:
            if kind == "member" and r.index == k:
                raise _Kill

        def grid(model, out, seed):
            if kind == "export" and out == Path(members(root)[k].out):
                raise _Kill  # the checkpoint is saved, the sample grid and config.json are not
            real_grid(model, out, seed)

        monkeypatch.setattr(population, "save_sample_grid", grid)
        with pytest.raises(_Kill):
            train_population("dcgan", members(root), state=state, on_step=on_step, on_member=on_member, **kw)
        monkeypatch.setattr(population, "save_sample_grid", real_grid)
        killed_step = k if kind == "step" else steps[k]  # a member's export runs inside its last step
        assert state.exists() == (killed_step >= 3), (kind, k)  # the first checkpoint is at step 3
        again: list[int] = []
        resumed = train_population("dcgan", members(root), state=state, on_step=again.append, **kw)
        assert [r.status for r in resumed] == ["finished"] * 3 and not state.exists()
        # it resumed at the last checkpoint, and every member's end writes one: a member that had reached
        # its last step before the kill is exported again (idempotent) but not trained again
        last_ckpt = max(s for s in range(killed_step + 1) if s % 3 == 0 or s in steps)
        first = again[0] if again else max(steps) + 1
        assert first == last_ckpt + 1, (kind, k, first, last_ckpt)
        assert all(first > s for s in steps if s <= killed_step), (kind, k, first)
        for i in range(3):
            a = torch.load(tmp_path / "full" / f"m{i}" / "checkpoint.pt", weights_only=True)
            b = torch.load(root / f"m{i}" / "checkpoint.pt", weights_only=True)
            flat_a, flat_b = _flatten(a["model"]), _flatten(b["model"])
            assert flat_a.keys() == flat_b.keys() and len(flat_a) >= 20
            assert not [n for n in flat_a if not torch.equal(flat_a[n], flat_b[n])], (kind, k, i)
            assert a["step"] == b["step"] == steps[i]
            la = [json.loads(line) for line in (tmp_path / "full" / f"m{i}" / "train.jsonl").read_text().splitlines()]
            lb = [json.loads(line) for line in (root / f"m{i}" / "train.jsonl").read_text().splitlines()]
            assert [(r["step"], r.get("loss_d")) for r in la] == [(r["step"], r.get("loss_d")) for r in lb]
            assert (root / f"m{i}" / "samples.png").exists()
            assert json.loads((root / f"m{i}" / "config.json").read_text())["status"] == "finished"


def test_a_kept_population_checkpoint_returns_the_results_without_training(digits, tmp_path: Path) -> None:
    datas = _sets(digits)[:2]
    members = [Member(d, tmp_path / f"m{i}", seed=i, steps=st) for i, (d, st) in enumerate(zip(datas, [4, 6]))]
    state = tmp_path / "population.pt"
    first = train_population("vae", members, batch_size=16, checkpoint_every=3, state=state, keep_state=True)
    assert state.exists() and [r.steps for r in first] == [4, 6]
    calls: list[int] = []
    again = train_population("vae", members, batch_size=16, checkpoint_every=3, state=state, keep_state=True,
                             on_step=calls.append)
    assert calls == [] and [(r.status, r.steps, r.path) for r in again] == [(r.status, r.steps, r.path) for r in first]
