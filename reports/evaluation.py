"""Evaluate generated images against a real reference set: one dict of metrics, ready for JSON.

``Evaluator(real=..., features=...)`` extracts the reference's features once (and trains/loads the
classifier extractor once, cached by the reference's fingerprint); ``.evaluate(fake=..., train=...)``
then costs only the fake (and train) features and the metrics. `evaluate` is a thin wrapper that
keeps the last few evaluators, so repeated calls against one reference (an ablation study) reuse it.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError
from datacheck.features import FEATURES, get_extractor
from datacheck.io import fmt_num

from . import metrics as M

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_N", "Evaluator", "evaluate", "get_evaluator", "as_dataset", "default_features", "RESULT_KEYS"]

DEFAULT_N = 10_000  # fixed sample count per set: FID's bias depends on N, so arms must share it
RESULT_KEYS = ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage", "modes_covered",
               "mode_kl", "memorization", "features", "n_real", "n_fake")

_EXTRACTORS: "OrderedDict[str, Any]" = OrderedDict()
_EVALUATORS: "OrderedDict[str, Evaluator]" = OrderedDict()
_KEEP = 4


def as_dataset(x: Any, name: str) -> Dataset:
    """A Dataset from a Dataset or a uint8 array (N, C, H, W) / (N, H, W)."""
    if isinstance(x, Dataset):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.ndim == 3:
            x = x[:, None]
        if x.dtype != np.uint8 or x.ndim != 4:
            raise UserError(f"{name} must be a Dataset or uint8 images (N, C, H, W), got {x.dtype} {x.shape}")
        return Dataset(images=np.ascontiguousarray(x), labels=np.full(len(x), -1, np.int64),
                       ids=tuple(f"{name}:{i}" for i in range(len(x))), source=name)
    raise UserError(f"{name} must be a Dataset or a uint8 image array, got {type(x).__name__}")


def default_features(real: Dataset) -> str:
    """``classifier`` for a reference with at least 2 labeled classes, else ``random``."""
    return "classifier" if len(np.unique(real.labels[real.labels >= 0])) >= 2 else "random"


def _subsample(d: Dataset, n: int, seed: int) -> Dataset:
    if len(d) <= n:
        return d
    idx = np.sort(np.random.default_rng(seed).choice(len(d), n, replace=False))
    return d.subset(idx)


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=repr)


def _extractor(name: str, real: Dataset, options: dict[str, Any]) -> Any:
    """Build (or reuse) an extractor; the classifier trains on ``real`` unless options give ``reference``."""
    opts = dict(options)
    fp = None
    if name == "classifier":
        ref = opts.pop("reference", real)
        fp = ref.fingerprint
        opts["reference"] = ref
    key = _key(name, fp, {k: v for k, v in opts.items() if k != "reference"})
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = get_extractor(name, **opts)
        while len(_EXTRACTORS) > _KEEP:
            _EXTRACTORS.popitem(last=False)
    _EXTRACTORS.move_to_end(key)
    return _EXTRACTORS[key]


def _clean(v: Any) -> Any:
    """JSON-safe (the one sanitizer every writer uses, `datacheck.io.json_safe`)."""
    from datacheck.io import json_safe

    return json_safe(v)


class Evaluator:
    """Holds a reference set's features so many fake sets can be measured against it cheaply.

    Args:
        real: the clean real reference (Dataset or uint8 array). Labeled references get mode keys.
        features: extractor name (``classifier``, ``random``, ``pixels``, ``inception``) or an extractor
            object (callable uint8 (N, C, H, W) -> (N, D) with ``.identity``); default ``classifier`` for a
            labeled reference, ``random`` for an unlabeled one.
        n: evaluate at most n real and n fake images (seeded subsample); default `DEFAULT_N`.
        seed: seeds the subsamples, KID subsets and C_T's k-means.
        k: neighbourhood size of precision/recall/density/coverage.
        extractor_options: passed to the extractor (``weights=PATH`` for inception; for ``classifier``,
            training settings or ``reference=`` another Dataset to train on instead of ``real``).
        kid_subsets: how many KID subsets (default 100).
        kid_subset_size: their size (default min(1000, half the smaller set)).
        memorization_space: ``"features"`` (default) or ``"pixels"`` for the nearest-neighbour distances.
        fid_inf: also compute FID-infinity (a few extra FIDs).
    """

    def __init__(self, *, real: Any, features: str | Any | None = None, n: int | None = None, seed: int = 0,
                 k: int = 5, extractor_options: dict[str, Any] | None = None, kid_subsets: int = 100,
                 kid_subset_size: int | None = None, memorization_space: str = "features",
                 fid_inf: bool = False) -> None:
        self.real_full = as_dataset(real, "real")
        self.n = int(n) if n is not None else DEFAULT_N
        if self.n < 2:
            raise UserError(f"n must be at least 2, got {self.n}")
        if memorization_space not in ("features", "pixels"):
            raise UserError(f"memorization_space must be 'features' or 'pixels', got {memorization_space!r}")
        self.seed, self.k, self.fid_inf = int(seed), int(k), bool(fid_inf)
        self.kid_subsets = int(kid_subsets)
        self.kid_subset_size = None if kid_subset_size is None else int(kid_subset_size)
        self.memorization_space = memorization_space
        options = dict(extractor_options or {})
        features = default_features(self.real_full) if features is None else features
        if isinstance(features, str):
            self.extractor = _extractor(features, self.real_full, options)
        elif callable(features) and hasattr(features, "identity"):
            self.extractor = features
        else:
            raise UserError(f"features must be one of {', '.join(FEATURES.names())} or an extractor object")
        self.real = _subsample(self.real_full, self.n, self.seed)
        # the held-out real set of the feature-space copy tests (memorization share, C_T): the reference, less
        # any image the feature extractor was trained on (the classifier trains on 80% of the reference), so
        # generated samples are never compared with the extractor's own training images
        self.heldout_mask = np.ones(len(self.real), bool)
        ho = getattr(self.extractor, "heldout_index", None)
        if ho is not None and getattr(self.extractor, "reference_fingerprint", None) == self.real_full.fingerprint:
            keep = {self.real_full.ids[i] for i in np.asarray(ho)}
            self.heldout_mask = np.array([i in keep for i in self.real.ids], bool)
        t0 = time.perf_counter()
        self.real_feats = self.extractor(self.real.images)
        log.info("reference features %s in %.2fs", self.real_feats.shape, time.perf_counter() - t0)
        # mode coverage needs a classifier trained on the labeled reference, whatever the features are
        known = self.real.labels[self.real.labels >= 0]
        self.labeled = len(np.unique(known)) >= 2
        self.mode_classifier: Any = None
        if self.labeled:
            if getattr(self.extractor, "name", None) == "classifier" and hasattr(self.extractor, "predict_proba"):
                self.mode_classifier = self.extractor
            else:
                self.mode_classifier = _extractor("classifier", self.real_full, {})
        self._train_cache: tuple[str, np.ndarray] | None = None

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self.extractor.identity)

    def _train_features(self, train: Dataset) -> np.ndarray:
        fp = train.fingerprint
        if self._train_cache is None or self._train_cache[0] != fp:
            self._train_cache = (fp, self._embed(train.images))
        return self._train_cache[1]

    def _embed(self, images: np.ndarray) -> np.ndarray:
        if self.memorization_space == "pixels":
            return images.reshape(len(images), -1).astype(np.float32) / 255.0
        return self.extractor(images)

    def evaluate(self, *, fake: Any, train: Any = None) -> dict[str, Any]:
        """Metrics of ``fake`` (Dataset or uint8 array) against the reference; ``train`` (the generator's
        training set) enables the memorization keys. Keys that do not apply are None."""
        t0 = time.perf_counter()
        fake_d = _subsample(as_dataset(fake, "fake"), self.n, self.seed + 1)
        if fake_d.shape != self.real.shape:
            raise UserError(f"fake images have shape {fake_d.shape} but the real reference has {self.real.shape}")
        ff = self.extractor(fake_d.images)
        rf = self.real_feats
        out: dict[str, Any] = {k: None for k in RESULT_KEYS}
        out["features"] = self.identity
        out["n_real"], out["n_fake"] = len(rf), len(ff)
        out["fid"] = M.frechet_distance(real=rf, fake=ff)
        # KID subsets of 1000 (the usual size), but at most half the smaller set: subsets as large as the
        # sets would all hold the same samples and report a spread of 0 (KID is unbiased at any size)
        size = self.kid_subset_size or min(1000, max(2, min(len(rf), len(ff)) // 2))
        out["kid_mean"], out["kid_std"] = M.kid(real=rf, fake=ff, subsets=self.kid_subsets, subset_size=size,
                                                seed=self.seed)
        out["kid_subset_size"] = min(size, len(rf), len(ff))
        if self.k < min(len(rf), len(ff)):
            out.update(M.prdc(real=rf, fake=ff, k=self.k))
        else:
            log.warning("precision/recall/density/coverage need more than k=%d samples per set", self.k)
        out["k"] = self.k
        out.update({"n_modes": None, "class_recall": None, "per_class_recall": None, "mode_classifier": None})
        if self.mode_classifier is not None:
            mc = M.mode_coverage(real_labels=self.real.labels, fake_probs=self.mode_classifier.predict_proba(fake_d.images),
                                 n_classes=self.mode_classifier.n_classes)
            for key in ("modes_covered", "n_modes", "mode_kl", "class_recall", "per_class_recall"):
                out[key] = mc[key]
            out["mode_classifier"] = {"weights": self.mode_classifier.identity["weights"],
                                      "accuracy": self.mode_classifier.identity["accuracy"]}
        out.update({"memorization_heldout_rate": None, "ct_score": None, "n_train": None, "n_heldout": None,
                    "memorization_space": self.memorization_space,
                    "copy_rate": None, "copy_rate_heldout": None, "copy_p": None, "copies_top": None,
                    "mia_auc": None, "mia_auc_low": None, "mia_auc_high": None, "mia_n_members": None,
                    "mia_n_nonmembers": None})
        if train is not None:
            train_d = as_dataset(train, "train")
            if train_d.shape != self.real.shape:
                raise UserError(f"train images have shape {train_d.shape} but the real reference has {self.real.shape}")
            tf = self._train_features(train_d)
            held = self.real.subset(self.heldout_mask)
            if self.memorization_space == "pixels":
                fz, hz = self._embed(fake_d.images), self._embed(held.images)
            else:
                fz, hz = ff, rf[self.heldout_mask]
            mem = M.memorization(train=tf, fake=fz, heldout=hz, seed=self.seed)
            out["memorization"] = mem["memorization"]
            out["memorization_heldout_rate"] = mem["memorization_heldout_rate"]
            out["ct_score"] = mem["ct_score"]
            out["n_train"] = len(train_d)
            # per-sample copies (datacheck's near-duplicate engine across the two sets), with the
            # reference as the held-out false-alarm baseline
            from datacheck.copies import find_copies

            # pixels, not the extractor's features: no image here was seen by the extractor's training in a
            # way that matters, so the whole reference is the false-alarm baseline (more images, finer rate)
            cp = find_copies(fake_d, train_d, self.real, seed=self.seed, calibration_items=500)
            out["n_heldout"] = len(held)
            cs = cp.attrs["summary"]
            out["copy_rate"], out["copy_rate_heldout"], out["copy_p"] = cs["copy_rate"], cs["heldout_rate"], cs["p_value"]
            out["copies_top"] = _most_copied(cp, fake_d, train_d)
            # leakage: do the samples tell the training images (members) from the reference's real images
            # (non-members, never trained on) by how near their nearest sample is? (GAN-Leaks, full black-box)
            from .leakage import membership_auc

            out.update(membership_auc(members=train_d.images, nonmembers=self.real.images, fake=fake_d.images,
                                      seed=self.seed))
        out["fid_infinity"] = M.fid_infinity(real=rf, fake=ff, seed=self.seed)["fid_infinity"] if self.fid_inf else None
        out["warnings"] = sample_warnings(len(rf), len(ff), rf.shape[1], out.get("memorization_heldout_rate"))
        out["seed"] = self.seed
        out["seconds"] = round(time.perf_counter() - t0, 3)
        return _clean(out)


def evaluate(*, real: Any, fake: Any, train: Any = None, features: str | Any | None = None, n: int | None = None,
             seed: int = 0, extractor_options: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Metrics of ``fake`` against the real reference ``real`` (see `Evaluator` for the options).

    Returns a JSON-ready dict with ``fid``, ``kid_mean``, ``kid_std``, ``precision``, ``recall``,
    ``density``, ``coverage``, ``modes_covered``, ``mode_kl``, ``memorization``, ``features`` (the
    extractor identity, with the classifier's held-out accuracy), ``n_real``, ``n_fake`` and extras
    (``ct_score``, ``n_modes``, ``per_class_recall``, ``class_recall``, ``memorization_heldout_rate``,
    ``fid_infinity``, ...). Keys that do not apply are None. The evaluator for a given reference is
    reused across calls.
    """
    ev = get_evaluator(real=real, features=features, n=n, seed=seed, extractor_options=extractor_options, **kwargs)
    return ev.evaluate(fake=fake, train=train)


