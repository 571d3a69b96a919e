"""DiffAugment-style differentiable augmentation (Zhao et al. 2020) for GAN discriminators.

Applied to real and fake images alike, inside the graph, so gradients flow to the generator.
Every random draw comes from the ``torch.Generator`` passed in, which keeps resume exact.
Images are expected in [-1, 1].
"""
from __future__ import annotations

import torch

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"translation,cutout"`` -> ("translation", "cutout"); raises ValueError on unknown parts."""
    parts = tuple(p.strip() for p in policy.split(",") if p.strip())
    bad = [p for p in parts if p not in POLICIES]
    if bad:
        raise ValueError(f"unknown augmentation {bad[0]!r}; expected a comma list of {', '.join(POLICIES)}")
    return parts


def _rand(shape: tuple[int, ...], g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=g.device).to(device=like.device, dtype=like.dtype)


def color(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random brightness, saturation and contrast per image."""
    b = x.shape[0]
    x = x + (_rand((b, 1, 1, 1), g, x) - 0.5)
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * (_rand((b, 1, 1, 1), g, x) * 2) + mean_c
    mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean_all) * (_rand((b, 1, 1, 1), g, x) + 0.5) + mean_all


def translation(x: torch.Tensor, g: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size, filling with zeros."""
    b, _, h, w = x.shape
    sh, sw = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    ty = torch.randint(-sh, sh + 1, (b, 1), generator=g, device=g.device).to(x.device)
    tx = torch.randint(-sw, sw + 1, (b, 1), generator=g, device=g.device).to(x.device)
    rows = torch.arange(h, device=x.device)[None] + ty + sh  # (B, H) index into the padded image
    cols = torch.arange(w, device=x.device)[None] + tx + sw
    xp = torch.nn.functional.pad(x, (sw, sw, sh, sh))
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, g: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of ``ratio`` of the image size per image."""
    b, _, h, w = x.shape
    ch, cw = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1), generator=g, device=g.device).to(x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1), generator=g, device=g.device).to(x.device)
    ar_h = torch.arange(h, device=x.device)[None]
    ar_w = torch.arange(w, device=x.device)[None]
    in_h = (ar_h >= cy - ch // 2) & (ar_h < cy - ch // 2 + ch)
    in_w = (ar_w >= cx - cw // 2) & (ar_w < cx - cw // 2 + cw)
    keep = ~(in_h[:, :, None] & in_w[:, None, :])
    return x * keep[:, None].to(x.dtype)


_FUNCS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], g: torch.Generator) -> torch.Tensor:
    """Apply the parts of ``policy`` in order (x: float (B, C, H, W) in [-1, 1])."""
    for name in policy:
        x = _FUNCS[name](x, g)
    return x
