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
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError, check_keys

from .factors import conditional, get_factor

log = logging.getLogger(__name__)

STUDY_VERSION = 1
# the metric columns of `reports evaluate`, in that order; any further scalar the evaluator returns
# is appended after them
METRIC_COLUMNS = ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
                  "modes_covered", "mode_kl", "memorization", "n_real", "n_fake")
ARM_COLUMNS = ("arm_id", "factor", "level", "model", "seed")
EXTRA_COLUMNS = ("label_agreement", "dup_source_share", "dup_placebo_share", "dup_p", "n_train", "steps",
                 "clean_recall", "clean_lost", "trained",
                 "train_seconds", "eval_seconds", "seconds")



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
    levels: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # default: the registry's
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
            raw = self.levels.get(f, get_factor(f).default_levels)
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
        check_keys(d, (f.name for f in dataclasses.fields(cls)), "study setting")
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
        factors=("size", "duplicates", "label_noise", "corruption", "imbalance", "dirty", "cleaned", "placebo"),
        levels={"size": (0.75, 0.5, 0.25, 0.1, 0.05), "duplicates": (0.1, 0.25, 0.5, 0.75),
                "label_noise": (0.1, 0.25, 0.5, 0.75), "corruption": (0.1, 0.2, 0.4, 0.6),
                "imbalance": (3.0, 10.0, 30.0, 100.0), "dirty": (0.2, 0.4, 0.6),
                "cleaned": (0.2, 0.4, 0.6), "placebo": (1.0,)},
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
    cond = [m for m in config.models if conditional(m, dict(config.model_options.get(m, {})))]
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
