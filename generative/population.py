"""Train a population of M runs of one model as one fused job.

Each member has its own training set, seed, step budget and the hyper-parameters that do not change
shapes (learning rates, Adam betas, EMA decay, the VAE's beta). Members share one image pool
(uint8 on the device; each member's set is a list of indices into it), and their networks are fused
(`generative.fused`): one grouped convolution, one batched matmul, one batch norm per layer for
all members, one backward of the summed per-member losses (parameters are disjoint, so each member
gets exactly its own gradient).

What a member sees equals its solo run (`generative.train` with the same data, seed and
options): the same initial weights (built under its seed, then stacked), the same data order (its own
`~generative.trainer.IndexSampler` with its own generator), the same noise, fake labels and
augmentation draws (its own noise generator, drawn in the solo order). Gradients agree with the solo
run's to float rounding (rtol 1e-4, tested); long GAN trajectories then drift apart as any two float
orders do, so final metrics agree within the seed spread, not bitwise.

A member stops when it reaches its own step count: it is exported at once as an ordinary run folder
(config.json, train.jsonl, checkpoint.pt, samples.png; `generative.load`, ``generative sample``
and ``reports evaluate`` read it as if trained alone, and ``generative train --resume`` continues it)
and dropped from the fused tensors. A member whose loss turns NaN or infinite is stopped and reported
(its folder gets config.json with ``status: failed`` and its log); the others go on unchanged, since
no operation mixes members. A population checkpoint (``state``) makes a killed job resume where it
was, bitwise on the same machine (same CPU kind, library versions and thread count).

The checkpoint is the one record of which members have ended: it is written every
``checkpoint_every`` steps and at every step where a member ends, before that member is exported
(the members that end there are listed as ``ending``, and a resume from such a checkpoint exports
them again, which is idempotent, instead of training them again) and once more after the export.
So a kill at any point trains no member to its end twice.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from datacheck.dataset import Dataset
from datacheck.errors import UserError
from datacheck.io import atomic_path, dumps, refuse_inside_source, write_json, write_text

from .augment import apply_params, concat_params, draw, parse_policy
from .checkpoint import CHECKPOINT_NAME, save_checkpoint
from .config import TrainConfig
from .fused import FusedNet, fuse
from .models import MODELS, GenerativeModel
from .trainer import (IndexSampler, LossTracker, _prepare, build_for, checkpoint_payload, cpu_threads,
                      run_config, save_sample_grid)

log = logging.getLogger(__name__)

STATE_FORMAT = "generative-population"
# members per fused group that pay: on a CPU the fused step's gain peaks at 2-8 members per process and
# falls off beyond (32 members at 16-32 px measured 0.7-1.08x solo: the stacked activations leave the
# caches; benchmarks/RESULTS.md); on a GPU, where one small member leaves the device idle, far more pay
MAX_MEMBERS = {"cpu": 8, "cuda": 64}
STATE_VERSION = 1
# model options that may differ between the members of one fused group: they change no tensor shape
# and no operation, only values (everything else must be equal, or the members go to separate groups)
PER_MEMBER = {"gan": ("lr_g", "lr_d", "betas", "ema"), "vae": ("lr", "betas", "ema", "beta")}


@dataclass(frozen=True)
class Member:
    """One run of a population: its training data, its run folder, seed, steps (None: the model's
    default) and model options (those outside ``PER_MEMBER`` must equal the other members')."""

    data: Dataset
    out: str | Path
    seed: int = 0
    steps: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class MemberResult:
    """How one member ended: ``status`` "finished" (``path`` is its run folder) or "failed" (``error``)."""

    index: int
    status: str
    path: Path
    steps: int
    error: str = ""


def group_key(model_name: str, options: Mapping[str, Any] | None = None) -> tuple:
    """Members whose keys are equal can be fused: the model and every option that changes shapes or
    operations (everything but ``PER_MEMBER``; EMA on or off counts, its decay does not)."""
    spec = MODELS.get(model_name)
    cfg = spec.make_config(dict(options or {}))
    per = PER_MEMBER[spec.cls.family]
    fixed = tuple(sorted((k, v) for k, v in dataclasses.asdict(cfg).items() if k not in per))
    return (model_name, fixed, cfg.ema > 0)


# ------------------------------------------------------------------------------ optimizer
class FusedAdam:
    """Adam over stacked (M, ...) parameters with per-member lr and betas (torch.optim.Adam's update
    rule, eps 1e-8, no weight decay). Element-wise, so members never mix; all members step together."""

    def __init__(self, params: list[torch.Tensor], lr: torch.Tensor, beta1: torch.Tensor,
                 beta2: torch.Tensor, eps: float = 1e-8) -> None:
        self.params = params
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps  # (M,) float64 each
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        bc1 = 1.0 - self.beta1 ** self.t
        bc2 = 1.0 - self.beta2 ** self.t
        # per-member coefficients, computed once per step in float64 (as Adam's scalars are)
        coef = {"w1": 1.0 - self.beta1, "b2": self.beta2, "w2": 1.0 - self.beta2,
                "step": self.lr / bc1, "bc2": bc2.sqrt()}
        cache: dict[int, dict[str, torch.Tensor]] = {}
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            c = cache.get(p.dim())
            if c is None:
                shape = (-1,) + (1,) * (p.dim() - 1)
                c = cache[p.dim()] = {k: t.to(p.dtype).view(shape) for k, t in coef.items()}
            g = p.grad
            m.lerp_(g, c["w1"])
            v.mul_(c["b2"]).addcmul_(g * c["w2"], g)
            p.sub_(c["step"] * m / (v.sqrt() / c["bc2"] + self.eps))

    def select(self, keep: torch.Tensor, params: list[torch.Tensor]) -> None:
        self.params = params
        self.exp_avg = [t.index_select(0, keep) for t in self.exp_avg]
        self.exp_avg_sq = [t.index_select(0, keep) for t in self.exp_avg_sq]
        self.lr, self.beta1, self.beta2 = (t.index_select(0, keep.to(t.device)) for t in (self.lr, self.beta1, self.beta2))

    def state(self) -> dict[str, Any]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "t": self.t,
                "lr": self.lr, "beta1": self.beta1, "beta2": self.beta2}

    def load(self, st: Mapping[str, Any]) -> None:
        self.exp_avg = [t.clone() for t in st["exp_avg"]]
        self.exp_avg_sq = [t.clone() for t in st["exp_avg_sq"]]
        self.t = int(st["t"])
        self.lr, self.beta1, self.beta2 = st["lr"].clone(), st["beta1"].clone(), st["beta2"].clone()

    def member_state(self, m: int) -> list[dict[str, torch.Tensor]]:
        """torch.optim.Adam's per-parameter state of member ``m`` (fused/capturable layout: step tensor)."""
        return [{"step": torch.tensor(float(self.t)), "exp_avg": a[m].clone(), "exp_avg_sq": s[m].clone()}
                for a, s in zip(self.exp_avg, self.exp_avg_sq)]


