"""The negative control and the model tweaks (registered in `reports.factors`).

``placebo`` (kind ``control``) trains on the same images and labels in another order: it must come out not
significant. Model tweaks (kind ``model``) leave the data alone and change how the arm trains
(`Factor.tweak_training`), so a study puts a change of the model beside a change of its data, at equal cost
and on the same seeds."""
from __future__ import annotations

from typing import Any

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError

from .base import FACTORS, Applies, Factor, LevelRule, Tweak


def _placebo(ds: Dataset, level: float, rng: np.random.Generator) -> tuple[Dataset, dict[str, Any]]:
    if level not in (0.0, 1.0):
        raise UserError(f"level for factor 'placebo' is 0 or 1, got {level:g}")
    return ds.subset(rng.permutation(len(ds))), {
        "changed": 0, "kind": "control", "note": "the same images and labels in another order (negative control)"}


FACTORS.add("placebo", Factor("placebo", _placebo, 0.0, "1: the same training set in another order (negative control)",
                              levels=((lambda lv: lv in (0.0, 1.0)), "0 or 1"), kind="control", default_levels=(1.0,),
                              axis="1: the same set in another order",
                              phrase="Negative control: the same training set in another order"))


# ---------------------------------------------------------------------------- model tweaks
def _register_tweak(name: str, baseline: float, meaning: str, levels: LevelRule, tweak: Tweak,
                    applies: Applies | None = None, scope: str = "", **fields: Any) -> None:
    def unchanged(ds: Dataset, level: float, rng: np.random.Generator) -> tuple[Dataset, dict[str, Any]]:
        return ds, {"changed": 0, "kind": "model", "note": f"data unchanged; the model is tweaked: {meaning}"}

    FACTORS.add(name, Factor(name, unchanged, baseline, meaning, levels=levels, kind="model", applies=applies,
                             tweak=tweak, scope=scope, **fields))


def _width(options: dict[str, Any], shape: tuple[int, int, int], key: str) -> int:
    from generative.models import auto_width

    return int(options.get(key) or auto_width(shape))


def _capacity(level: float, options: dict[str, Any], shape: tuple[int, int, int]) -> tuple[dict[str, Any], float]:
    for key in ("g_width", "d_width"):
        options[key] = max(2, int(round(_width(options, shape, key) * level)))
    return options, 1.0


def _gan(model: str, options: dict[str, Any]) -> bool:
    import generative

    return generative.MODELS.get(model).cls.family == "gan"


def _has_ema(model: str, options: dict[str, Any]) -> bool:
    import generative

    return generative.MODELS.get(model).make_config(options).ema > 0


_register_tweak("capacity", 1.0, "width multiplier of both networks (0.5 halves every layer's channels)",
                ((lambda lv: 0 < lv <= 8), "a multiplier in (0, 8]"), _capacity, default_levels=(0.5, 2.0),
                axis="width multiplier", phrase="Model tweak: both networks {ratio}x as wide", log_scale=True)
_register_tweak("steps", 1.0, "training-length multiplier", ((lambda lv: 0 < lv <= 10), "a multiplier in (0, 10]"),
                lambda lv, opts, shape: (opts, lv), default_levels=(0.5, 2.0), axis="training-length multiplier",
                phrase="Model tweak: training {ratio}x as long", log_scale=True)
_register_tweak("augment", 0.0, "1: DiffAugment on (color, translation, cutout)",
                ((lambda lv: lv in (0.0, 1.0)), "0 or 1"),
                lambda lv, opts, shape: ({**opts, "augment": "color,translation,cutout"}, 1.0),
                applies=_gan, scope="GANs only", default_levels=(1.0,), axis="1: DiffAugment on",
                phrase="Model tweak: DiffAugment on")
_register_tweak("ema", 0.0, "1: sample from the raw generator, not its EMA", ((lambda lv: lv in (0.0, 1.0)), "0 or 1"),
                lambda lv, opts, shape: ({**opts, "ema": 0.0}, 1.0), applies=_has_ema, scope="models with an EMA",
                default_levels=(1.0,), axis="1: the raw generator, not its EMA",
                phrase="Model tweak: sampling the raw generator instead of its EMA", metrics=("fid", "precision"))
