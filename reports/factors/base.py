"""Data factors (a registry): seeded, deterministic transforms of a training `Dataset`.

Each factor is called as ``apply_factor(name, ds, level, seed=..., **options)`` and returns
``(new_dataset, manifest)``; the manifest is a JSON-able dict saying exactly what changed
(indices and ids affected, old and new labels, kinds of corruption, counts per class ...).

``level`` means, per factor (this is the ``level`` column of a study's results.csv):

- ``size``: the fraction of items kept (a number > 1 is a count), stratified by class. Baseline 1.0.
- ``duplicates``: the fraction of items replaced by copies (exact and near) of a few items. Baseline 0.
- ``label_noise``: the fraction of labels flipped (symmetric, or class-pair with ``mode="pair"``). Baseline 0.
- ``corruption``: the fraction of images corrupted (Gaussian noise, blur, blanking, pure noise). Baseline 0.
- ``imbalance``: the largest/smallest class-count ratio of an exponential long tail. Baseline 1.
- ``dirty``: the fraction affected by corruption and duplicates together (half each by default),
  i.e. ``cleaned``'s input before cleaning, so a study can compare the two directly. Baseline 0.
- ``cleaned``: ``dirty`` at the level, then everything datacheck's audit and dedupe flagged removed;
  the manifest records how many planted items were removed (recall) and how many clean ones were lost.
  Baseline 0.
- ``valued``: the fraction of items removed that ``reports value``'s estimate (a small fused population on
  complementary halves of the arm's own training set) ranks most harmful. Baseline 0. Opt-in: each arm
  trains its estimate, so no preset runs it.

The negative control (``kind="control"``), run beside the others under the same analysis plan:

- ``placebo``: 1 trains on the very same images and labels in another order (a seeded permutation of the
  training set), which changes the batches and so the trajectory, but nothing a data fix would change.
  Baseline 0. It must come out not significant; if it does, the study's other findings are suspect.

Each factor's registry entry also says how a study shows and tests it (`Factor`: default levels, axis
words, its sentence, the metrics it reads, extra plots, the arm its primary test compares with), so a
newly registered factor gets its grid, plots, words and test without edits elsewhere. The data factors live in
`reports.factors.data`, ``dirty`` and ``cleaned`` in `reports.factors.cleaning`, ``valued`` in `reports.factors.valued`, the control and the model
tweaks in `reports.factors.tweaks`; importing `reports.factors` registers them all.

At its baseline level every factor returns the dataset unchanged. The same seed gives the same
result, byte for byte; ``dirty`` and ``cleaned`` at one level and seed plant the very same items.

Model tweaks (``kind="model"``) sit in the same registry, grid, shared baseline and report, so a
study puts changes of the model next to changes of its data at equal cost and on the same seeds; they
leave the data alone and change how the arm trains (`Factor.tweak_training`):

- ``capacity``: a width multiplier of both networks (0.5 halves the channels). Baseline 1.
- ``steps``: a training-length multiplier. Baseline 1.
- ``augment``: 1 turns DiffAugment on (color, translation, cutout; GANs only). Baseline 0.
- ``ema``: 1 samples from the raw generator instead of its EMA (models that keep one). Baseline 0.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError
from datacheck.registry import Registry

log = logging.getLogger(__name__)

FactorFn = Callable[..., "tuple[Dataset, dict[str, Any]]"]
LevelRule = tuple[Callable[[float], bool], str]  # (is this level valid, what a valid level is)

FRACTION: LevelRule = (lambda lv: 0 <= lv <= 1, "a fraction in [0, 1]")


# (model name, the arm's model options) -> does the factor apply to that model's arms
Applies = Callable[[str, "dict[str, Any]"], bool]
# (level, the arm's model options, image shape (C, H, W)) -> (new model options, steps multiplier)
Tweak = Callable[[float, "dict[str, Any]", "tuple[int, int, int]"], "tuple[dict[str, Any], float]"]


@dataclass(frozen=True)
class Factor:
    """A registered factor: its transform, its baseline level and what ``level`` means. ``kind`` is
    ``data`` (the transform changes the training set), ``model`` (the data stays; ``tweak`` changes
    the arm's model options and training length) or ``control`` (a change that should do nothing: the
    negative control). ``applies`` limits it to some models (``scope`` says
    which, for people)."""

    name: str
    fn: FactorFn
    baseline: float
    level_meaning: str
    needs_labels: bool = False
    levels: LevelRule = FRACTION
    kind: str = "data"
    applies: Applies | None = None
    tweak: Tweak | None = None
    scope: str = ""
    # how a study shows and tests it (read by the grid, the plots, the sentences and the analysis plan)
    default_levels: tuple[float, ...] = ()  # the levels a study runs unless told otherwise
    axis: str = "level"  # what its levels mean, in the words of a plot's x axis
    phrase: str = ""  # its sentence's opening: {pct} / {ratio} stand for the farthest level run
    metrics: tuple[str, ...] = ("fid", "recall")  # the metrics its sentence reads
    panels: tuple[str, ...] = ()  # plots beyond the standard panels
    log_scale: bool = False  # levels are ratios: "farthest from the baseline" is on a log scale
    reference: str = "baseline"  # the arm its primary test compares with, when the study runs it
    expect: str = "harm"  # "harm" (a defect or a cut) or "gain" (a fix): a significant surprise is said
    copy_test: str | None = None  # a copy signal tested as a second primary (dose trend), e.g. dup_excess

    def farthest(self, levels: "list[float]") -> float | None:
        """The level farthest from the baseline among ``levels`` (on a log scale for ratio factors)."""
        lv = [float(x) for x in levels]
        if not lv:
            return None
        def dist(x: float) -> float:
            if self.log_scale and x > 0 and self.baseline > 0:
                return abs(math.log(x / self.baseline))
            return abs(x - self.baseline)
        return max(lv, key=dist)

    def opening(self, level: float) -> str:
        """The start of its sentence at ``level`` ("Keeping 5% of the training data")."""
        words = self.phrase or f"{self.name} at {{ratio}}"
        return words.format(pct=f"{level * 100:g}%", ratio=f"{level:g}")

    def applies_to(self, model: str, options: dict[str, Any]) -> bool:
        """Whether an arm of ``model`` (with these options) would differ from its baseline."""
        return self.applies is None or bool(self.applies(model, options))

    def tweak_training(self, level: float, options: dict[str, Any], shape: tuple[int, int, int],
                       steps: int) -> tuple[dict[str, Any], int]:
        """The arm's model options and steps at ``level`` (unchanged for data factors and baselines)."""
        if self.tweak is None or self.is_baseline(level):
            return dict(options), int(steps)
        new, mult = self.tweak(float(level), dict(options), tuple(shape))
        return new, max(1, int(round(steps * mult)))

    def check_level(self, level: float) -> None:
        """Raise UserError unless ``level`` is a valid level of this factor."""
        valid, want = self.levels
        if not valid(float(level)):
            raise UserError(f"level {level:g} of factor {self.name!r} is invalid; expected {want}")

    def is_baseline(self, level: float) -> bool:
        return math.isclose(float(level), self.baseline, rel_tol=0, abs_tol=1e-12)