def get_evaluator(*, real: Any, features: str | Any | None = None, n: int | None = None, seed: int = 0,
                  extractor_options: dict[str, Any] | None = None, **kwargs: Any) -> Evaluator:
    """The `Evaluator` for these settings; for a named extractor the last few are kept and reused."""
    real_d = as_dataset(real, "real")
    features = default_features(real_d) if features is None else features
    if not isinstance(features, str):
        return Evaluator(real=real_d, features=features, n=n, seed=seed, extractor_options=extractor_options, **kwargs)
    key = _key(real_d.fingerprint, features, extractor_options or {}, n, seed, kwargs)
    ev = _EVALUATORS.get(key)
    if ev is None:
        ev = Evaluator(real=real_d, features=features, n=n, seed=seed, extractor_options=extractor_options, **kwargs)
        _EVALUATORS[key] = ev
        while len(_EVALUATORS) > _KEEP:
            _EVALUATORS.popitem(last=False)
    _EVALUATORS.move_to_end(key)
    return ev


# --------------------------------------------------------------------------- command line
def _is_run_dir(source: str) -> bool:
    from pathlib import Path

    p = Path(source)
    return p.is_dir() and ((p / "checkpoint.pt").is_file() or (p / "config.json").is_file())


def load_fake(source: str, n: int, seed: int = 0) -> Dataset:
    """A fake set from an image source (``.npz`` of samples, folder, ...) or a ``generative`` run folder,
    from which ``n`` samples are drawn with a seeded generator."""
    import datacheck

    if _is_run_dir(source):
        import torch

        import generative  # lazily: only this path needs the models

        model = generative.load(source)
        images = model.sample(int(n), generator=torch.Generator().manual_seed(seed))
        if hasattr(images, "detach"):
            images = images.detach().cpu().numpy()
        return as_dataset(np.asarray(images), "fake")
    return datacheck.load(source)


