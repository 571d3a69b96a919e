"""DiffAugment-style differentiable augmentation (Zhao et al. 2020) for GAN discriminators.

Applied to real and fake images alike, inside the graph, so gradients flow to the generator.
Every random draw comes from the ``torch.Generator`` passed in, which keeps resume exact.
Images are expected in [-1, 1].

Each operation is split in two: ``draw`` takes the per-image random parameters from a generator
(in a fixed order), ``apply`` uses them. A solo run does both at once (`diff_augment`); a fused
population (`generative.population`) draws each member's parameters from that member's own
generator, exactly as its solo run would, and applies all members' at once (`apply_params`).
"""
from __future__ import annotations

import torch

POLICIES = ("color", "translation", "cutout")

Params = list[tuple[str, tuple[torch.Tensor, ...]]]


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"translation,cutout"`` -> ("translation", "cutout"); raises ValueError on unknown parts."""
    parts = tuple(p.strip() for p in policy.split(",") if p.strip())
    bad = [p for p in parts if p not in POLICIES]
    if bad:
        raise ValueError(f"unknown augmentation {bad[0]!r}; expected a comma list of {', '.join(POLICIES)}")
    return parts


def _translation_size(h: int, w: int, ratio: float = 0.125) -> tuple[int, int]:
    return max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))


def _cutout_size(h: int, w: int, ratio: float = 0.5) -> tuple[int, int]:
    return max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))


def draw(policy: tuple[str, ...], b: int, h: int, w: int, g: torch.Generator) -> Params:
    """The random parameters of ``policy`` for ``b`` images of h x w, drawn from ``g`` (on g's
    device) in the order the solo augmentation has always used."""
    out: Params = []
    for name in policy:
        if name == "color":  # brightness, saturation, contrast: (B, 1, 1, 1) each
            out.append((name, tuple(torch.rand((b, 1, 1, 1), generator=g, device=g.device) for _ in range(3))))
        elif name == "translation":  # shifts (B, 1) in [-s, s]
            sh, sw = _translation_size(h, w)
            ty = torch.randint(-sh, sh + 1, (b, 1), generator=g, device=g.device)
            tx = torch.randint(-sw, sw + 1, (b, 1), generator=g, device=g.device)
            out.append((name, (ty, tx)))
        elif name == "cutout":  # square centres (B, 1)
            ch, cw = _cutout_size(h, w)
            cy = torch.randint(0, h + (1 - ch % 2), (b, 1), generator=g, device=g.device)
            cx = torch.randint(0, w + (1 - cw % 2), (b, 1), generator=g, device=g.device)
            out.append((name, (cy, cx)))
        else:  # parse_policy refuses unknown names before this
            raise ValueError(f"unknown augmentation {name!r}")
    return out


def concat_params(per_member: list[Params]) -> Params:
    """Members' parameters (each for B images) -> one set for the (B * M) images of a fused batch laid
    out batch-major, image i of member m at row i * M + m."""
    out: Params = []
    for k, (name, first) in enumerate(per_member[0]):
        parts = []
        for j in range(len(first)):
            stacked = torch.stack([p[k][1][j] for p in per_member], dim=1)  # (B, M, ...)
            parts.append(stacked.reshape(-1, *stacked.shape[2:]))
        out.append((name, tuple(parts)))
    return out


def color(x: torch.Tensor, r: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Random brightness, saturation and contrast per image."""
    brightness, saturation, contrast = (t.to(device=x.device, dtype=x.dtype) for t in r)
    x = x + (brightness - 0.5)
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * (saturation * 2) + mean_c
    mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean_all) * (contrast + 0.5) + mean_all


def translation(x: torch.Tensor, r: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Shift each image by up to 1/8 of its size, filling with zeros."""
    b, _, h, w = x.shape
    sh, sw = _translation_size(h, w)
    ty, tx = (t.to(x.device) for t in r)
    rows = torch.arange(h, device=x.device)[None] + ty + sh  # (B, H) index into the padded image
    cols = torch.arange(w, device=x.device)[None] + tx + sw
    xp = torch.nn.functional.pad(x, (sw, sw, sh, sh))
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, r: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Zero one random square of half the image size per image."""
    _, _, h, w = x.shape
    ch, cw = _cutout_size(h, w)
    cy, cx = (t.to(x.device) for t in r)
    ar_h = torch.arange(h, device=x.device)[None]
    ar_w = torch.arange(w, device=x.device)[None]
    in_h = (ar_h >= cy - ch // 2) & (ar_h < cy - ch // 2 + ch)
    in_w = (ar_w >= cx - cw // 2) & (ar_w < cx - cw // 2 + cw)
    keep = ~(in_h[:, :, None] & in_w[:, None, :])
    return x * keep[:, None].to(x.dtype)


_FUNCS = {"color": color, "translation": translation, "cutout": cutout}


def apply_params(x: torch.Tensor, params: Params) -> torch.Tensor:
    """Apply drawn parameters (x: float (B, C, H, W) in [-1, 1], params for B images)."""
    for name, r in params:
        x = _FUNCS[name](x, r)
    return x


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], g: torch.Generator) -> torch.Tensor:
    """Apply the parts of ``policy`` in order (x: float (B, C, H, W) in [-1, 1])."""
    b, _, h, w = x.shape
    return apply_params(x, draw(policy, b, h, w, g))
