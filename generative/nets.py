"""Network building blocks shared by every model: one generator/decoder and one
discriminator/encoder, each sized from the image shape.

Sizing rule (8 to 64 px, 1 or 3 channels): halve the image size while both sides stay even and
at least 4, which gives a start resolution ``(sh, sw)`` (4x4 for 8/16/32/64 px, 7x7 for 28 px)
and ``k`` up- or down-sampling blocks. Channels double at each coarser level (capped at 8x width).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm as _sn


# _PARITY[p, t, k]: weight of 3x3 kernel row k in 2-tap row t for output rows of parity p (see upsample_conv)
_PARITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))
_parity_cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  groups: int = 1) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1, groups=groups)``
    for a 3x3 ``weight`` (O, C / groups, 3, 3), computed without the upsampled tensor:
    (B, C, H, W) -> (B, O, 2H, 2W).

    Output pixel (2i + py, 2j + px) sees low-resolution rows {i - 1, i} (py = 0) or {i, i + 1} (py = 1),
    and likewise columns, so each of the four parities is a 2x2 convolution of x whose taps are sums of
    the 3x3 taps. One 2x2 convolution with 4*O outputs on the padded (H + 1, W + 1) grid computes all
    four; each parity then reads its grid shifted by (py, px). That is 16 (H+1)(W+1) C O multiply-adds
    instead of 36 H W C O: 1.4-2.9x faster forward + backward than upsample + conv at the generator's
    shapes (measured in benchmarks/RESULTS.md). Same parameters; equal up to float rounding.
    ``groups`` > 1 is the fused population's form (one group per member, see generative.fused)."""
    b, c, h, w = x.shape
    o = weight.shape[0]
    og, cg = o // groups, weight.shape[1]
    key = (weight.device, weight.dtype)
    a = _parity_cache.get(key)
    if a is None:
        a = _parity_cache[key] = torch.tensor(_PARITY, dtype=weight.dtype, device=weight.device)
    # k[g, py, px, o, c, ty, tx] = sum_{ky, kx} a[py, ty, ky] a[px, tx, kx] weight[g, o, c, ky, kx]: each
    # group's 4 * O/groups outputs stay together, as a grouped convolution needs
    k = torch.einsum("pak,qbl,gockl->gpqocab", a, a, weight.view(groups, og, cg, 3, 3)).reshape(4 * o, cg, 2, 2)
    y = F.conv2d(x, k.to(x.dtype), None, 1, 1, 1, groups)
    # reshape, not view: a channels-last y (the fused CPU path's layout) cannot be viewed this way
    y = y.reshape(b * groups, 2, 2, og, h + 1, w + 1)  # (B * G, py, px, O/G, H+1, W+1)
    rows = [torch.stack([y[:, py, px, :, py:py + h, px:px + w] for px in (0, 1)], dim=-1) for py in (0, 1)]
    out = torch.stack(rows, dim=3).reshape(b, o, 2 * h, 2 * w)  # (B*G, O/G, H, py, W, px) -> (B, O, 2H, 2W)
    return out if bias is None else out + bias.view(1, -1, 1, 1).to(out.dtype)


def plan(h: int, w: int) -> tuple[int, int, int]:
    """(start_h, start_w, k): the coarsest resolution and the number of x2 blocks to reach (h, w)."""
    k = 0
    while h % 2 == 0 and w % 2 == 0 and h // 2 >= 4 and w // 2 >= 4:
        h, w, k = h // 2, w // 2, k + 1
    return h, w, k


def channels(width: int, level: int) -> int:
    """Channels at ``level`` x2-steps below the output resolution."""
    return min(width * 2**level, width * 8)


class CondNorm(nn.Module):
    """BatchNorm2d whose scale and shift come from the class (``n_classes > 0``) or are plain
    affine parameters; ``norm="none"`` makes it the identity."""

    def __init__(self, ch: int, n_classes: int, norm: str) -> None:
        super().__init__()
        self.kind = norm
        self.n_classes = n_classes
        if norm == "none":
            return
        if n_classes > 0:
            self.bn = nn.BatchNorm2d(ch, affine=False)
            self.gamma = nn.Embedding(n_classes, ch)
            self.beta = nn.Embedding(n_classes, ch)
            nn.init.ones_(self.gamma.weight)
            nn.init.zeros_(self.beta.weight)
        else:
            self.bn = nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "none":
            return x
        x = self.bn(x)
        if self.n_classes > 0:
            x = x * self.gamma(y)[:, :, None, None] + self.beta(y)[:, :, None, None]
        return x


