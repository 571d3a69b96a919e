"""The one training loop for every model.

The whole dataset sits on the device as one float tensor and is batched by index from epoch
permutations drawn with a seeded ``torch.Generator`` (no DataLoader). A second generator, on the
device, feeds the model's noise. Both generators, the sampler position, the networks, the EMA copy
and the optimizers go into each checkpoint, so a resumed run ends with bitwise the same weights as an
uninterrupted one (on CPU). Every random draw of a run comes from those two generators (initial
weights from a forked, seeded RNG), so the trainer neither uses nor changes the global RNGs (torch,
numpy, python): it leaves them as the caller had them, and checkpoints do not hold them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datacheck.dataset import Dataset
from datacheck.errors import UserError
from datacheck.io import dumps, refuse_inside_source, write_json, write_text

from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .grid import save_grid
from .models import MODELS, GenerativeModel

log = logging.getLogger(__name__)

COLLAPSE_WINDOW = 100
COLLAPSE_LEVEL = 1e-3  # mean D loss below this over the window: D wins outright


class NonFiniteLossError(UserError):
    """A loss became NaN or infinite; the run stopped and the last good checkpoint was kept."""


@dataclass
class Run:
    """A finished (or resumed-and-finished) training run."""

    path: Path
    model: GenerativeModel
    model_name: str
    steps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def sample(self, n: int, generator: torch.Generator | None = None, labels: Any = None) -> np.ndarray:
        """uint8 (N, C, H, W) samples from the trained model (EMA weights when enabled)."""
        return self.model.sample(n, generator=generator, labels=labels)

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME


class IndexSampler:
    """Epoch permutations of ``range(n)`` from a seeded CPU generator; batches may span epochs."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.g = n, generator
        self.perm = torch.randperm(n, generator=generator)
        self.pos = 0

    def next(self, b: int) -> torch.Tensor:
        parts = []
        while b > 0:
            if self.pos >= self.n:
                self.perm = torch.randperm(self.n, generator=self.g)
                self.pos = 0
            take = min(b, self.n - self.pos)
            parts.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            b -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state(self) -> dict[str, Any]:
        return {"perm": self.perm.clone(), "pos": int(self.pos), "generator": self.g.get_state()}

    def load(self, st: dict[str, Any]) -> None:
        self.perm, self.pos = st["perm"].clone(), int(st["pos"])
        self.g.set_state(st["generator"])


def data_info(data: Dataset) -> dict[str, Any]:
    return {
        "source": data.source, "fingerprint": data.fingerprint, "n": len(data),
        "shape": list(data.shape), "n_classes": data.n_classes, "class_names": list(data.class_names),
    }


def _resolve_flag(value: str, device: torch.device) -> bool:
    return value == "on" or (value == "auto" and device.type == "cuda")


def _prepare(model_name: str, data: Dataset, conditional: bool) -> Dataset:
    if len(data) == 0:
        raise UserError("the dataset is empty; nothing to train on")
    if conditional:
        if not data.labeled or data.n_classes == 0:
            raise UserError(f"model {model_name!r} is class-conditional and needs labeled data; {data.source or 'this dataset'} has no labels")
        known = data.labels >= 0
        if not known.all():
            log.warning("%s: training on the %d labeled items only (%d unlabeled left out)",
                        model_name, int(known.sum()), int((~known).sum()))
            data = data.subset(known)
    return data