def add_evaluate_command(sub: Any) -> None:
    """Add ``reports evaluate`` to the ``reports`` parser's subcommands."""
    e = sub.add_parser("evaluate", help="measure generated images against a real reference set",
                       description="FID, KID, precision/recall/density/coverage, mode coverage and memorization "
                                   "of FAKE against the clean real reference REAL, written as JSON.")
    e.add_argument("--real", required=True, help="the clean real reference: 'digits', a folder, .npz, ...")
    e.add_argument("--fake", required=True, help="generated images: an .npz of samples (or any source) or a generative run folder")
    e.add_argument("--out", required=True, help="output JSON file")
    e.add_argument("--features", default=None, help=f"feature extractor: {', '.join(FEATURES.names())} "
                   "(default: classifier for a labeled reference, else random)")
    e.add_argument("--train", default=None, help="the generator's training set (enables memorization)")
    e.add_argument("--n", type=int, default=None, help=f"samples per set (default {DEFAULT_N}, or fewer if fewer exist)")
    e.add_argument("--weights", default=None, help="weights file for --features inception")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--k", type=int, default=5, help="neighbours for precision/recall/density/coverage")
    e.set_defaults(func=cmd_evaluate)


SMALL_N = 500  # below this many images per set, FID's bias (about c / N) dominates differences between arms
MAX_HELDOUT_ALARM = 0.05  # above this false-alarm rate on real held-out images, the memorization share says little


