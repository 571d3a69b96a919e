"""The study's seams to training, sampling and evaluation (one small place to adapt if those APIs move).

- :func:`train_model`: ``generative.train`` into a folder, returning the trained model.
- :func:`sample`: uint8 (N, C, H, W) samples, with class labels for conditional models.
- :func:`evaluate`: ``reports.evaluate`` against the study's reference, with the reference's
  features computed once per process and reused by every arm, plus ``label_agreement``: for
  conditional models, the share of samples the reference-trained classifier assigns to the
  requested class (what label noise degrades).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from datacheck.dataset import Dataset

log = logging.getLogger(__name__)


def train_model(name: str, ds: Dataset, out: Path, *, steps: int | None, batch_size: int, seed: int,
                device: str, options: dict[str, Any]) -> Any:
    """Train model ``name`` on ``ds`` into ``out``; returns the trained model (EMA weights sample)."""
    import generative

    run = generative.train(model=name, data=ds, out=out, steps=steps, batch_size=batch_size, seed=seed,
                           device=device, progress=False, checkpoint_every=0, sample_every=0, **options)
    model = getattr(run, "model", run)
    try:
        model._dm_steps = int(run.steps)  # for the results' steps column
    except (AttributeError, TypeError, ValueError):
        pass
    return model


def seconds_per_step(name: str, ds: Dataset, *, batch_size: int, device: str, threads: int | None,
                     options: dict[str, Any]) -> float:
    """Measured seconds per training step of model ``name`` on data of ``ds``'s shape."""
    import generative
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return float(generative.estimate_seconds_per_step(name, shape=ds.shape, n_classes=max(ds.n_classes, 1),
                                                          batch_size=batch_size, device=device, **options))
    finally:
        torch.set_num_threads(old)


def default_steps(name: str, model: Any = None) -> int:
    import generative

    return int(generative.default_steps(name))


def steps_done(model: Any, steps: int | None) -> int | None:
    return getattr(model, "_dm_steps", steps)


def is_conditional(model: Any, name: str) -> bool:
    return bool(getattr(model, "conditional", name in ("cgan", "cvae")))


def sample(model: Any, n: int, generator: Any, labels: np.ndarray | None) -> np.ndarray:
    """uint8 (N, C, H, W); ``labels`` (N,) for conditional models."""
    if labels is not None:
        return np.asarray(model.sample(n, generator=generator, labels=labels))
    return np.asarray(model.sample(n, generator=generator))


_EVALUATORS: dict[tuple[str, str], Any] = {}


def _evaluator(reference: Dataset, features: str) -> Any:
    """One evaluator per (reference, extractor) per process: the reference's features (and the
    classifier extractor's training) are paid for once, not once per arm."""
    key = (reference.fingerprint, features)
    if key not in _EVALUATORS:
        from . import evaluate as ev

        if hasattr(ev, "Evaluator"):
            _EVALUATORS[key] = ev.Evaluator(real=reference, features=features)
        else:
            _EVALUATORS[key] = None
    return _EVALUATORS[key]


def evaluate(*, reference: Dataset, fake: np.ndarray, train: Dataset, features: str, n: int,
             labels: np.ndarray | None) -> dict[str, Any]:
    """The metrics of ``reports evaluate`` for one arm, plus ``label_agreement``."""
    from . import evaluate as ev

    evaluator = _evaluator(reference, features)
    if evaluator is not None:
        out = dict(evaluator(fake=fake, train=train, n=n, seed=0))
    else:
        out = dict(ev.evaluate(real=reference, fake=fake, train=train, features=features, n=n, seed=0))
    out["label_agreement"] = _label_agreement(evaluator, reference, features, fake, labels)
    return out


def _label_agreement(evaluator: Any, reference: Dataset, features: str, fake: np.ndarray,
                     labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    pred = _predict(evaluator, reference, features, fake)
    if pred is None:
        return None
    return float(np.mean(pred == labels))


def _predict(evaluator: Any, reference: Dataset, features: str, images: np.ndarray) -> np.ndarray | None:
    """Class predictions of the evaluation classifier (None when the extractor has no classes)."""
    ext = getattr(evaluator, "extractor", None)
    if ext is None:
        try:
            from datacheck.features import get_extractor

            ext = _CLASSIFIERS.get(reference.fingerprint)
            if ext is None:
                ext = get_extractor("classifier", reference=reference)
                _CLASSIFIERS[reference.fingerprint] = ext
        except Exception:  # no classifier extractor available: the column stays empty
            log.debug("no classifier to score label agreement", exc_info=True)
            return None
    proba = getattr(ext, "predict_proba", None)
    if proba is None:
        return None
    return np.asarray(proba(images)).argmax(1)


_CLASSIFIERS: dict[str, Any] = {}