class Generator(nn.Module):
    """z (B, z_dim) [+ class y] -> image (B, C, H, W).

    Linear to the start resolution, then ``k`` blocks of nearest x2 upsample + 3x3 conv + norm +
    ReLU, then a 3x3 conv to C channels. ``out="tanh"`` for GANs ([-1, 1]); ``out="logits"`` for
    VAE decoders (sigmoid gives [0, 1] Bernoulli means). Conditional when ``n_classes > 0``: a
    class embedding is concatenated to z, and with ``norm="bn"`` every norm is class-conditional.
    """

    def __init__(self, shape: tuple[int, int, int], z_dim: int, width: int, n_classes: int = 0,
                 norm: str = "bn", out: str = "tanh") -> None:
        super().__init__()
        c, h, w = shape
        sh, sw, k = plan(h, w)
        self.z_dim, self.n_classes, self.out, self.start = z_dim, n_classes, out, (sh, sw)
        self.emb = nn.Embedding(n_classes, z_dim) if n_classes > 0 else None
        ch0 = channels(width, k)
        self.fc = nn.Linear(z_dim * (2 if n_classes > 0 else 1), ch0 * sh * sw)
        self.norm0 = CondNorm(ch0, n_classes, norm)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for level in range(k - 1, -1, -1):
            cin, cout = channels(width, level + 1), channels(width, level)
            self.convs.append(nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"))
            self.norms.append(CondNorm(cout, n_classes, norm))
        self.to_img = nn.Conv2d(channels(width, 0), c, 3, padding=1)
        # upsample + conv by upsample_conv (True) or as written, interpolate then conv2d (False: the
        # stock formulation, e.g. for a reference loop); same parameters either way. The fused form is
        # used where C * O * H * W >= 2^17: below, its extra small ops cost more than the multiply-adds
        # it saves (forward + backward, batch 64, 2 threads: 32->16 channels on 4x4 2.85 ms stock
        # against 3.58 fused; 128->64 on 4x4 25.5 against 18.3; 64->32 on 8x8 19.5 against 15.1)
        self.fused_upsample = True

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.emb is not None:
            z = torch.cat([z, self.emb(y)], dim=1)
        x = self.fc(z).view(z.shape[0], -1, *self.start)
        x = F.relu(self.norm0(x, y))
        for conv, norm in zip(self.convs, self.norms):
            if self.fused_upsample and x.shape[1] * conv.out_channels * x.shape[2] * x.shape[3] >= 2**17:
                x = upsample_conv(x, conv.weight, conv.bias)
            else:
                x = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
            x = F.relu(norm(x, y))
        x = self.to_img(x)
        return torch.tanh(x) if self.out == "tanh" else x


class Discriminator(nn.Module):
    """image (B, C, H, W) [+ class y] -> (B, out_dim).

    A 3x3 conv, then ``k`` 4x4 stride-2 convs down to the start resolution (LeakyReLU 0.2, no
    batch norm, so real and fake can share one forward pass), flatten, linear head. With
    ``projection=True`` and ``n_classes > 0`` the class enters as a projection term
    ``<embed(y), features>`` (Miyato & Koyama 2018); with ``projection=False`` a one-hot class is
    concatenated to the features (used by the conditional VAE encoder).
    """

    def __init__(self, shape: tuple[int, int, int], width: int, out_dim: int = 1, n_classes: int = 0,
                 spectral_norm: bool = False, projection: bool = True) -> None:
        super().__init__()
        c, h, w = shape
        sh, sw, k = plan(h, w)
        wrap = _sn if spectral_norm else (lambda m: m)
        self.n_classes, self.projection = n_classes, projection
        layers: list[nn.Module] = [wrap(nn.Conv2d(c, channels(width, 0), 3, padding=1))]
        for level in range(k):
            layers.append(wrap(nn.Conv2d(channels(width, level), channels(width, level + 1), 4, 2, 1)))
        self.convs = nn.ModuleList(layers)
        feat = channels(width, k) * sh * sw
        extra = n_classes if (n_classes > 0 and not projection) else 0
        self.head = wrap(nn.Linear(feat + extra, out_dim))
        self.embed = wrap(nn.Embedding(n_classes, feat)) if (n_classes > 0 and projection) else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        h = x.flatten(1)
        if self.n_classes > 0 and not self.projection:
            h = torch.cat([h, F.one_hot(y, self.n_classes).to(h.dtype)], dim=1)
        out = self.head(h)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(dim=1, keepdim=True)
        return out