def sample_warnings(n_real: int, n_fake: int, dim: int, heldout_rate: float | None) -> list[str]:
    """What the numbers cannot carry at these sample sizes, said in words (empty when all is well)."""
    out = []
    n = min(n_real, n_fake)
    if n < dim:
        out.append(f"FID with {n} images in a {dim}-d feature space: the covariance is rank-deficient and FID is "
                   "biased; compare KID (unbiased) instead")
    elif n < SMALL_N:
        out.append(f"FID with only {n} images per set is biased (about c/N); compare KID (unbiased), or keep N "
                   "equal across everything compared")
    if heldout_rate is not None and heldout_rate > MAX_HELDOUT_ALARM:
        out.append(f"memorization share: {100 * heldout_rate:.3g}% of real held-out images are flagged too "
                   "(false alarms), so the share is not reliable here")
    return out


def _most_copied(cp: Any, fake: Dataset, train: Dataset, items: int = 6, per_item: int = 4) -> list[dict[str, Any]]:
    """The training items with the most copies among the fakes (most first), each with the indices and
    ids of up to ``per_item`` of its copies (most similar first)."""
    if not len(cp):
        return []
    fpos = {k: i for i, k in enumerate(fake.ids)}
    tpos = {k: i for i, k in enumerate(train.ids)}
    counts = cp.groupby("train_id", sort=False).size().sort_values(ascending=False, kind="stable")
    out = []
    for tid, n in counts.head(items).items():
        rows = cp[cp.train_id == tid].head(per_item)  # cp is sorted most similar first
        out.append({"train_id": str(tid), "train_index": tpos[tid], "n_copies": int(n),
                    "fake_ids": [str(f) for f in rows.fake_id], "fake_index": [fpos[f] for f in rows.fake_id],
                    "similarity": [round(float(v), 4) for v in rows.similarity]})
    return out