# ------------------------------------------------------------------------------ fused models
class FusedModel:
    """The fused counterpart of a `~generative.models.GenerativeModel`: its networks, EMA and
    optimizers for M members, and one training step that mirrors the solo model's ``_step``."""

    def __init__(self, models: list[GenerativeModel], device: torch.device) -> None:
        t = models[0]
        self.family, self.conditional, self.z_dim = t.family, t.conditional, t.config.z_dim
        self.sampler_name = t.sampler_name
        self.nets: dict[str, FusedNet] = {k: fuse([m.nets[k] for m in models]).to(device) for k in t.nets}
        self.ema: FusedNet | None = None
        if t.ema_net is not None:
            self.ema = fuse([m.ema_net for m in models]).to(device)  # type: ignore[misc]
            self.ema.training = False
            self.ema.requires_grad_(False)
        self.ema_decay = torch.tensor([float(m.config.ema) for m in models], dtype=torch.float64)
        self.ema_updates = 0
        self.device = device
        # optimizer name -> the (net, key) pairs it owns, in the solo optimizer's parameter order
        self.opt_keys: dict[str, list[tuple[str, str]]] = {}
        for oname, opt in t.optimizers.items():
            ids = {id(p): (n, k) for n, net in t.nets.items() for k, p in net.named_parameters()}
            self.opt_keys[oname] = [ids[id(p)] for g in opt.param_groups for p in g["params"]]
        self.opts: dict[str, FusedAdam] = {}
        for oname in self.opt_keys:
            lr = torch.tensor([self._lr(m, oname) for m in models], dtype=torch.float64)
            b1 = torch.tensor([float(m.config.betas[0]) for m in models], dtype=torch.float64)
            b2 = torch.tensor([float(m.config.betas[1]) for m in models], dtype=torch.float64)
            self.opts[oname] = FusedAdam(self._opt_params(oname), lr.to(device), b1.to(device), b2.to(device))

    @staticmethod
    def _lr(m: GenerativeModel, oname: str) -> float:
        cfg = m.config
        return float(cfg.lr if m.family == "vae" else (cfg.lr_g if oname == "G" else cfg.lr_d))

    def _opt_params(self, oname: str) -> list[torch.Tensor]:
        return [self.nets[n].params[k] for n, k in self.opt_keys[oname]]

    @property
    def members(self) -> int:
        return next(iter(self.nets.values())).members

    def step(self, x: torch.Tensor, y: torch.Tensor, gens: Sequence[torch.Generator]) -> dict[str, torch.Tensor]:
        """One update of every member. x: float (B, M, C, H, W) in the model's range; y: (M, B).
        Returns each loss as (M,)."""
        raise NotImplementedError

    def _randn(self, gens: Sequence[torch.Generator], *shape: int) -> torch.Tensor:
        """(M, *shape) normal noise, member m's from its own generator (as its solo run draws it)."""
        return torch.stack([torch.randn(shape, generator=g, device=g.device) for g in gens]).to(self.device)

    @torch.no_grad()
    def update_ema(self) -> None:
        """The solo model's EMA (decay ramping to each member's own), for every member at once."""
        if self.ema is None:
            return
        t = self.ema_updates
        decay = torch.clamp(self.ema_decay, max=(1.0 + t) / (10.0 + t))
        self.ema_updates = t + 1
        src = self.nets[self.sampler_name]
        for k, e in self.ema.params.items():
            e.lerp_(src.params[k].detach(), (1.0 - decay).to(e.device, e.dtype).view((-1,) + (1,) * (e.dim() - 1)))
        for k, b in self.ema.buffers.items():
            b.copy_(src.buffers[k])

    def select(self, keep: list[int]) -> None:
        """Keep only the members at slots ``keep`` (finished and failed members leave)."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        for net in self.nets.values():
            net.select(idx)
        if self.ema is not None:
            self.ema.select(idx)
            self.ema.requires_grad_(False)
        self.ema_decay = self.ema_decay[torch.tensor(keep, dtype=torch.long)]
        for oname, opt in self.opts.items():
            opt.select(idx, self._opt_params(oname))

    def state(self) -> dict[str, Any]:
        return {"nets": {k: n.state() for k, n in self.nets.items()},
                "ema": self.ema.state() if self.ema is not None else None,
                "ema_decay": self.ema_decay, "ema_updates": self.ema_updates,
                "opts": {k: o.state() for k, o in self.opts.items()}}

    def load(self, st: Mapping[str, Any]) -> None:
        for k, n in self.nets.items():
            n.load_state(st["nets"][k])
        if self.ema is not None:
            self.ema.load_state(st["ema"])
            self.ema.requires_grad_(False)
        self.ema_decay = st["ema_decay"].clone()
        self.ema_updates = int(st["ema_updates"])
        for k, o in self.opts.items():
            o.load(st["opts"][k])
            o.params = self._opt_params(k)

    def export_into(self, slot: int, model: GenerativeModel) -> None:
        """Load member ``slot``'s networks, EMA and optimizer state into its solo ``model``."""
        for k, net in self.nets.items():
            model.nets[k].load_state_dict(net.member_state(slot))
        if self.ema is not None and model.ema_net is not None:
            model.ema_net.load_state_dict(self.ema.member_state(slot))
        model.ema_updates = self.ema_updates
        for oname, opt in model.optimizers.items():
            states = self.opts[oname].member_state(slot)
            params = [p for g in opt.param_groups for p in g["params"]]
            opt.state.clear()
            for p, st in zip(params, states):
                opt.state[p] = st


