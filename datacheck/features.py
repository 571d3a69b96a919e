"""Feature extractors (a registry): images uint8 (N, C, H, W) -> float32 features (N, D).

Shared by datacheck's feature-based checks (outliers, label issues) and reports' metrics, so it
lives here, in the lowest package that uses it. Every extractor has an ``identity`` dict (name,
settings, weights hash) that goes into every result and cache key. None of them downloads anything.
"""
from __future__ import annotations

import hashlib
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
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
                h = self.net(x)  # (B, 4w, size/8, size/8)
                f = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
                out[s : s + len(f)] = f.cpu().numpy()
        return out


FEATURES.add("random", RandomCNNFeatures)