def cmd_evaluate(args: Any) -> int:
    import datacheck
    from datacheck.io import refuse_inside_source, write_json

    if args.weights is not None and args.features != "inception":
        raise UserError("--weights applies only to --features inception")
    real = datacheck.load(args.real)
    n = args.n if args.n is not None else min(len(real), DEFAULT_N)
    fake = load_fake(args.fake, n, args.seed)
    train = datacheck.load(args.train) if args.train else None
    for ds in (real, fake, train):
        refuse_inside_source(args.out, getattr(ds, "root", None), "--out",
                             "reports never writes into its input, pick a place outside it")
    opts = {"weights": args.weights} if args.features == "inception" else None
    res = evaluate(real=real, fake=fake, train=train, features=args.features, n=args.n, seed=args.seed,
                   extractor_options=opts, k=args.k)
    res["sources"] = {"real": args.real, "fake": args.fake, "train": args.train}
    write_json(args.out, res)
    # the reports' number format (3 significant digits); keys that do not apply (None) are left out here
    keys = ("fid", "kid_mean", "precision", "recall", "density", "coverage", "modes_covered", "mode_kl",
            "memorization", "n_real", "n_fake")
    shown = ", ".join(f"{k}={res[k] if isinstance(res[k], int) else fmt_num(res[k])}"
                      for k in keys if res.get(k) is not None)
    for w in res.get("warnings") or []:
        print(f"warning: {w}", file=sys.stderr)
    if res.get("copy_rate") is not None:
        shown += (f", copy_rate={fmt_num(res['copy_rate'])} (held-out {fmt_num(res['copy_rate_heldout'])}, "
                  f"p={res['copy_p']:.3g})")
    if res.get("mia_auc") is not None:
        shown += (f", mia_auc={fmt_num(res['mia_auc'])} [{fmt_num(res['mia_auc_low'])}, "
                  f"{fmt_num(res['mia_auc_high'])}]")
    print(shown)
    print(f"wrote {args.out}")
    return 0