class FusedGAN(FusedModel):
    """Fused `~generative.models.GAN` (BCE or hinge, spectral norm, projection, DiffAugment,
    several D steps per G step): the solo ``GAN._step`` for M members."""

    def __init__(self, models: list[GenerativeModel], device: torch.device) -> None:
        super().__init__(models, device)
        cfg = models[0].config
        self.loss, self.d_steps = cfg.loss, cfg.d_steps
        self.policy = parse_policy(cfg.augment)

    def _aug(self, x: torch.Tensor, gens: Sequence[torch.Generator]) -> torch.Tensor:
        """DiffAugment of (N, M, C, H, W): member m's parameters from its own generator."""
        if not self.policy:
            return x
        n, m, c, h, w = x.shape
        params = concat_params([draw(self.policy, n, h, w, g) for g in gens])
        return apply_params(x.reshape(n * m, c, h, w), params).view(n, m, c, h, w)

    def _d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        if self.loss == "hinge":
            return F.relu(1.0 - real).mean(dim=(1, 2)) + F.relu(1.0 + fake).mean(dim=(1, 2))
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real), reduction="none").mean(dim=(1, 2))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake), reduction="none").mean(dim=(1, 2)))

    def _g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        if self.loss == "hinge":
            return -fake.mean(dim=(1, 2))
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake), reduction="none").mean(dim=(1, 2))

    def step(self, x: torch.Tensor, y: torch.Tensor, gens: Sequence[torch.Generator]) -> dict[str, torch.Tensor]:
        G, D = self.nets["G"], self.nets["D"]
        chunks, ychunks = x.chunk(self.d_steps, dim=0), y.chunk(self.d_steps, dim=1)
        fake = torch.empty(0)
        loss_d = torch.empty(0)
        yr = ychunks[0]
        for i, (xr, yr) in enumerate(zip(chunks, ychunks)):
            last = i == len(chunks) - 1
            b = xr.shape[0]
            z = self._randn(gens, b, self.z_dim)  # (M, b, z)
            yc = yr if self.conditional else None
            with torch.set_grad_enabled(last):
                fake = G(z, yc)  # (b, M, C, H, W)
            both = self._aug(torch.cat([xr, fake.detach().to(xr.dtype)]), gens)
            out = D(both, torch.cat([yr, yr], dim=1) if self.conditional else None).float()  # (M, 2b, 1)
            loss_d = self._d_loss(out[:, :b], out[:, b:])
            self.opts["D"].zero_grad()
            loss_d.sum().backward()  # sum of per-member losses: each member's own gradient
            self.opts["D"].step()
        D.requires_grad_(False)
        out = D(self._aug(fake, gens), yr if self.conditional else None).float()
        loss_g = self._g_loss(out)
        self.opts["G"].zero_grad()
        loss_g.sum().backward()
        self.opts["G"].step()
        D.requires_grad_(True)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}


