"""One arm of a study, start to end: its training set (the factor applied to the pool), training,
sampling and evaluation, as a picklable task (`ArmTask`) that runs unchanged in this process, a pool
worker or on Ray; a failure is a result (`failed_result`); the PNG and NPZ bytes the study keeps."""
from __future__ import annotations

import dataclasses
import io
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError

from .factors import apply_factor
from .store import versions
from .study import METRIC_COLUMNS, Arm, StudyConfig, arm_training

log = logging.getLogger(__name__)


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
