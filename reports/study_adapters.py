"""The study's seams to training, sampling and evaluation (one small place to adapt if those APIs move).

- `train_model`: ``generative.train`` into a folder, returning the trained model.
- `sample`: uint8 (N, C, H, W) samples, with class labels for conditional models.
- `evaluate`: ``reports.evaluation.Evaluator`` against the study's reference, with the reference's
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


def default_steps(name: str) -> int:
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


def evaluate(*, reference: Dataset, fake: np.ndarray, train: Dataset, features: str, n: int,
             labels: np.ndarray | None) -> dict[str, Any]:
    """The metrics of ``reports evaluate`` for one arm (memorization against the arm's own training
    set and the held-out reference), plus ``label_agreement``."""
    from .evaluation import get_evaluator

    # reused across arms: the reference's features (and the classifier extractor's training, cached
    # on disk too) are paid for once per process, not once per arm
    ev = get_evaluator(real=reference, features=features, n=int(n), seed=0)
    out = dict(ev.evaluate(fake=fake, train=train))
    out["label_agreement"] = None
    clf = getattr(ev, "mode_classifier", None)
    if labels is not None and clf is not None and hasattr(clf, "predict_proba"):
        pred = np.asarray(clf.predict_proba(fake)).argmax(1)
        out["label_agreement"] = float(np.mean(pred == np.asarray(labels)))
    return out