class FusedVAE(FusedModel):
    """Fused `~generative.models.VAE` (per-member beta): the solo ``VAE._step`` for M members."""

    def __init__(self, models: list[GenerativeModel], device: torch.device) -> None:
        super().__init__(models, device)
        self.beta = torch.tensor([float(m.config.beta) for m in models], dtype=torch.float32, device=device)

    def select(self, keep: list[int]) -> None:
        super().select(keep)
        self.beta = self.beta[torch.tensor(keep, dtype=torch.long, device=self.device)]

    def state(self) -> dict[str, Any]:
        return {**super().state(), "beta": self.beta}

    def load(self, st: Mapping[str, Any]) -> None:
        super().load(st)
        self.beta = st["beta"].clone().to(self.device)

    def step(self, x: torch.Tensor, y: torch.Tensor, gens: Sequence[torch.Generator]) -> dict[str, torch.Tensor]:
        enc, dec = self.nets["enc"], self.nets["dec"]
        yk = y if self.conditional else None
        mu, logvar = enc(x, yk).float().chunk(2, dim=2)  # (M, B, z) each
        logvar = logvar.clamp(-12.0, 8.0)
        n = x.shape[0]
        eps = self._randn(gens, n, mu.shape[2])
        z = mu + eps * torch.exp(0.5 * logvar)
        logits = dec(z.to(x.dtype), yk).float()  # (B, M, C, H, W)
        recon = F.binary_cross_entropy_with_logits(logits, x.float(), reduction="none").sum(dim=(0, 2, 3, 4)) / n
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2)) / n
        loss = recon + self.beta * kl
        opt = self.opts["vae"]
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        return {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach()}