def build_for(model_name: str, data: Dataset, options: dict[str, Any] | None = None,
              config: Any = None, seed: int = 0) -> GenerativeModel:
    """A freshly initialised model for ``data``, its weights drawn from ``seed`` (the global
    torch RNG is left as it was)."""
    spec = MODELS.get(model_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build(data.shape, data.n_classes, data.class_names, options, config)


class LossTracker:
    """One run's loss bookkeeping between log records: running sums, the non-finite check and the
    collapse warning (a discriminator loss near 0 over ``COLLAPSE_WINDOW`` steps)."""

    def __init__(self, model_name: str, collapse_key: str | None) -> None:
        self.model_name, self.collapse_key = model_name, collapse_key
        self.names: list[str] = []
        self.sums: dict[str, float] = {}
        self.count = 0
        self.recent: deque[float] = deque(maxlen=COLLAPSE_WINDOW)
        self.warned = False

    def add(self, step: int, vals: list[float]) -> dict[str, Any] | None:
        """Record step ``step``'s losses (in ``names`` order). Returns an event record for the log, or
        None: ``non_finite_loss`` (the values are not added; the run must stop) or a collapse ``warning``."""
        if not all(math.isfinite(v) for v in vals):
            bad = ", ".join(f"{k}={v}" for k, v in zip(self.names, vals) if not math.isfinite(v))
            return {"step": step, "event": "non_finite_loss", "losses": bad}
        for k, v in zip(self.names, vals):
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        if self.collapse_key in self.names:
            self.recent.append(vals[self.names.index(self.collapse_key)])
            mean = sum(self.recent) / len(self.recent)
            if not self.warned and len(self.recent) == COLLAPSE_WINDOW and mean < COLLAPSE_LEVEL:
                self.warned = True
                msg = (f"{self.model_name}: discriminator loss collapsed to {mean:.2e} over the last "
                       f"{COLLAPSE_WINDOW} steps at step {step}; the generator may have stopped learning")
                log.warning(msg)
                return {"step": step, "event": "warning", "message": msg}
        return None

    def record(self, step: int, seconds: float, steps_per_s: float) -> dict[str, Any]:
        """The log record of the steps since the last one (mean losses); resets the sums."""
        rec = {"step": step, **{k: v / max(self.count, 1) for k, v in self.sums.items()},
               "seconds": round(seconds, 4), "steps_per_s": round(steps_per_s, 2)}
        self.sums.clear()
        self.count = 0
        return rec

    def state(self) -> dict[str, Any]:
        return {"names": list(self.names), "sums": dict(self.sums), "count": self.count,
                "recent": list(self.recent), "warned": self.warned}

    def load(self, st: dict[str, Any]) -> None:
        self.names, self.sums, self.count = list(st["names"]), dict(st["sums"]), int(st["count"])
        self.recent.clear()
        self.recent.extend(st["recent"])
        self.warned = bool(st["warned"])


def run_config(model_name: str, model: GenerativeModel, tcfg: TrainConfig, data: Dataset,
               resolved: dict[str, Any], steps_done: int) -> dict[str, Any]:
    """RUN/config.json of a run in progress (``status`` "running")."""
    return {
        "model": model_name,
        "description": MODELS.get(model_name).description,
        "model_config": model.config_dict(),
        "train": dataclasses.asdict(tcfg),
        "data": data_info(data),
        "params": model.n_params(),
        "resolved": resolved,
        "status": "running",
        "steps_done": steps_done,
    }


def checkpoint_payload(step: int, model_name: str, model: GenerativeModel, tcfg: TrainConfig, data: Dataset,
                       sampler: IndexSampler, noise_gen: torch.Generator) -> dict[str, Any]:
    """What RUN/checkpoint.pt holds at ``step`` (see `generative.checkpoint`)."""
    return {
        "step": step, "model_name": model_name, "model_config": model.config_dict(),
        "train_config": dataclasses.asdict(tcfg), "data": data_info(data),
        "model": model.state_dict(),
        "sampler": sampler.state(),
        "rng": {"noise": noise_gen.get_state()},
    }


def save_sample_grid(model: GenerativeModel, out: Path, seed: int) -> None:
    """RUN/samples.png: 64 samples (conditional models: 10 per class, one class per column)."""
    n = 10 * model.n_classes if model.conditional else 64
    ncol = model.n_classes if model.conditional else 8
    labels = np.tile(np.arange(model.n_classes), n // model.n_classes) if model.conditional else None
    imgs = model.sample(n, generator=torch.Generator().manual_seed(seed + 12345), labels=labels)
    save_grid(imgs, out / "samples.png", ncol=ncol)


@contextlib.contextmanager
def cpu_threads(threads: int):
    """Set torch's CPU thread count for the duration; 0 leaves torch's setting (all cores).

    There is no size rule: an earlier one forced one thread for images up to 16 px, but measured on the
    quiet 2-core machine (benchmarks/RESULTS.md) two threads are faster at every size (dcgan 1.3x at
    8 px, 1.9x at 16 px). One thread only won while other processes kept the cores busy; parallel runs
    (a study's workers) set their own count."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(before)


def train(model_name: str, data: Dataset, out: str | Path, tcfg: TrainConfig,
          options: dict[str, Any] | None = None, resume: bool = False,
          checkpoint: dict[str, Any] | None = None) -> Run:
    """Train ``model_name`` on ``data``, writing RUN/config.json, train.jsonl, checkpoint.pt and
    samples.png under ``out``. See `generative.train` for the options. ``checkpoint``: the
    contents of RUN/checkpoint.pt when the caller has already read it (resume), so it is not read twice."""
    with cpu_threads(tcfg.threads):
        return _train(model_name, data, out, tcfg, options, resume, checkpoint)


def _train(model_name: str, data: Dataset, out: str | Path, tcfg: TrainConfig,
           options: dict[str, Any] | None, resume: bool, loaded: dict[str, Any] | None = None) -> Run:
    out = Path(out)
    refuse_inside_source(out, data.root, "--out", "a run never writes into its training data, pick a place outside it")
    options = dict(options or {})
    spec = MODELS.get(model_name)
    ckpt_path = out / CHECKPOINT_NAME
    ck: dict[str, Any] | None = None
    if ckpt_path.exists():
        if not resume:
            raise UserError(f"{out} already holds a run ({CHECKPOINT_NAME}); pass --resume to continue it or choose another --out")
        ck = loaded if loaded is not None else load_checkpoint(ckpt_path)
    elif resume:
        log.info("%s has no checkpoint yet; starting a new run", out)

    if ck is not None:
        if ck["model_name"] != model_name:
            raise UserError(f"{out} holds a {ck['model_name']!r} run, not {model_name!r}")
        cfg = spec.make_config(ck["model_config"])
    else:
        cfg = spec.make_config(options)
    data = _prepare(model_name, data, bool(cfg.conditional))
    if ck is not None:
        if ck["data"]["fingerprint"] != data.fingerprint:
            raise UserError(f"{out} was trained on other data (fingerprint {ck['data']['fingerprint'][:12]}, "
                            f"now {data.fingerprint[:12]}); resume needs the same data")
        if options:
            new = spec.make_config({**ck["model_config"], **options})
            if new != cfg:
                diff = sorted(k for k in options if getattr(new, k) != getattr(cfg, k))
                raise UserError(f"resume cannot change model options ({', '.join(diff)}); the run used "
                                + ", ".join(f"{k}={getattr(cfg, k)!r}" for k in diff))
        old = ck["train_config"]
        for k in ("batch_size", "seed"):
            if getattr(tcfg, k) != old[k]:
                raise UserError(f"resume needs the run's {k}={old[k]}, got {getattr(tcfg, k)}")
    steps = tcfg.steps if tcfg.steps is not None else spec.default_steps
    if ck is not None and steps < int(ck["step"]):
        raise UserError(f"{out} is already at step {ck['step']}; --steps must be at least that to resume")
    tcfg = dataclasses.replace(tcfg, steps=steps)

    device = torch.device(tcfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    amp = _resolve_flag(tcfg.amp, device)
    channels_last = _resolve_flag(tcfg.channels_last, device)

    model = build_for(model_name, data, config=cfg, seed=tcfg.seed)
    model.to(device, channels_last=channels_last)
    batch_gen = torch.Generator().manual_seed(tcfg.seed)
    noise_gen = torch.Generator(device=device).manual_seed(tcfg.seed + 1)
    sampler = IndexSampler(len(data), batch_gen)
    start = 0
    if ck is not None:
        model.load_state_dict(ck["model"])
        sampler.load(ck["sampler"])
        noise_gen.set_state(ck["rng"]["noise"])
        start = int(ck["step"])
    if tcfg.compile:
        model.compile()

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x_all = model.to_float(torch.from_numpy(data.images).to(device)).contiguous(memory_format=fmt)
    y_all = torch.from_numpy(data.labels).to(device)

    out.mkdir(parents=True, exist_ok=True)
    config = run_config(model_name, model, tcfg, data,
                        {"amp_bf16": amp, "channels_last": channels_last, "torch": torch.__version__,
                         "threads": torch.get_num_threads()}, start)
    write_json(out / "config.json", config)
    log_path = out / "train.jsonl"
    history = _trim_log(log_path, start) if ck is not None else []
    if ck is None:
        write_text(log_path, "")

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt_path, checkpoint_payload(step, model_name, model, tcfg, data, sampler, noise_gen))

    def grid(step: int) -> None:
        save_sample_grid(model, out, tcfg.seed)

    from tqdm import tqdm

    bar = tqdm(total=steps, initial=start, disable=not tcfg.progress, file=sys.stderr,
               desc=f"{model_name}", dynamic_ncols=True, leave=False)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp
                else contextlib.nullcontext())
    b = tcfg.batch_size * model.batches_per_step
    tracker = LossTracker(model_name, model.collapse_key())
    t0 = time.perf_counter()
    t_log = t0
    last_ckpt = start if ck is not None else -1
    step = start
    fh = open(log_path, "a", encoding="utf-8")
    try:
        pending: list[torch.Tensor] = []  # per-step losses not yet read back (no sync per step)

        def flush(step: int) -> None:
            """Read back the pending losses: NaN guard, collapse warning, running sums."""
            if not pending:
                return
            rows = torch.stack(pending).tolist()
            first = step - len(rows) + 1
            pending.clear()
            for i, vals in enumerate(rows):
                event = tracker.add(first + i, vals)
                if event is None:
                    continue
                fh.write(dumps(event) + "\n")
                if event["event"] == "non_finite_loss":
                    keep = (f"the last good checkpoint is {ckpt_path} (step {last_ckpt})" if last_ckpt >= 0
                            else "no checkpoint was written yet")
                    raise NonFiniteLossError(
                        f"{model_name}: non-finite loss at step {first + i} ({event['losses']}); training stopped, "
                        f"{keep}; try a lower learning rate")

        while step < steps:
            idx = sampler.next(b).to(device, non_blocking=True)
            with autocast:
                losses_t = model._step(x_all[idx], y_all[idx], noise_gen)
            model.update_ema()
            if not tracker.names:
                tracker.names = list(losses_t)
            pending.append(torch.stack([v.float() for v in losses_t.values()]))  # detached already
            step += 1
            bar.update(1)
            do_log = step % tcfg.log_every == 0 or step == steps
            do_ckpt = bool(tcfg.checkpoint_every) and step % tcfg.checkpoint_every == 0 and step < steps
            do_grid = bool(tcfg.sample_every) and step % tcfg.sample_every == 0 and step < steps
            # Losses are read back at the boundaries only (on a GPU a read-back stalls the queue;
            # on CPU the per-step Python bookkeeping costs more than the tiny steps it follows).
            # The NaN guard still names the exact step, and a checkpoint is written only after
            # every loss before it was read back and found finite.
            if do_log or do_ckpt or do_grid:
                flush(step)
            if do_log:
                now = time.perf_counter()
                count = tracker.count
                means = {k: f"{v / max(count, 1):.3f}" for k, v in tracker.sums.items()}
                rec = tracker.record(step, now - t0, count / max(now - t_log, 1e-9))
                fh.write(dumps(rec) + "\n")
                fh.flush()
                history.append(rec)
                bar.set_postfix(means, refresh=False)
                t_log = now
            if do_ckpt:
                checkpoint(step)
                last_ckpt = step
            if do_grid:
                grid(step)
    finally:
        fh.close()
        bar.close()
    seconds = time.perf_counter() - t0
    if last_ckpt != steps:
        checkpoint(steps)
    grid(steps)
    config.update(status="finished", steps_done=steps, seconds_this_session=round(seconds, 3))
    write_json(out / "config.json", config)
    return Run(path=out, model=model, model_name=model_name, steps=steps, seconds=seconds,
               history=history, config=config)


def _trim_log(path: Path, step: int) -> list[dict[str, Any]]:
    """Drop log records after ``step`` (written by a run killed after its last checkpoint)."""
    if not path.exists():
        return []
    kept, lines = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if rec.get("step", 0) <= step:
            lines.append(line)
            if "event" not in rec:
                kept.append(rec)
    write_text(path, "".join(l + "\n" for l in lines))
    return kept


def load_model(run: str | Path, device: str = "cpu") -> GenerativeModel:
    """The model of a run folder (or checkpoint file), weights and EMA restored, on ``device``."""
    ck = load_checkpoint(run)
    spec = MODELS.get(ck["model_name"])
    d = ck["data"]
    cfg = spec.make_config(ck["model_config"])
    model = spec.build(tuple(d["shape"]), int(d["n_classes"]), tuple(d["class_names"]), config=cfg)
    model.load_state_dict(ck["model"], optimizers=False)
    model.steps_trained = int(ck["step"])  # type: ignore[attr-defined]
    return model.to(device)


def estimate_seconds_per_step(model: str, shape: tuple[int, int, int] = (1, 8, 8), n_classes: int = 10,
                              batch_size: int = 64, device: str = "cpu", steps: int = 10,
                              threads: int = 0, **options: Any) -> float:
    """Median wall seconds of one training step of ``model`` on random data of ``shape`` (C, H, W),
    measured over ``steps`` steps after 3 warm-up steps. Multiply by the step count for a
    run's training time (sampling and checkpoints excluded). ``threads`` as in TrainConfig."""
    with cpu_threads(threads):
        return _estimate(model, shape, n_classes, batch_size, device, steps, options)


def _estimate(model: str, shape: tuple[int, int, int], n_classes: int, batch_size: int, device: str,
              steps: int, options: dict[str, Any]) -> float:
    spec = MODELS.get(model)
    c, h, w = shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = spec.build(tuple(shape), n_classes, tuple(str(i) for i in range(n_classes)), options)
    dev = torch.device(device)
    m.to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    bb = batch_size * m.batches_per_step
    x = m.to_float(torch.randint(0, 256, (bb, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(dev))
    y = (torch.arange(bb) % max(n_classes, 1)).to(dev)
    times = []
    for i in range(3 + steps):
        t = time.perf_counter()
        m.train_step(x, y, g)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return float(np.median(times))
