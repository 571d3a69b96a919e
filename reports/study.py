"""Data-ablation studies: dataset x factors x levels x models x seeds, with resume.

A study directory holds:

- ``study.json``: the resolved `StudyConfig`, the protocol (data fingerprint, reference
  split, extractor, sample count, steps) and the command that made it.
- ``split.csv``: datacheck's duplicate-aware split of the data into ``train`` (the pool every arm's
  training set is made from) and ``test`` (the held-out clean reference every arm is scored against).
- ``arms/<arm_id>/``: ``manifest.json`` (what the factor changed), ``result.json`` (the metrics;
  written last, so its presence means the arm is finished), ``samples.png`` (a sample grid) and
  ``samples.npz`` (the generated images the metrics saw).
- ``results.csv``: one row per finished arm, rewritten atomically after each arm.
- ``report.html``: see `reports.study_html`.

Baseline arms (every factor at its baseline level) are the same training set, so each
model x seed trains ONE baseline arm (``factor = "baseline"``, ``level`` empty) that every factor's
curve shares.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError
from datacheck.io import write_bytes, write_json, write_text

from .factors import apply_factor, get_factor

log = logging.getLogger(__name__)

STUDY_VERSION = 1
CONDITIONAL_MODELS = ("cgan", "cvae")
# the metric columns of `reports evaluate`, in that order; any further scalar the evaluator returns
# is appended after them
METRIC_COLUMNS = ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
                  "modes_covered", "mode_kl", "memorization", "n_real", "n_fake")
ARM_COLUMNS = ("arm_id", "factor", "level", "model", "seed")
EXTRA_COLUMNS = ("label_agreement", "dup_source_share", "dup_placebo_share", "dup_p", "n_train", "steps",
                 "clean_recall", "clean_lost", "trained",
                 "train_seconds", "eval_seconds", "seconds")

DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "size": (0.5, 0.25, 0.1),
    "duplicates": (0.2, 0.5),
    "label_noise": (0.2, 0.5),
    "corruption": (0.2, 0.4),
    "imbalance": (5.0, 20.0),
    "dirty": (0.4,),
    "cleaned": (0.4,),
    # model tweaks
    "capacity": (0.5, 2.0),
    "steps": (0.5, 2.0),
    "augment": (1.0,),
    "ema": (1.0,),
    "dup_dose": (8.0, 32.0, 128.0),
}


# ============================================================================ config
#: Feature extractors a study can score with ("auto": classifier for labeled data, else random).
STUDY_FEATURES = ("auto", "classifier", "random", "pixels")


@dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a study. Unknown keys are an error (`from_dict`).

    Attributes:
        data: the source (``digits``, a folder, a .npz ...), loaded with `datacheck.load`.
        factors: factor names (see `reports.factors`).
        levels: factor -> levels to run besides the shared baseline.
        models: model names of `generative`.
        seeds: training (and factor) seeds; each seed draws its own factor transform too, so the
            seed spread includes the luck of which items were affected.
        steps: training steps per arm for every model (None: ``model_steps`` or the model's default).
        model_steps: model -> training steps, used where ``steps`` is None.
        batch_size: training batch size.
        n_samples: generated samples per arm; the metrics use this many real and fake images.
        reference: fraction of the data held out as the clean reference (datacheck split's test).
        split_seed: seed of that split (fixed across arms: one reference for the whole study).
        features: feature extractor for every metric; ``auto``: ``classifier`` (trained on the
            reference) for labeled data, else ``random``.
        grid: number of samples in each arm's PNG grid.
        factor_options: factor -> keyword options of the factor.
        model_options: model -> keyword options of ``generative.train``.
        device: training device.
        width: network width at full resolution for every model (``g_width`` and ``d_width``, unless
            ``model_options`` sets them): ``auto`` = each model's own size rule (``generative``'s
            auto_width: 2x the image side, 16 to 64); ``cpu`` = sized for a CPU study, width x side <=
            256 and at least 8 (16 at 8 and 16 px; 8 at 32 px, where auto would give 64 and a
            conditional GAN step takes ~20x longer); on a GPU ``cpu`` means ``auto``; a number = that width.
        resolution: the side the study trains and evaluates at: ``full`` = the data's own; ``cpu`` =
            at most 16 px on a CPU (larger images are area-downsampled by a power of 2, reference and pool
            alike, so every metric compares like with like; a 32 px step then costs ~4x less), the
            data's own on a GPU; a number = at most that side.
        threads: torch CPU threads per arm (None: torch's default). One thread per arm is both
            faster for these small models and immune to oversubscription on a shared machine;
            use --workers to occupy more cores.
    """

    data: str = "digits"
    factors: tuple[str, ...] = ("size", "duplicates", "label_noise", "corruption", "imbalance", "dirty", "cleaned")
    levels: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: dict(DEFAULT_LEVELS))
    models: tuple[str, ...] = ("cgan", "cvae")
    seeds: tuple[int, ...] = (0, 1)
    steps: int | None = None
    model_steps: Mapping[str, int] = field(default_factory=dict)
    batch_size: int = 64
    n_samples: int = 500
    reference: float = 0.3
    split_seed: int = 0
    features: str = "auto"
    grid: int = 100
    factor_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    model_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    device: str = "cpu"
    threads: int | None = 1
    width: str | int = "auto"
    resolution: str | int = "full"

    def __post_init__(self) -> None:
        for name in ("factors", "models", "seeds"):
            v = getattr(self, name)
            if isinstance(v, str) or not isinstance(v, Iterable):
                raise UserError(f"study {name} must be a list, got {v!r}")
            object.__setattr__(self, name, tuple(v))
        if not self.factors or not self.models or not self.seeds:
            raise UserError("a study needs at least one factor, one model and one seed")
        for f in self.factors:
            get_factor(f)  # unknown name -> UserError listing the allowed ones
        levels = {}
        for f in self.factors:
            raw = self.levels.get(f, DEFAULT_LEVELS.get(f, ()))
            if isinstance(raw, (int, float)):
                raw = (raw,)
            lv = tuple(float(x) for x in raw)
            if not lv:
                raise UserError(f"no levels given for factor {f!r}")
            for x in lv:
                get_factor(f).check_level(x)
            levels[f] = lv
        for f in self.levels:
            get_factor(f)
        object.__setattr__(self, "levels", levels)
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"seeds must be distinct, got {list(self.seeds)}")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"steps must be >= 1, got {self.steps}")
        object.__setattr__(self, "model_steps", {str(k): int(v) for k, v in dict(self.model_steps).items()})
        if any(v < 1 for v in self.model_steps.values()):
            raise UserError(f"model_steps must be >= 1, got {dict(self.model_steps)}")
        if self.n_samples < 10:
            raise UserError(f"n_samples must be >= 10, got {self.n_samples}")
        if not 0.05 <= self.reference <= 0.6:
            raise UserError(f"reference must be a fraction in [0.05, 0.6], got {self.reference}")
        if self.batch_size < 2:
            raise UserError(f"batch_size must be >= 2, got {self.batch_size}")
        if not (self.device == "cpu" or str(self.device).startswith("cuda")):
            raise UserError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.features not in STUDY_FEATURES:  # inception needs a weights file, which a study does not take
            raise UserError(f"features must be one of {', '.join(STUDY_FEATURES)}, got {self.features!r}")
        object.__setattr__(self, "width", _named_or_int("width", self.width, ("auto", "cpu"), 1, "a positive whole number of channels"))
        object.__setattr__(self, "resolution", _named_or_int("resolution", self.resolution, ("full", "cpu"), 8,
                                                             "a side of at least 8 pixels"))

    def max_side(self) -> int | None:
        """The largest image side the study trains at (None: the data's own; see ``resolution``)."""
        if isinstance(self.resolution, int):
            return self.resolution
        if self.resolution == "full" or str(self.device).startswith("cuda"):
            return None
        return 16

    def widths(self, shape: tuple[int, int, int]) -> int | None:
        """The width every model trains with on images of ``shape`` (C, H, W); None = each model's own
        auto width (see the ``width`` attribute)."""
        if isinstance(self.width, int):
            return self.width
        if self.width == "auto" or str(self.device).startswith("cuda"):
            return None
        from generative.models import auto_width

        side = min(shape[1], shape[2])
        return min(auto_width(shape), max(8, 256 // side))

    def steps_for(self, model: str) -> int | None:
        """Training steps of ``model``'s arms (None: the model's own default)."""
        return self.steps if self.steps is not None else self.model_steps.get(model)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StudyConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown study setting(s): {', '.join(unknown)}; expected: {', '.join(sorted(known))}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["levels"] = {k: list(v) for k, v in self.levels.items()}
        d["factor_options"] = {k: dict(v) for k, v in self.factor_options.items()}
        d["model_options"] = {k: dict(v) for k, v in self.model_options.items()}
        d["model_steps"] = dict(self.model_steps)
        for k in ("factors", "models", "seeds"):
            d[k] = list(d[k])
        return d

    def with_(self, **changes: Any) -> "StudyConfig":
        return StudyConfig.from_dict({**self.to_dict(), **changes})


def _named_or_int(what: str, value: Any, names: tuple[str, ...], minimum: int, number: str) -> str | int:
    """A setting that is one of ``names`` or a whole number >= ``minimum`` (strings of digits accepted)."""
    if isinstance(value, str) and value in names:
        return value
    try:
        n = int(value)
        ok = not isinstance(value, bool) and n == float(value) and n >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"{what} must be {', '.join(repr(x) for x in names)} or {number}, got {value!r}")
    return n


PRESETS: dict[str, dict[str, Any]] = {
    # The main job (scripts/demo.sh): all factors (plus 'dirty', the control for 'cleaned') on digits with
    # the two conditional models, so label noise reaches what they learn (an unconditional model
    # never sees labels, and would show label noise as "no effect"). Sized to finish, evaluation
    # included, within 10 minutes on 2 CPU cores.
    "quick": dict(
        data="digits",
        # the data factors, two model tweaks and the negative control, all under one analysis plan: 10
        # primary tests, so Holm asks p < 0.005, which the exact sign-flip test can give from 9 blocks on;
        # 5 seeds x 2 models = 10 blocks (the smallest possible p is 2/2^10 = 0.002)
        factors=("size", "duplicates", "label_noise", "corruption", "imbalance", "dirty", "cleaned",
                 "capacity", "steps", "placebo"),
        levels={"size": (0.05,), "duplicates": (0.5,), "label_noise": (0.5,),
                "corruption": (0.4,), "imbalance": (10.0,), "dirty": (0.4,), "cleaned": (0.4,),
                "capacity": (0.5,), "steps": (2.0,), "placebo": (1.0,)},
        models=("cgan", "cvae"),
        seeds=(0, 1, 2, 3, 4),
        steps=None,
        model_steps={"cgan": 400, "cvae": 600},
        n_samples=500,
        width="cpu",
        resolution="cpu",
    ),
    # The thesis as a contest: every data factor next to four model tweaks (capacity, steps,
    # DiffAugment, EMA) and the negative control on the same two models and 6 paired seeds: 13 primary
    # tests (Holm asks p < 0.0038) over 12 blocks (the smallest possible p is 2/2^12 = 0.0005). Planned (PRESET_PLANS) for 60 minutes on 2 CPU cores or 10 on one GPU.
    "standard": dict(
        data="digits",
        factors=("size", "duplicates", "dup_dose", "label_noise", "corruption", "imbalance", "dirty", "cleaned",
                 "capacity", "steps", "augment", "ema", "placebo"),
        levels={"size": (0.25, 0.05), "duplicates": (0.5,), "dup_dose": (8.0, 32.0, 128.0), "label_noise": (0.5,),
                "corruption": (0.4,), "imbalance": (10.0,), "dirty": (0.4,), "cleaned": (0.4,),
                "capacity": (0.5, 2.0), "steps": (0.5, 2.0), "augment": (1.0,), "ema": (1.0,), "placebo": (1.0,)},
        models=("cgan", "cvae"),
        seeds=(0, 1, 2, 3, 4, 5),
        steps=None,
        model_steps={"cgan": 400, "cvae": 600},
        n_samples=500,
        width="cpu",
        resolution="cpu",
    ),
    # More levels and seeds, plus the unconditional twins, for a GPU or a cluster (--executor ray).
    "full": dict(
        data="digits",
        factors=("size", "duplicates", "label_noise", "corruption", "imbalance", "dirty", "cleaned"),
        levels={"size": (0.75, 0.5, 0.25, 0.1, 0.05), "duplicates": (0.1, 0.25, 0.5, 0.75),
                "label_noise": (0.1, 0.25, 0.5, 0.75), "corruption": (0.1, 0.2, 0.4, 0.6),
                "imbalance": (3.0, 10.0, 30.0, 100.0), "dirty": (0.2, 0.4, 0.6),
                "cleaned": (0.2, 0.4, 0.6)},
        models=("dcgan", "sngan", "cgan", "vae", "cvae"),
        seeds=(0, 1, 2, 3, 4),
        steps=None,
        n_samples=540,
    ),
}


# what each preset is planned to take (seconds), by device kind; --dry-run compares its estimate with it
PRESET_PLANS: dict[str, dict[str, float]] = {"quick": {"cpu": 600}, "standard": {"cpu": 3600, "cuda": 600}}


def preset(name: str, **overrides: Any) -> StudyConfig:
    """The named preset with ``overrides`` applied (unknown names and keys are errors)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; expected one of: {', '.join(PRESETS)}")
    return StudyConfig.from_dict({**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})


# ============================================================================ arms
def level_str(level: float) -> str:
    return f"{level:g}"


@dataclass(frozen=True)
class Arm:
    """One cell of the grid. ``factor == "baseline"`` is the shared unchanged arm (level None)."""

    factor: str
    level: float | None
    model: str
    seed: int

    @property
    def arm_id(self) -> str:
        lv = "" if self.level is None else f"-{level_str(self.level)}"
        return f"{self.factor}{lv}-{self.model}-s{self.seed}"


def grid(config: StudyConfig) -> list[Arm]:
    """Every arm of the study, seed-major (a partial study has whole seeds), baseline first. A factor
    runs only on the models it can change (``label_noise`` on the conditional ones, ``augment`` on GANs,
    ``ema`` on models that keep one): elsewhere its arm would be the baseline again."""
    arms: list[Arm] = []
    for seed in config.seeds:
        for model in config.models:
            arms.append(Arm("baseline", None, model, seed))
            opts = dict(config.model_options.get(model, {}))
            for f in config.factors:
                fac = get_factor(f)
                if not fac.applies_to(model, opts):
                    continue
                for lv in config.levels[f]:
                    if fac.is_baseline(lv):
                        continue  # the shared baseline arm covers it
                    arms.append(Arm(f, lv, model, seed))
    return arms


# ============================================================================ data + protocol
@dataclass
class StudyData:
    """The pool every arm's training set is made from, and the held-out clean reference."""

    full: Dataset
    pool: Dataset
    reference: Dataset
    split: Any  # the datacheck split DataFrame
    original_shape: tuple[int, int, int] | None = None  # before the study's resolution setting


def prepare_data(config: StudyConfig) -> StudyData:
    """Load the data and split it with datacheck's duplicate-aware, stratified split: ``test`` is the
    reference, ``train`` the pool. No near-duplicate group straddles the two."""
    import datacheck

    loaded = datacheck.load(config.data)
    full = reduce_resolution(loaded, config.max_side())
    if len(full) < 50:
        raise UserError(f"{config.data!r} has {len(full)} images; a study needs at least 50")
    table = _split(full, config.reference, config.split_seed)
    by_id = dict(zip(table["id"].astype(str), table["split"].astype(str)))
    part = np.array([by_id.get(i, "train") for i in full.ids])
    ref_idx = np.flatnonzero(part == "test")
    pool_idx = np.flatnonzero(part != "test")
    data = StudyData(full, full.subset(pool_idx), full.subset(ref_idx), table, tuple(loaded.shape))
    check_fits(config, data)
    return data


def reduce_resolution(ds: Dataset, max_side: int | None) -> Dataset:
    """``ds`` area-downsampled by the smallest power of 2 that brings both sides to at most
    ``max_side`` (each output pixel the rounded mean of an f x f block; exact and deterministic), or
    ``ds`` itself when it already fits. The source name records the reduction."""
    if max_side is None:
        return ds
    _, h, w = ds.shape
    f = 1
    while max(h, w) // f > max_side and h % (2 * f) == 0 and w % (2 * f) == 0:
        f *= 2
    if f == 1:
        return ds
    n, c = len(ds), ds.shape[0]
    blocks = ds.images.reshape(n, c, h // f, f, w // f, f).astype(np.float64)
    small = np.rint(blocks.mean(axis=(3, 5))).astype(np.uint8)
    log.info("study images reduced from %dx%d to %dx%d (resolution setting)", h, w, h // f, w // f)
    return ds.replace(images=small, source=f"{ds.source} (downsampled x{f} to {h // f}x{w // f})")


def check_fits(config: StudyConfig, data: StudyData) -> None:
    """Refuse, with one line, a study the data cannot support (labels needed but absent)."""
    if data.full.labeled:
        return
    cond = [m for m in config.models if m in CONDITIONAL_MODELS]
    lab = [f for f in config.factors if get_factor(f).needs_labels]
    if cond or lab:
        what = ", ".join([f"model {m}" for m in cond] + [f"factor {f}" for f in lab])
        raise UserError(f"{config.data!r} has no labels, but {what} need(s) them; "
                        f"use e.g. --models dcgan,vae --factors size,duplicates,corruption,dirty,cleaned")
    if config.features == "classifier":
        raise UserError(f"{config.data!r} has no labels to train the classifier extractor on; use another --features")


def resolve_features(config: StudyConfig, data: StudyData) -> StudyConfig:
    """``features="auto"`` made concrete: the classifier for labeled data, else the random CNN."""
    if config.features != "auto":
        return config
    return config.with_(features="classifier" if data.reference.labeled else "random")


def _split(ds: Dataset, test: float, seed: int):
    from datacheck.splitting import split

    stratify = "label" if ds.labeled else None
    return split(ds, val=0.0, test=test, seed=seed, stratify=stratify)


def protocol(config: StudyConfig, data: StudyData) -> dict[str, Any]:
    """What must be equal for two arms' numbers to be comparable; a study directory refuses arms
    made under a different protocol."""
    return {
        "study_version": STUDY_VERSION,
        "data": config.data,
        "data_fingerprint": data.full.fingerprint,
        "reference_fingerprint": data.reference.fingerprint,
        "pool_fingerprint": data.pool.fingerprint,
        "reference": config.reference,
        "split_seed": config.split_seed,
        "features": config.features,
        "n_samples": config.n_samples,
        "steps": {m: config.steps_for(m) for m in sorted(config.models)},
        "batch_size": config.batch_size,
        "factor_options": {k: dict(v) for k, v in config.factor_options.items()},
        "model_options": {k: dict(v) for k, v in config.model_options.items()},
        "device": config.device,
        "widths": {m: model_options(config, m, data.pool).get("g_width") for m in sorted(config.models)},
        "shape": list(data.full.shape),
    }


def arm_training(config: StudyConfig, arm: Arm, data: Dataset) -> tuple[dict[str, Any], int]:
    """The model options and training steps of ``arm``: the study's for its model, changed by a model
    tweak factor (capacity, steps, augment, ema) at its level."""
    from . import study_adapters as adapters

    opts = model_options(config, arm.model, data)
    steps = config.steps_for(arm.model) or adapters.default_steps(arm.model)
    if arm.factor == "baseline":
        return opts, int(steps)
    return get_factor(arm.factor).tweak_training(float(arm.level), opts, data.shape, int(steps))


def model_options(config: StudyConfig, model: str, data: Dataset) -> dict[str, Any]:
    """``generative.train`` options of ``model``'s arms: ``config.model_options`` plus the study's width
    (where the user did not set ``g_width`` / ``d_width`` themselves)."""
    opts = dict(config.model_options.get(model, {}))
    w = config.widths(data.shape)
    if w is not None:
        opts.setdefault("g_width", w)
        opts.setdefault("d_width", w)
    return opts


# ============================================================================ one arm
@dataclass(frozen=True)
class ArmTask:
    """Everything a worker needs to run one arm (picklable; no shared filesystem needed)."""

    arm: Arm
    config: StudyConfig

    @property
    def arms(self) -> tuple[Arm, ...]:
        return (self.arm,)

    def run(self, pool: Dataset, reference: Dataset) -> list[dict[str, Any]]:
        """The executors' entry point: a list of arm results (one here; a fused group returns several)."""
        return [run_arm(self, pool, reference)]


def run_arm(task: ArmTask, pool: Dataset, reference: Dataset) -> dict[str, Any]:
    """Make the arm's training set, train, sample, evaluate. Returns a JSON-able dict with
    ``row`` (the results.csv row), ``manifest``, ``metrics`` (the full evaluate dict) and the
    bytes of ``samples_png`` and ``samples_npz``. Writes nothing outside a temp dir, so it runs
    unchanged on a Ray worker."""
    import torch

    cfg = task.config
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_arm(task, pool, reference)
    except Exception as e:  # an arm that diverges or raises is a result, not the end of the study
        log.warning("arm %s failed: %s", task.arm.arm_id, e)
        return failed_result(task.arm, e)
    finally:
        torch.set_num_threads(old_threads)


def failed_result(arm: Arm, error: BaseException | str) -> dict[str, Any]:
    """What the study saves for an arm that failed: its ``result.json`` has ``status: failed`` and the
    reason, and a resume leaves it alone unless asked to retry failed arms."""
    reason = error if isinstance(error, str) else (str(error).strip().splitlines() or [type(error).__name__])[0]
    if not isinstance(error, (str, UserError)):
        reason = f"{type(error).__name__}: {reason}"
    return {"failed": True, "arm_id": arm.arm_id, "arm": dataclasses.asdict(arm), "error": reason}


def _run_arm(task: ArmTask, pool: Dataset, reference: Dataset) -> dict[str, Any]:
    arm, cfg = task.arm, task.config
    t0 = time.perf_counter()
    train_ds, manifest = arm_data(arm, cfg, pool)
    t1 = time.perf_counter()
    from . import study_adapters as adapters

    with tempfile.TemporaryDirectory(prefix="dm-arm-") as tmp:
        opts, steps = arm_training(cfg, arm, pool)
        model = adapters.train_model(arm.model, train_ds, Path(tmp) / "run", steps=steps,
                                     batch_size=cfg.batch_size, seed=arm.seed, device=cfg.device, options=opts)
        t2 = time.perf_counter()
        return arm_result(arm, cfg, model, train_ds, manifest, reference,
                          {"factor": t1 - t0, "train": t2 - t1}, trained="solo")


def arm_data(arm: Arm, cfg: StudyConfig, pool: Dataset) -> tuple[Dataset, dict[str, Any]]:
    """The arm's training set (the factor applied to the pool) and its manifest."""
    if arm.factor == "baseline":
        train_ds, manifest = pool, {"factor": "baseline", "level": None, "seed": arm.seed,
                                    "n_before": len(pool), "n_after": len(pool), "changed": 0}
    else:
        train_ds, manifest = apply_factor(arm.factor, pool, arm.level, seed=arm.seed,
                                          **dict(cfg.factor_options.get(arm.factor, {})))
    return train_ds, {**manifest, "arm_id": arm.arm_id, "model": arm.model, "train_fingerprint": train_ds.fingerprint}


def arm_result(arm: Arm, cfg: StudyConfig, model: Any, train_ds: Dataset, manifest: dict[str, Any],
               reference: Dataset, seconds: Mapping[str, float], trained: str) -> dict[str, Any]:
    """Sample the trained ``model``, evaluate it and build the arm's result (see `run_arm`).
    ``seconds``: the factor's and the training's share of the arm's time; ``trained``: how ("solo",
    or "fused xM" for a member of a fused group of M)."""
    import torch

    from . import study_adapters as adapters

    t2 = time.perf_counter()
    gen = torch.Generator().manual_seed(10_000 + arm.seed)
    labels = None
    if adapters.is_conditional(model, arm.model):
        # ask for the reference's class mix: the study's target distribution
        labels = _reference_labels(reference, cfg.n_samples, gen)
    fake = adapters.sample(model, cfg.n_samples, gen, labels)
    metrics = adapters.evaluate(reference=reference, fake=fake, train=train_ds, features=cfg.features,
                                n=cfg.n_samples, labels=labels)
    t3 = time.perf_counter()
    row: dict[str, Any] = {"arm_id": arm.arm_id, "factor": arm.factor,
                           "level": arm.level if arm.level is not None else float("nan"),
                           "model": arm.model, "seed": arm.seed}
    for k in METRIC_COLUMNS:
        row[k] = metrics.get(k)
    for k, v in metrics.items():
        if k not in row and _is_scalar(v):
            row[k] = v
    row.update(_dup_signal(arm, cfg, fake, train_ds, manifest))
    train_s = float(seconds.get("train", 0.0))
    row.update({
        "n_train": len(train_ds),
        "steps": adapters.steps_done(model, cfg.steps_for(arm.model)),
        "clean_recall": manifest.get("recall") if arm.factor == "cleaned" else None,
        "clean_lost": manifest.get("clean_lost_fraction") if arm.factor == "cleaned" else None,
        "trained": trained,
        "train_seconds": round(train_s, 3),
        "eval_seconds": round(t3 - t2, 3),
        "seconds": round(float(seconds.get("factor", 0.0)) + train_s + (t3 - t2), 3),
    })
    return {
        "arm": dataclasses.asdict(arm),
        "row": row,
        "manifest": manifest,
        "metrics": metrics,
        # evenly spaced over the samples: conditional ones are sorted by class, so every class shows
        "samples_png": grid_png(fake[np.linspace(0, len(fake) - 1, min(cfg.grid, len(fake))).round().astype(int)]),
        "samples_npz": _npz_bytes(fake, labels),
        "copies_png": _copies_png(metrics.get("copies_top"), fake, train_ds),
        # where it was made (the worker's libraries, the extractor's identity incl. its weights hash);
        # the driver adds the protocol hash when it saves the arm
        "provenance": {"versions": versions(), "extractor": metrics.get("features")},
    }


def _dup_signal(arm: Arm, cfg: StudyConfig, fake: np.ndarray, train: Dataset,
                manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The duplicates-dose columns: for a ``dup_dose`` arm, how much of its samples land on its duplicated
    sources against placebo images (`datacheck.copies.source_share`); for the baseline of a study
    with ``dup_dose``, the same for the sources that factor picks at this seed (the k = 1 point of the
    dose-response); None elsewhere."""
    sources = manifest.get("dup_sources")
    if sources is None and arm.factor == "baseline" and "dup_dose" in cfg.factors:
        opts = dict(cfg.factor_options.get("dup_dose", {}))
        sources = apply_factor("dup_dose", train, 2, seed=arm.seed, **opts)[1]["dup_sources"]  # same draw
    if not sources:
        return {}
    from datacheck.copies import source_share

    ds = Dataset(fake, np.full(len(fake), -1, np.int64), [f"fake{i}" for i in range(len(fake))])
    return source_share(ds, train, list(sources), seed=arm.seed)


def _copies_png(top: Any, fake: np.ndarray, train: Dataset) -> bytes | None:
    """A PNG of the arm's most-copied training images, one row each: the training image, then up to
    four of its copies among the samples (None when nothing was copied)."""
    if not top:
        return None
    per = max(len(t["fake_index"]) for t in top)
    c, h, w = fake.shape[1:]
    tiles = np.full((len(top) * (1 + per), c, h, w), 64, np.uint8)
    for r, t in enumerate(top):
        tiles[r * (1 + per)] = train.images[t["train_index"]]
        for k, i in enumerate(t["fake_index"]):
            tiles[r * (1 + per) + 1 + k] = fake[i]
    return grid_png(tiles, cols=1 + per)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str, np.integer, np.floating))


def _reference_labels(reference: Dataset, n: int, gen) -> np.ndarray:
    import torch

    lab = reference.labels[reference.labels >= 0]
    if not len(lab):
        return None  # type: ignore[return-value]
    idx = torch.randint(0, len(lab), (n,), generator=gen).numpy()
    return np.sort(lab[idx])  # sorted: the grid then shows the classes in rows


def grid_png(images: np.ndarray, scale: int | None = None, cols: int | None = None) -> bytes:
    """A PNG grid of uint8 (N, C, H, W) images (nearest-neighbour upscaled so 8x8 digits are visible);
    ``cols`` per row (default: a square)."""
    from PIL import Image

    n, c, h, w = images.shape
    if n == 0:
        images = np.zeros((1, c, h, w), np.uint8)
        n = 1
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    scale = scale or max(1, 48 // max(h, w))
    pad = 1
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 64, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = \
            images[i].transpose(1, 2, 0)
    arr = canvas[..., 0] if c == 1 else canvas
    img = Image.fromarray(arr).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _npz_bytes(images: np.ndarray, labels: np.ndarray | None) -> bytes:
    buf = io.BytesIO()
    arrays = {"images": images.transpose(0, 2, 3, 1)}
    if labels is not None:
        arrays["labels"] = labels.astype(np.int64)
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


# ============================================================================ results
def read_results(study: str | os.PathLike):
    """results.csv as a DataFrame (empty with the arm columns when there is none)."""
    import pandas as pd

    p = Path(study) / "results.csv"
    if not p.exists():
        return pd.DataFrame(columns=list(ARM_COLUMNS + METRIC_COLUMNS))
    return pd.read_csv(p)


def finished_arms(study: Path) -> dict[str, dict[str, Any]]:
    """arm_id -> result.json for every ended arm (result.json is written last): finished ones, and
    failed ones (``status: failed``; see `failed_arms`)."""
    out = {}
    arms = study / "arms"
    if arms.is_dir():
        for p in sorted(arms.glob("*/result.json")):
            try:
                out[p.parent.name] = json.loads(p.read_text())
            except (OSError, ValueError):
                log.warning("ignoring unreadable %s (the arm will run again)", p)
    return out


def failed_arms(results: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """arm_id -> reason, for the arms whose result.json says ``status: failed``."""
    return {k: str(r.get("error", "")) for k, r in results.items() if r.get("status") == "failed"}


def write_results(study: Path, results: Mapping[str, Mapping[str, Any]]) -> None:
    """Rewrite results.csv atomically from the finished arms' rows, in a stable order (failed arms
    have no row: the report lists them)."""
    import pandas as pd

    rows = [r["row"] for r in results.values() if r.get("status") != "failed" and "row" in r]
    cols = list(ARM_COLUMNS + METRIC_COLUMNS)
    for r in rows:
        for k in r:
            if k not in cols and k not in EXTRA_COLUMNS:
                cols.append(k)
    cols += [c for c in EXTRA_COLUMNS if c not in cols]
    df = pd.DataFrame(rows, columns=cols)
    if len(df):
        df["_base"] = (df["factor"] != "baseline").astype(int)
        df = df.sort_values(["seed", "model", "_base", "factor", "level"], kind="stable").drop(columns="_base")
    write_text(study / "results.csv", df.to_csv(index=False, float_format="%.6g"))


def _save_arm(study: Path, res: Mapping[str, Any]) -> None:
    d = study / "arms" / res["row"]["arm_id"]
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "manifest.json", res["manifest"])
    write_bytes(d / "samples.png", res["samples_png"])
    write_bytes(d / "samples.npz", res["samples_npz"])
    if res.get("copies_png"):
        write_bytes(d / "copies.png", res["copies_png"])
    # last: its presence marks the arm finished
    write_json(d / "result.json", {"arm": res["arm"], "row": res["row"], "metrics": res["metrics"],
                                   "provenance": res.get("provenance", {})})


# ============================================================================ the runner
@dataclass
class StudyPlan:
    config: StudyConfig
    arms: list[Arm]
    todo: list[Arm]
    done: list[Arm]


def plan(config: StudyConfig, study: str | os.PathLike,
         finished: Mapping[str, Any] | None = None, retry_failed: bool = False) -> StudyPlan:
    """The grid split into finished and to-do arms (``finished``: `finished_arms`, if already read).
    Failed arms count as done unless ``retry_failed``."""
    arms = grid(config)
    fin = finished_arms(Path(study)) if finished is None else finished
    if retry_failed:
        fin = {k: v for k, v in fin.items() if v.get("status") != "failed"}
    done = [a for a in arms if a.arm_id in fin]
    todo = [a for a in arms if a.arm_id not in fin]
    return StudyPlan(config, arms, todo, done)


def _check_protocol(study: Path, proto: Mapping[str, Any]) -> None:
    """Refuse a study folder made under another protocol, or one whose record of it is damaged (a
    study.json that does not parse, or none beside finished arms): such arms are never adopted blindly."""
    p = study / "study.json"
    if not p.exists():
        if any((study / "arms").glob("*/result.json")) if (study / "arms").is_dir() else False:
            raise UserError(f"{p} is missing but {study / 'arms'} holds finished arms; their protocol is unknown, "
                            "so they cannot be resumed: restore study.json or use a new --out")
        return
    try:
        doc = json.loads(p.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("protocol", {}), dict):
            raise ValueError("not a study record")
        old = doc.get("protocol", {})
    except (OSError, ValueError) as e:
        raise UserError(f"{p} does not parse ({str(e).splitlines()[0][:80]}); the study's settings are unknown, so "
                        "its arms cannot be resumed: restore the file or use a new --out") from None
    diff = sorted(k for k in set(old) | set(proto) if old.get(k) != _jsonable(proto.get(k)))
    if diff:
        raise UserError(
            f"{study} holds a study made with different settings ({', '.join(diff)}); "
            f"use a new --out or the same settings to resume it"
        )


def protocol_hash(proto: Mapping[str, Any]) -> str:
    """A short hash of the protocol: every arm's result.json records the one it was made under."""
    import hashlib

    return hashlib.sha256(json.dumps(_jsonable(proto), sort_keys=True).encode()).hexdigest()[:16]


def _check_arm_protocols(study: Path, results: Mapping[str, Mapping[str, Any]], phash: str) -> None:
    """Refuse to resume when finished arms record another protocol than the study's (a study.json edited
    or swapped under them): their numbers are not comparable with new arms'."""
    other = sorted(k for k, r in results.items()
                   if r.get("provenance", {}).get("protocol_hash") not in (None, phash))
    if other:
        raise UserError(f"{len(other)} arm(s) in {study / 'arms'} were made under another protocol than "
                        f"{study / 'study.json'} records ({', '.join(other[:3])}{' ...' if len(other) > 3 else ''}); "
                        "use a new --out, or remove those arms to run them again")


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("datamatters", "torch", "numpy", "scipy", "pandas", "scikit-learn", "ray"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


# ============================================================================ estimate
def estimate(config: StudyConfig, todo: list[Arm], *, workers: int = 1,
             data: StudyData | None = None, speedups: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Seconds the arms in ``todo`` should take, from a short measured probe: each model trained for
    a few steps twice on the real pool (seconds per step and per-run overhead), one evaluation timed
    on the real reference (after a first one that pays the one-off setup), and each factor's
    transform (``cleaned`` runs the audit). Returns the parts and the total (arms spread evenly over
    ``workers``; assumes each worker has a core to itself). ``speedups``: model -> measured fused/solo
    throughput for the models that train as fused groups (their steps and per-run overhead are divided
    by it)."""
    import torch

    from . import study_adapters as adapters

    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _estimate(config, todo, workers, data, adapters, dict(speedups or {}))
    finally:
        torch.set_num_threads(old_threads)


def _estimate(config: StudyConfig, todo: list[Arm], workers: int, data: StudyData | None, adapters: Any,
              speedups: dict[str, float]) -> dict[str, Any]:
    t_setup = time.perf_counter()
    data = data or prepare_data(config)
    config = resolve_features(config, data)
    # evaluation: first call pays the one-off setup (e.g. the classifier extractor's training)
    fake = data.pool.images[: config.n_samples]
    labels = data.pool.labels[: config.n_samples] if data.pool.labeled else None
    adapters.evaluate(reference=data.reference, fake=fake, train=data.pool, features=config.features,
                      n=config.n_samples, labels=labels)
    setup_s = time.perf_counter() - t_setup
    # an arm's evaluation also embeds its own (new) training set: time it with a different one
    other = data.pool.subset(np.arange(len(data.pool) - 1))
    t = time.perf_counter()
    adapters.evaluate(reference=data.reference, fake=fake[::-1].copy(), train=other, features=config.features,
                      n=config.n_samples, labels=None if labels is None else labels[::-1].copy())
    eval_s = time.perf_counter() - t
    # Each model trains twice on the real pool (k1 and k2 steps, the trainer's own loop with its
    # per-run overhead): the difference gives the seconds per step, the rest the per-run overhead.
    per_step: dict[str, float] = {}
    run_overhead: dict[str, float] = {}
    default_steps: dict[str, int] = {}
    k1, k2 = 10, 40
    with tempfile.TemporaryDirectory(prefix="dm-probe-") as tmp:
        for m in sorted({a.model for a in todo} or set(config.models)):
            opts = model_options(config, m, data.pool)
            # a first short run pays one-off costs (lazy initialisation, allocator warm-up)
            adapters.train_model(m, data.pool, Path(tmp) / f"{m}-warm", steps=2, batch_size=config.batch_size,
                                 seed=0, device=config.device, options=opts)
            times = []
            for k in (k1, k2):
                t = time.perf_counter()
                adapters.train_model(m, data.pool, Path(tmp) / f"{m}-{k}", steps=k, batch_size=config.batch_size,
                                     seed=0, device=config.device, options=opts)
                times.append(time.perf_counter() - t)
            per_step[m] = max((times[1] - times[0]) / (k2 - k1), 1e-6)
            run_overhead[m] = max(times[0] - k1 * per_step[m], 0.0)
            default_steps[m] = adapters.default_steps(m)
    factor_s: dict[str, float] = {}
    for f in sorted({a.factor for a in todo} - {"baseline"}):
        lv = max(config.levels[f])
        t = time.perf_counter()
        apply_factor(f, data.pool, lv, seed=0, **dict(config.factor_options.get(f, {})))
        factor_s[f] = time.perf_counter() - t
    total = 0.0
    for a in todo:
        opts, steps = arm_training(config, a, data.pool)  # a model tweak changes steps or width
        per = per_step[a.model]
        if a.factor == "capacity":
            per *= float(a.level) ** 2  # convolution work grows with the square of the width (an approximation)
        train = (steps * per + run_overhead[a.model]) / max(speedups.get(a.model, 1.0), 1e-9)
        total += train + eval_s + factor_s.get(a.factor, 0.0)
    wall = total / max(workers, 1) + setup_s
    return {"arms": len(todo), "seconds": wall, "setup_seconds": setup_s, "eval_seconds": eval_s,
            "step_seconds": per_step, "run_overhead_seconds": run_overhead,
            "steps": {m: config.steps_for(m) or default_steps[m] for m in default_steps},
            "factor_seconds": factor_s, "workers": workers}


def describe_grid(pl: StudyPlan) -> str:
    """A plain-text table of the grid: factor, levels, models, seeds, and how many arms are done."""
    from .study_adapters import default_steps

    cfg = pl.config
    lines = [f"data: {cfg.data}; models: {', '.join(cfg.models)}; seeds: {', '.join(map(str, cfg.seeds))}; "
             f"steps: {', '.join(f'{m} {cfg.steps_for(m) or default_steps(m)}' for m in cfg.models)}; samples per arm: {cfg.n_samples}; features: {cfg.features}",
             f"{'factor':<12} {'levels':<30} {'arms':>5} {'done':>5}"]
    done_ids = {a.arm_id for a in pl.done}
    rows = [("baseline", "(shared by every factor)")] + [
        (f, ", ".join(level_str(x) for x in cfg.levels[f] if not get_factor(f).is_baseline(x))
         + (f" ({get_factor(f).scope})" if get_factor(f).scope else ""))
        for f in cfg.factors]
    for f, lv in rows:
        arms = [a for a in pl.arms if a.factor == f]
        lines.append(f"{f:<12} {lv:<30} {len(arms):>5} {sum(a.arm_id in done_ids for a in arms):>5}")
    lines.append(f"{'total':<12} {'':<30} {len(pl.arms):>5} {len(pl.done):>5}")
    return "\n".join(lines)