def fused_model(models: list[GenerativeModel], device: torch.device) -> FusedModel:
    return (FusedGAN if models[0].family == "gan" else FusedVAE)(models, device)


# ------------------------------------------------------------------------------ data pool
def _pool(datas: Sequence[Dataset]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One uint8 pool of every distinct image of the members' sets (by content) and each member's
    indices into it: sets that share images (subsets, duplicates of one split) store them once."""
    seen: dict[bytes, int] = {}
    chunks: list[np.ndarray] = []
    index: list[np.ndarray] = []
    for d in datas:
        idx = np.empty(len(d), np.int64)
        imgs = np.ascontiguousarray(d.images)
        for i in range(len(d)):
            key = hashlib.blake2b(imgs[i].tobytes(), digest_size=16).digest()
            j = seen.get(key)
            if j is None:
                j = seen[key] = len(seen)
                chunks.append(imgs[i])
            idx[i] = j
        index.append(idx)
    shape = datas[0].images.shape[1:]
    pool = np.stack(chunks) if chunks else np.zeros((0, *shape), np.uint8)
    return pool, index


def _describe(i: int, m: Member, data: Dataset, steps: int, cfg: Any) -> dict[str, Any]:
    """What a population checkpoint must agree with to resume member ``i``."""
    return {"index": i, "out": str(m.out), "seed": int(m.seed), "steps": int(steps),
            "fingerprint": data.fingerprint, "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str))}


# ------------------------------------------------------------------------------ the loop
def train_population(model_name: str, members: Sequence[Member], *, batch_size: int = 64, device: str = "cpu",
                     log_every: int = 50, checkpoint_every: int = 500, state: str | Path | None = None,
                     threads: int = 0, on_step: Callable[[int], None] | None = None,
                     on_member: Callable[[MemberResult], None] | None = None,
                     keep_state: bool = False, journal: str | Path | None = None) -> list[MemberResult]:
    """Train every member as one fused job; returns one `MemberResult` per member, in order.

    state: a file for the population checkpoint (every ``checkpoint_every`` steps and whenever a member
        ends, atomic). When it exists the job resumes from it (it must describe the same members),
        bitwise on the same machine; members it records as ended are not trained again. It is deleted
        when every member has ended, unless ``keep_state``: then it stays, recording every member's end,
        so a caller that is killed before it has used the members' runs can call again and get the
        results without training (the caller deletes it). None: no population checkpoint.
    journal: a JSON-lines file that gets one line appended per event (``start``, ``resume`` at a step,
        ``ended`` when a member's last step is in the checkpoint, ``exported``, ``failed``), with the time
        and process id: an operator's record of what trained where across kills (never read back).
    on_step(step): called after every fused step (progress; an exception there stops the job, the
        state file keeps the last checkpoint). on_member(result): called as each member ends.
    Members must share the image shape, the class count and every option outside ``PER_MEMBER``
    (see `group_key`); otherwise a one-line UserError names the difference.
    """
    if not members:
        raise UserError("a population needs at least one member")
    with cpu_threads(threads):
        return _train_population(model_name, list(members), batch_size, device, log_every, checkpoint_every,
                                 None if state is None else Path(state), on_step, on_member, keep_state,
                                 None if journal is None else Path(journal))


def _check_members(model_name: str, members: list[Member]) -> tuple[list[Any], list[Dataset], list[int]]:
    spec = MODELS.get(model_name)
    cfgs = [spec.make_config(dict(m.options)) for m in members]
    datas = [_prepare(model_name, m.data, bool(c.conditional)) for m, c in zip(members, cfgs)]
    per = PER_MEMBER[spec.cls.family]
    first = dataclasses.asdict(cfgs[0])
    for i, c in enumerate(cfgs[1:], 1):
        d = dataclasses.asdict(c)
        diff = sorted(k for k in d if k not in per and d[k] != first[k])
        if (c.ema > 0) != (cfgs[0].ema > 0):
            diff.append("ema (on/off)")
        if diff:
            raise UserError(f"member {i} differs from member 0 in {', '.join(diff)}, which changes the networks; "
                            f"members of one fused group may differ only in {', '.join(per)}")
    for i, d in enumerate(datas):
        if d.shape != datas[0].shape:
            raise UserError(f"member {i} has images of shape {tuple(d.shape)}, member 0 {tuple(datas[0].shape)}; "
                            "a fused group needs one image shape")
        if d.n_classes != datas[0].n_classes:
            raise UserError(f"member {i} has {d.n_classes} classes, member 0 {datas[0].n_classes}; "
                            "a fused group needs one class count")
    for m, d in zip(members, datas):
        refuse_inside_source(Path(m.out), d.root, "a member's out",
                             "a run never writes into its training data, pick a place outside it")
    steps = [int(m.steps) if m.steps is not None else spec.default_steps for m in members]
    for i, s in enumerate(steps):
        if s < 1:
            raise UserError(f"member {i}: steps must be >= 1, got {s}")
    return cfgs, datas, steps


def _train_population(model_name: str, members: list[Member], batch_size: int, device_name: str, log_every: int,
                      checkpoint_every: int, state_path: Path | None, on_step: Callable[[int], None] | None,
                      on_member: Callable[[MemberResult], None] | None, keep_state: bool,
                      journal: Path | None) -> list[MemberResult]:
    TrainConfig(batch_size=batch_size, device=device_name, log_every=log_every,
                checkpoint_every=checkpoint_every)  # the solo trainer's checks, one-line errors
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    cfgs, datas, steps = _check_members(model_name, members)
    described = [_describe(i, m, d, s, c) for i, (m, d, s, c) in enumerate(zip(members, datas, steps, cfgs))]
    models = [build_for(model_name, d, config=c, seed=int(m.seed)) for m, d, c in zip(members, datas, cfgs)]
    tcfgs = [TrainConfig(steps=s, batch_size=batch_size, seed=int(m.seed), checkpoint_every=0, sample_every=0,
                         log_every=log_every, device=device_name, amp="off", channels_last="off")
             for m, s in zip(members, steps)]
    fm = fused_model(models, device)
    samplers = [IndexSampler(len(d), torch.Generator().manual_seed(int(m.seed))) for m, d in zip(members, datas)]
    noise = [torch.Generator(device=device).manual_seed(int(m.seed) + 1) for m in members]
    trackers = [LossTracker(model_name, models[0].collapse_key()) for _ in members]
    histories: list[list[dict[str, Any]]] = [[] for _ in members]
    slots = list(range(len(members)))  # slot -> member index, for the members still training
    results: dict[int, MemberResult] = {}
    step = 0
    seconds_before = 0.0

    def note(event: str, **fields: Any) -> None:
        if journal is not None:
            _append_line(journal, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid(), "event": event,
                                   "state": None if state_path is None else state_path.name, **fields})

    resumed_ending: list[int] = []  # members whose last step the checkpoint holds but whose export may be cut
    if state_path is not None and state_path.exists():
        st = _load_state(state_path)
        if st["model_name"] != model_name or st["members"] != described or st["batch_size"] != batch_size:
            raise UserError(f"{state_path} is the checkpoint of another population (other members, data, options "
                            "or batch size); delete it or pass the same members")
        slots, step, seconds_before = list(st["slots"]), int(st["step"]), float(st["seconds"])
        resumed_ending = [int(i) for i in st.get("ending", [])]
        if slots:
            fm.select(slots)
            fm.load(st["fused"])
        for i in slots:
            samplers[i].load(st["samplers"][i])
            noise[i].set_state(st["noise"][i])
            trackers[i].load(st["trackers"][i])
        histories = [list(h) for h in st["histories"]]
        results = {int(k): MemberResult(**v) for k, v in st["results"].items()}
        for r in results.values():
            r.path = Path(r.path)
        log.info("population of %d resumed at step %d (%d members still training)", len(members), step, len(slots))
    note("resume" if step or results else "start", step=step,
         members=[Path(members[i].out).name for i in slots])

    pool_np, index = _pool(datas)
    pool = torch.from_numpy(pool_np).to(device)
    pool_idx = [torch.from_numpy(ix).to(device) for ix in index]
    labels = [torch.from_numpy(d.labels).to(device) for d in datas]
    b = batch_size * models[0].batches_per_step
    t0 = time.perf_counter()
    t_log = t0
    pending: list[torch.Tensor] = []  # (M, L) per step, read back at boundaries only

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - t0

    def save_state(ending: Sequence[int] = ()) -> None:
        """Write the population checkpoint. ``ending``: members (indices, all in ``slots``) that reached
        their last step now and are about to be exported: a resume exports them instead of training."""
        if state_path is None:
            return
        state_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "model_name": model_name, "members": described,
            "batch_size": batch_size, "step": step, "slots": slots, "seconds": elapsed(),
            "ending": list(ending), "fused": fm.state() if slots else None,
            "samplers": {i: samplers[i].state() for i in slots}, "noise": {i: noise[i].get_state() for i in slots},
            "trackers": {i: trackers[i].state() for i in slots}, "histories": histories,
            "results": {i: {**dataclasses.asdict(r), "path": str(r.path)} for i, r in results.items()},
        }
        with atomic_path(state_path, suffix=".pt") as tmp:
            torch.save(payload, tmp)

    def flush() -> list[int]:
        """Read back pending losses for every slot; returns the slots whose loss was not finite."""
        if not pending:
            return []
        rows = torch.stack(pending).tolist()  # (steps, M, L)
        first = step - len(rows) + 1
        pending.clear()
        bad: list[int] = []
        for s, i in enumerate(slots):
            for k, per_slot in enumerate(rows):
                ev = trackers[i].add(first + k, per_slot[s])
                if ev is None:
                    continue
                histories[i].append(ev)
                if ev["event"] == "non_finite_loss":
                    results[i] = MemberResult(i, "failed", Path(members[i].out), first + k,
                                              f"non-finite loss at step {first + k} ({ev['losses']}); "
                                              "try a lower learning rate")
                    bad.append(s)
                    break
        return bad

    def end_member(s: int, i: int) -> None:
        r = results.get(i)
        out = Path(members[i].out)
        out.mkdir(parents=True, exist_ok=True)
        cfg = run_config(model_name, models[i], tcfgs[i], datas[i], _resolved(len(slots), device), step)
        cfg["trained"] = {"fused": True, "members": len(members), "slot": i}
        if r is not None and r.status == "failed":
            cfg.update(status="failed", error=r.error, steps_done=r.steps)
            write_text(out / "train.jsonl", "".join(dumps(h) + "\n" for h in histories[i]))
            write_json(out / "config.json", cfg)
            log.warning("%s member %d (%s) failed: %s", model_name, i, out, r.error)
        else:
            fm.export_into(s, models[i])
            save_checkpoint(out / CHECKPOINT_NAME, checkpoint_payload(step, model_name, models[i], tcfgs[i],
                                                                       datas[i], samplers[i], noise[i]))
            write_text(out / "train.jsonl", "".join(dumps(h) + "\n" for h in histories[i]))
            save_sample_grid(models[i], out, int(members[i].seed))
            cfg.update(status="finished", steps_done=step, seconds_this_session=round(elapsed(), 3))
            write_json(out / "config.json", cfg)
            r = results[i] = MemberResult(i, "finished", out, step)
        if on_member is not None:
            on_member(r)

    def leave(leaving: list[int]) -> None:
        """Export (or record as failed) the members at slots ``leaving`` and drop them from the fused
        tensors. The checkpoint is written first with them as ``ending`` (a kill during an export then
        resumes into the export, not into their training) and again once they are out."""
        nonlocal slots
        save_state(ending=[slots[s] for s in leaving])
        for s in leaving:
            i = slots[s]
            if i not in resumed_ending:
                note("ended", step=step, member=Path(members[i].out).name)
            end_member(s, i)
            r = results[i]
            note("exported" if r.status == "finished" else "failed", step=step, member=Path(members[i].out).name,
                 **({"error": r.error} if r.status != "finished" else {}))
        keep = [s for s in range(len(slots)) if s not in leaving]
        slots = [slots[s] for s in keep]
        if slots:
            fm.select(keep)
        if slots or keep_state:
            save_state()

    if resumed_ending:  # killed while exporting members that had finished training: export them again
        leave([slots.index(i) for i in resumed_ending])
        resumed_ending = []
    while slots:
        pick = [samplers[i].next(b).to(device) for i in slots]  # each member's own data order
        idx = torch.stack([pool_idx[i][p] for i, p in zip(slots, pick)], dim=1)  # (b, M) into the pool
        x = models[0].to_float(pool[idx])  # (b, M, C, H, W); float only here, at the model's edge
        y = torch.stack([labels[i][p] for i, p in zip(slots, pick)])  # (M, b)
        losses = fm.step(x, y, [noise[i] for i in slots])
        fm.update_ema()
        for i in slots:
            if not trackers[i].names:
                trackers[i].names = list(losses)
        pending.append(torch.stack([v.float() for v in losses.values()], dim=1))  # (M, L)
        step += 1
        ending = [s for s, i in enumerate(slots) if steps[i] == step]
        do_log = step % log_every == 0
        do_ckpt = bool(checkpoint_every) and step % checkpoint_every == 0
        if do_log or ending or do_ckpt:
            # losses are read back at boundaries only (a read-back stalls a GPU queue); the NaN check
            # still names the exact step, and no checkpoint is written before it has run
            failed = flush()
            now = time.perf_counter()
            for s, i in enumerate(slots):
                if s not in failed and (do_log or s in ending) and trackers[i].count:
                    rate = trackers[i].count / max(now - t_log, 1e-9)
                    histories[i].append(trackers[i].record(step, elapsed(), rate))
            if do_log:
                t_log = now
            leaving = sorted(set(failed) | set(ending))
            if leaving:
                leave(leaving)  # writes the checkpoint too
            elif do_ckpt:
                save_state()
        if on_step is not None:
            on_step(step)
    if state_path is not None and state_path.exists() and not keep_state:
        state_path.unlink()
    return [results[i] for i in range(len(members))]


def _append_line(path: Path, obj: Mapping[str, Any]) -> None:
    """Append one JSON line with a single write (O_APPEND: lines of concurrent writers do not interleave)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (dumps(obj) + "\n").encode())
    finally:
        os.close(fd)


def _resolved(m: int, device: torch.device) -> dict[str, Any]:
    return {"amp_bf16": False, "channels_last": False, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "fused_members": m, "device": str(device)}


def _load_state(path: Path) -> dict[str, Any]:
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # foreign or cut bytes: torch raises many kinds
        raise UserError(f"{path} is not a population checkpoint ({type(e).__name__}); delete it to start over") from None
    if not isinstance(st, dict) or st.get("format") != STATE_FORMAT or st.get("version") != STATE_VERSION:
        raise UserError(f"{path} is not a population checkpoint (format {STATE_FORMAT!r} version {STATE_VERSION})")
    return st


def member_bytes(model_name: str, shape: tuple[int, int, int], n_classes: int = 0, batch_size: int = 64,
                 options: Mapping[str, Any] | None = None) -> int:
    """Estimated bytes one member adds to a fused group: float32 parameters x 5 (weights, gradients,
    two Adam moments, EMA) plus activations (every layer's output for one step's forward passes,
    x 3 for what backward keeps and the transient gradients), plus its images are not counted (the
    pool is shared). Used by planners to size groups to a memory budget."""
    spec = MODELS.get(model_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = spec.build(tuple(shape), n_classes, tuple(str(k) for k in range(n_classes)), dict(options or {}))
    n_params = sum(p.numel() for net in m.nets.values() for p in net.parameters())
    outs = 0

    def hook(_mod: Any, _inp: Any, out: Any) -> None:
        nonlocal outs
        if isinstance(out, torch.Tensor):
            outs += out.numel()

    handles = [mod.register_forward_hook(hook) for net in m.nets.values() for mod in net.modules()
               if not list(mod.children())]
    c, h, w = shape
    x = torch.zeros(2, c, h, w)
    y = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        if m.family == "gan":
            m.nets["G"](torch.zeros(2, m.config.z_dim), y if m.conditional else None)
            m.nets["D"](x, y if m.conditional else None)
            passes = 3 * m.batches_per_step  # D on real + fake, D again for G, G once
        else:
            m.nets["enc"](x, y if m.conditional else None)
            m.nets["dec"](torch.zeros(2, m.config.z_dim), y if m.conditional else None)
            passes = 1
    for hd in handles:
        hd.remove()
    act = outs / 2 * batch_size * passes * 3
    return int(4 * (5 * n_params + act))
