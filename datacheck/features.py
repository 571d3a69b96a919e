"""Feature extractors (a registry): images uint8 (N, C, H, W) -> float32 features (N, D).

Shared by datacheck's feature-based checks (outliers, label issues) and reports' metrics, so it
lives here, in the lowest package that uses it. Every extractor has an ``identity`` dict (name,
settings, weights hash) that goes into every result and cache key. None of them downloads anything.
"""
from __future__ import annotations

import hashlib
import os
import logging
from typing import Any, Callable, Protocol

import numpy as np

from .errors import UserError
from .registry import Registry

log = logging.getLogger(__name__)


class FeatureExtractor(Protocol):
    name: str
    dim: int

    @property
    def identity(self) -> dict[str, Any]: ...

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) -> float32 (N, dim)."""
        ...


Factory = Callable[..., FeatureExtractor]
FEATURES: Registry[Factory] = Registry("feature extractor")


def get_extractor(name: str, **options: Any) -> FeatureExtractor:
    """Build the extractor registered as ``name`` with its ``options``."""
    return FEATURES.get(name)(**options)


def _check_images(images: np.ndarray) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise UserError(
            f"images must be uint8 (N, C, H, W), got {getattr(images, 'dtype', type(images).__name__)} "
            f"{getattr(images, 'shape', '')}"
        )
    return images


def _state_hash(state: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- pixels
class PixelFeatures:
    """Raw pixels scaled to [0, 1], flattened: a baseline for tiny images."""

    name = "pixels"

    def __init__(self, shape: tuple[int, int, int] | None = None) -> None:
        self.shape = shape
        self.dim = int(np.prod(shape)) if shape else 0

    @property
    def identity(self) -> dict[str, Any]:
        return {"name": self.name}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = _check_images(images)
        self.dim = int(np.prod(images.shape[1:]))
        return images.reshape(len(images), -1).astype(np.float32) / 255.0


FEATURES.add("pixels", PixelFeatures)


# ----------------------------------------------------------------------------- random
class RandomCNNFeatures:
    """A seeded, randomly initialized CNN (Naeem et al. 2020 argue for such embeddings).

    Inputs are resized to ``size`` x ``size`` and gray images repeated to 3 channels, so one
    network serves every dataset; features are the concatenated global average and max pools of
    the last block (dim = 2 * width * 4).
    """

    name = "random"

    def __init__(self, seed: int = 0, size: int = 32, width: int = 64, batch_size: int = 512,
                 device: str = "cpu") -> None:
        import torch
        from torch import nn

        self.seed, self.size, self.width, self.batch_size, self.device = seed, size, width, batch_size, device
        g = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        cin = 3
        for cout in (width, width * 2, width * 4):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            # kaiming init from our own generator: same weights on every machine and torch version
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (cin * 9)) ** 0.5)
                conv.bias.zero_()
            layers += [conv, nn.LeakyReLU(0.2)]
            cin = cout
        self.net = nn.Sequential(*layers).eval().to(device)
        self.dim = 2 * width * 4
        self._hash = _state_hash(self.net.state_dict())

    @property
    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "size": self.size, "width": self.width,
                "weights": self._hash}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        images = _check_images(images)
        out = np.empty((len(images), self.dim), np.float32)
        with torch.inference_mode():
            for s in range(0, len(images), self.batch_size):
                x = torch.from_numpy(images[s : s + self.batch_size]).to(self.device).float() / 127.5 - 1.0
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                if tuple(x.shape[2:]) != (self.size, self.size):  # at its own size bilinear is the identity: skipped
                    x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
                h = self.net(x)  # (B, 4w, size/8, size/8)
                f = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
                out[s : s + len(f)] = f.cpu().numpy()
        return out


FEATURES.add("random", RandomCNNFeatures)


# ----------------------------------------------------------------------------- classifier
def cache_dir() -> "Path":
    """Where trained extractors are cached: $DATAMATTERS_CACHE/features or ~/.cache/datamatters/features."""
    import os
    from pathlib import Path

    root = os.environ.get("DATAMATTERS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "datamatters")
    return Path(root) / "features"


def _to_float(images: np.ndarray, size: int | None, device: str) -> "Any":
    """uint8 (N, C, H, W) -> float tensor in [-1, 1], resized to ``size`` when given (the model's edge)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).float() / 127.5 - 1.0
    if size is not None and tuple(x.shape[2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def _stratified_holdout(labels: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: (train idx, held-out idx); each class with >= 2 items gives >= 1 to held-out."""
    rng = np.random.default_rng(seed)
    tr, ho = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_ho = int(round(frac * len(idx))) if len(idx) >= 2 else 0
        n_ho = min(max(n_ho, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        ho.append(idx[:n_ho])
        tr.append(idx[n_ho:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(ho))


def _classifier_net(in_ch: int, n_classes: int, width: int, feat_dim: int) -> "Any":
    """Two convolutions, a 4 x 4 adaptive pool (any input size), a hidden layer (the features), a head.
    Small on purpose: it must train in seconds on 2 shared CPU cores."""
    from torch import nn

    w = width
    body = nn.Sequential(
        nn.Conv2d(in_ch, w, 3, padding=1), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(2 * w * 16, feat_dim), nn.ReLU(),  # penultimate layer: the features
    )
    return nn.ModuleDict({"body": body, "head": nn.Linear(feat_dim, n_classes)})


_CLASSIFIER_MEMORY: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}


class ClassifierFeatures:
    """A small CNN trained on a labeled reference dataset (the clean real set); features = its
    penultimate layer (``dim`` = ``feat_dim``), `predict_proba` = its class probabilities.

    Training is seeded and uses a stratified ``holdout`` share of the reference (not trained on) to
    measure accuracy, reported in `identity`. The trained weights are cached in memory and on
    disk (`cache_dir`, written atomically) under a key made of the reference fingerprint, the
    training settings and the torch version, so the same reference never trains twice.
    Images larger than 32 px are resized to ``size`` (default 32) at the network's edge.
    """

    name = "classifier"
    VERSION = 1  # bump when the architecture or training changes: part of the cache key

    def __init__(self, reference: Any = None, *, epochs: int = 30, batch_size: int = 64, lr: float = 1e-2,
                 width: int = 16, feat_dim: int = 128, holdout: float = 0.2, seed: int = 0, size: int | None = None,
                 device: str = "cpu", use_cache: bool = True) -> None:
        import json

        import torch

        if reference is None or not hasattr(reference, "images") or not hasattr(reference, "labels"):
            raise UserError("the classifier extractor needs reference=a labeled Dataset (the clean real set) to train on")
        labels = np.asarray(reference.labels)
        known = labels >= 0
        classes = np.unique(labels[known])
        if len(classes) < 2:
            raise UserError("the classifier extractor needs a reference with at least 2 labeled classes")
        if not 0 < holdout < 1:
            raise UserError(f"holdout must be in (0, 1), got {holdout}")
        h, w = reference.images.shape[2:]
        self.size = size if size is not None else (None if max(h, w) <= 32 else 32)
        self.n_classes = int(max(getattr(reference, "n_classes", 0) or 0, classes.max() + 1))
        self.in_ch = int(reference.images.shape[1])
        self.device, self.batch_size = device, 512
        self.dim = int(feat_dim)
        self.settings = {"epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr), "width": int(width),
                         "feat_dim": int(feat_dim), "holdout": float(holdout), "seed": int(seed), "size": self.size}
        fp = getattr(reference, "fingerprint", None) or _array_fingerprint(reference.images, labels)
        self.reference_fingerprint = fp
        key_src = json.dumps({"v": self.VERSION, "fp": fp, "settings": self.settings, "torch": torch.__version__,
                              "n_classes": self.n_classes}, sort_keys=True)
        self.key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
        self.net = _classifier_net(self.in_ch, self.n_classes, width, feat_dim)
        state, meta = self._load_or_train(reference.images, labels, use_cache)
        self.net.load_state_dict(state)
        self.net.eval().to(device)
        self.meta = meta
        self._hash = _state_hash(self.net.state_dict())
        # the reference items it did not train on (the same seeded split _train uses): the only ones a
        # held-out comparison in its feature space may use, or it would compare with its own training images
        known = np.flatnonzero(labels >= 0)
        self.heldout_index = known[_stratified_holdout(labels[known], self.settings["holdout"], self.settings["seed"])[1]]

    # -- training and caching
    def _load_or_train(self, images: np.ndarray, labels: np.ndarray, use_cache: bool
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
        import torch

        if use_cache and self.key in _CLASSIFIER_MEMORY:
            return _CLASSIFIER_MEMORY[self.key]
        path = cache_dir() / f"{self.key}.pt"
        if use_cache and path.exists():
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                out = (blob["state_dict"], blob["meta"])
                _CLASSIFIER_MEMORY[self.key] = out
                log.info("classifier features: loaded %s", path)
                return out
            except Exception as e:  # a damaged cache entry is retrained, not fatal
                log.warning("classifier cache %s unreadable (%s); retraining", path, e)
        out = self._train(images, labels)
        if use_cache:
            from .io import atomic_path

            try:
                with atomic_path(path, suffix=".pt") as tmp:
                    torch.save({"state_dict": out[0], "meta": out[1]}, tmp)
            except OSError as e:  # read-only home: keep the in-memory copy
                log.warning("could not cache classifier at %s: %s", path, e)
            _CLASSIFIER_MEMORY[self.key] = out
        return out

    def _train(self, images: np.ndarray, labels: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
        import time

        import torch

        s = self.settings
        known = np.flatnonzero(labels >= 0)
        tr_rel, ho_rel = _stratified_holdout(labels[known], s["holdout"], s["seed"])
        tr, ho = known[tr_rel], known[ho_rel]
        t0 = time.perf_counter()
        threads = torch.get_num_threads()
        # a net this small gains nothing from threads, and on shared cores they make it many times slower
        torch.set_num_threads(1)
        try:
            return self._fit(images, labels, tr, ho, t0)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, images: np.ndarray, labels: np.ndarray, tr: np.ndarray, ho: np.ndarray, t0: float
             ) -> tuple[dict[str, Any], dict[str, Any]]:
        import time

        import torch
        import torch.nn.functional as F

        s = self.settings
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
            torch.manual_seed(s["seed"])
            net = _classifier_net(self.in_ch, self.n_classes, s["width"], s["feat_dim"]).to(self.device)
        gen = torch.Generator().manual_seed(s["seed"])
        x = _to_float(images[tr], self.size, self.device)
        y = torch.from_numpy(labels[tr]).to(self.device)
        opt = torch.optim.Adam(net.parameters(), lr=s["lr"], weight_decay=1e-4)
        steps_per_epoch = max(1, -(-len(tr) // s["batch_size"]))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s["lr"], total_steps=s["epochs"] * steps_per_epoch)
        net.train()
        for _ in range(s["epochs"]):
            perm = torch.randperm(len(tr), generator=gen).to(self.device)
            for b in range(steps_per_epoch):
                idx = perm[b * s["batch_size"] : (b + 1) * s["batch_size"]]
                loss = F.cross_entropy(net["head"](net["body"](x[idx])), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.inference_mode():
            xh = _to_float(images[ho], self.size, self.device)
            pred = net["head"](net["body"](xh)).argmax(1).cpu().numpy()
        acc = float((pred == labels[ho]).mean()) if len(ho) else float("nan")
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        meta = {"accuracy": acc, "n_train": int(len(tr)), "n_heldout": int(len(ho)),
                "train_seconds": round(time.perf_counter() - t0, 2)}
        log.info("classifier features: trained in %.1fs, held-out accuracy %.4f", meta["train_seconds"], acc)
        return state, meta

    # -- public
    @property
    def accuracy(self) -> float:
        return float(self.meta["accuracy"])

    @property
    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "accuracy": self.accuracy, "n_heldout": self.meta["n_heldout"],
                "weights": self._hash, "reference": self.reference_fingerprint[:16], "n_classes": self.n_classes,
                **self.settings}

    def _run(self, images: np.ndarray, head: bool) -> np.ndarray:
        import torch

        images = _check_images(images)
        if images.shape[1] != self.in_ch:
            raise UserError(f"classifier was trained on {self.in_ch}-channel images, got {images.shape[1]} channels")
        out = np.empty((len(images), self.n_classes if head else self.dim), np.float32)
        with torch.inference_mode():
            for s in range(0, len(images), self.batch_size):
                f = self.net["body"](_to_float(images[s : s + self.batch_size], self.size, self.device))
                if head:
                    f = torch.softmax(self.net["head"](f), 1)
                out[s : s + len(f)] = f.cpu().numpy()
        return out

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) -> float32 (N, feat_dim) penultimate activations."""
        return self._run(images, head=False)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) -> float32 (N, n_classes) softmax probabilities."""
        return self._run(images, head=True)


def _array_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
    return h.hexdigest()


FEATURES.add("classifier", ClassifierFeatures)


# ----------------------------------------------------------------------------- inception
def _fid_inception_net() -> "Any":
    """torchvision's Inception v3 with the FID network's block changes (as in the TF 2015-12-05 graph
    that pytorch-fid and torch-fidelity port): average pools exclude padding, and the last block
    max-pools. 1008 logits, no auxiliary head."""
    import torch
    import torch.nn.functional as F
    from torchvision.models import inception as tvi

    class _PoolExcludingPad:
        """The pool branch averages without counting the zero padding (the TF graph's pooling)."""

        def _forward(self, x):  # type: ignore[override]
            out = super()._forward(x)  # type: ignore[misc]
            out[-1] = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))  # type: ignore[attr-defined]
            return out

    class _A(_PoolExcludingPad, tvi.InceptionA):
        pass

    class _C(_PoolExcludingPad, tvi.InceptionC):
        pass

    class _E1(_PoolExcludingPad, tvi.InceptionE):
        pass

    class _E2(tvi.InceptionE):
        def _forward(self, x):  # type: ignore[override]
            out = super()._forward(x)
            out[-1] = self.branch_pool(F.max_pool2d(x, 3, 1, 1))
            return out

    with torch.random.fork_rng(devices=[]):
        net = tvi.Inception3(num_classes=1008, aux_logits=False, transform_input=False, init_weights=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = _A(192, pool_features=32), _A(256, pool_features=64), _A(288, pool_features=64)
    net.Mixed_6b = _C(768, channels_7x7=128)
    net.Mixed_6c, net.Mixed_6d = _C(768, channels_7x7=160), _C(768, channels_7x7=160)
    net.Mixed_6e = _C(768, channels_7x7=192)
    net.Mixed_7b, net.Mixed_7c = _E1(1280), _E2(2048)
    return net


class InceptionFeatures:
    """The standard FID Inception v3 (2048-d pool features), only from a weights file the user gives.

    ``weights`` = the FID Inception state dict used by pytorch-fid / torch-fidelity
    (``pt_inception-2015-12-05-6726825d.pth``). Never downloads. Inputs are resized to 299 x 299
    (bilinear; torch-fidelity's TF1-style resize differs slightly, so values agree with it closely but not
    bit for bit), gray repeated to RGB, scaled as (x - 128) / 128.
    """

    name = "inception"
    dim = 2048

    def __init__(self, weights: Any = None, batch_size: int = 32, device: str = "cpu") -> None:
        import os

        import torch

        if weights is None:
            raise UserError("the inception extractor needs the FID Inception weights file: pass weights=PATH "
                            "(CLI: --weights PATH), e.g. pt_inception-2015-12-05-6726825d.pth; nothing is downloaded")
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise UserError(f"inception weights file {path!r} does not exist (option weights=PATH / --weights PATH)")
        with open(path, "rb") as fh:
            self._hash = hashlib.sha256(fh.read()).hexdigest()[:16]
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{path}: not a readable torch state dict ({type(e).__name__})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise UserError(f"{path}: expected a state dict of the FID Inception network")
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
        net = _fid_inception_net()
        res = net.load_state_dict(state, strict=False)
        missing = [k for k in res.missing_keys if not k.endswith("num_batches_tracked")]
        if missing or res.unexpected_keys:
            raise UserError(f"{path}: not the FID Inception state dict (missing {missing[:3]}, "
                            f"unexpected {list(res.unexpected_keys)[:3]})")
        self.net = net.eval().to(device)
        self.path, self.batch_size, self.device = path, batch_size, device

    @property
    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self._hash, "file": os.path.basename(self.path)}

    def _features(self, x: "Any") -> "Any":
        n = self.net
        for m in (n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1, n.Conv2d_3b_1x1, n.Conv2d_4a_3x3,
                  n.maxpool2, n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d,
                  n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = m(x)
        return x.mean((2, 3))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        images = _check_images(images)
        out = np.empty((len(images), self.dim), np.float32)
        with torch.inference_mode():
            for s in range(0, len(images), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[s : s + self.batch_size])).to(self.device).float()
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
                out[s : s + len(x)] = self._features((x - 128.0) / 128.0).cpu().numpy()
        return out


FEATURES.add("inception", InceptionFeatures)