FACTORS: Registry[Factor] = Registry("data factor")


def _register(name: str, baseline: float, meaning: str, **fields: Any) -> Callable[[FactorFn], FactorFn]:
    """Decorator: register a data factor (``fields``: the other `Factor` fields)."""
    def deco(fn: FactorFn) -> FactorFn:
        FACTORS.add(name, Factor(name, fn, baseline, meaning, **fields))
        return fn
    return deco


def conditional(model: str, options: dict[str, Any]) -> bool:
    """Models that read labels (label noise cannot reach the others)."""
    import generative

    return bool(generative.MODELS.get(model).make_config(options).conditional)


def get_factor(name: str) -> Factor:
    return FACTORS.get(name)


def apply_factor(name: str, ds: Dataset, level: float, seed: int = 0, **options: Any) -> tuple[Dataset, dict[str, Any]]:
    """Apply factor ``name`` at ``level`` to ``ds`` with ``seed``; returns (dataset, manifest)."""
    f = FACTORS.get(name)
    level = float(level)
    if not math.isfinite(level):
        raise UserError(f"level for factor {name!r} must be a finite number, got {level}")
    if f.needs_labels and not f.is_baseline(level) and not ds.labeled:
        raise UserError(f"factor {name!r} needs labeled data; {ds.source!r} has no labels")
    base = {"factor": name, "level": level, "seed": int(seed), "n_before": len(ds)}
    if f.is_baseline(level):
        return ds, {**base, "n_after": len(ds), "changed": 0, "note": "baseline level: unchanged"}
    # 'cleaned' draws like 'dirty' so that, at one level and seed, both plant the very same items
    salt = _name_salt("dirty" if name == "cleaned" else name)
    new, man = f.fn(ds, level, np.random.default_rng([int(seed), salt]), **options)
    man = {**base, **man, "n_after": len(new)}
    return new, man


def _name_salt(name: str) -> int:
    # a stable per-factor salt so two factors with one seed do not pick the same items by accident
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2**31)


def _fraction(level: float, name: str) -> float:
    if not 0.0 <= level <= 1.0:
        raise UserError(f"level for factor {name!r} is a fraction in [0, 1], got {level}")
    return level


def _count(level: float, n: int) -> int:
    return int(round(level * n))
