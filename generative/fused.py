"""M copies of one network as stacked tensors, run as one computation ("horizontal fusion", HFTA).

A `FusedNet` is built from M solo networks of one architecture (a
`~generative.nets.Generator` or `~generative.nets.Discriminator`, each initialised
under its own seed). Every parameter and buffer is stacked along a new leading member axis under
the solo network's own ``state_dict`` key, so member m's solo state is ``{k: t[m]}`` and back: no
name mapping, spectral norm's ``_u``/``_v`` and BatchNorm's running statistics included.

How the layers fuse (members never mix; nothing reduces across the member axis):

- convolutions: one grouped convolution, ``groups = M``, on activations laid out (B, M * C, H, W);
- linear layers: one batched matmul, ``baddbmm`` on (M, B, F);
- BatchNorm: one ``batch_norm`` over M * C channels, so statistics and running buffers are per member;
- embeddings and class-conditional BN: one lookup in the (M * K, E) table with per-member offsets;
- spectral norm: batched power iteration (``bmm``), one iteration per weight use in training mode
  and the same ``u``/``v`` update order as ``torch.nn.utils.parametrizations.spectral_norm``;
- the generator's upsample + 3x3 convolution: `generative.nets.upsample_conv` with groups.

Outputs equal the solo networks' up to float rounding (tests compare at rtol 1e-4).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .nets import Discriminator, Generator, upsample_conv

_SN = ".parametrizations.weight"


class FusedNet:
    """Stacked parameters (leaf tensors with grad, (M, *solo shape)) and buffers of M solo networks."""

    def __init__(self, nets: list[nn.Module]) -> None:
        if not nets:
            raise ValueError("a fused network needs at least one member")
        sds = [n.state_dict() for n in nets]
        keys = list(sds[0])
        for sd in sds[1:]:
            if list(sd) != keys or any(sd[k].shape != sds[0][k].shape for k in keys):
                raise ValueError("fused members must have the same architecture")
        names = {name for name, _ in nets[0].named_parameters()}
        self.params: dict[str, torch.Tensor] = {
            k: torch.stack([sd[k].detach() for sd in sds]).requires_grad_() for k in keys if k in names}
        self.buffers: dict[str, torch.Tensor] = {
            k: torch.stack([sd[k].detach() for sd in sds]) for k in keys if k not in names}
        self.keys = keys  # the solo state_dict order
        self.training = True

    @property
    def members(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member ``m``'s solo ``state_dict`` (copies)."""
        return {k: (self.params[k] if k in self.params else self.buffers[k])[m].detach().clone() for k in self.keys}

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the members at indices ``keep`` (new leaf tensors: optimizers must select too)."""
        for k, p in self.params.items():
            self.params[k] = p.detach().index_select(0, keep).requires_grad_(p.requires_grad)
        for k, b in self.buffers.items():
            self.buffers[k] = b.index_select(0, keep)

    def to(self, device: torch.device) -> "FusedNet":
        for k, p in self.params.items():
            self.params[k] = p.detach().to(device).requires_grad_(p.requires_grad)
        for k, b in self.buffers.items():
            self.buffers[k] = b.to(device)
        return self

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"params": {k: p.detach() for k, p in self.params.items()}, "buffers": dict(self.buffers)}

    def load_state(self, st: dict[str, dict[str, torch.Tensor]]) -> None:
        for k in self.params:
            self.params[k] = st["params"][k].clone().requires_grad_()
        for k in self.buffers:
            self.buffers[k] = st["buffers"][k].clone()

    def requires_grad_(self, flag: bool) -> None:
        for p in self.params.values():
            p.requires_grad_(flag)

    # -- layers
    def weight(self, prefix: str) -> torch.Tensor:
        """The weight of layer ``prefix`` (M, ...), spectrally normalised where the solo layer is."""
        w = self.params.get(prefix + ".weight")
        if w is not None:
            return w
        w = self.params[prefix + _SN + ".original"]
        u, v = self.buffers[prefix + _SN + ".0._u"], self.buffers[prefix + _SN + ".0._v"]  # (M, O), (M, I)
        wm = w.flatten(2)  # (M, O, I): dim 0 of every solo layer here (conv, linear, embedding)
        if self.training:
            with torch.no_grad():  # one power iteration per use, u first, in place (as torch does)
                u.copy_(F.normalize(torch.bmm(wm, v.unsqueeze(2)).squeeze(2), dim=1, eps=1e-12))
                v.copy_(F.normalize(torch.bmm(wm.transpose(1, 2), u.unsqueeze(2)).squeeze(2), dim=1, eps=1e-12))
        sigma = (u * torch.bmm(wm, v.unsqueeze(2)).squeeze(2)).sum(1)  # (M,)
        return w / sigma.view(-1, *([1] * (w.dim() - 1)))

    def conv(self, prefix: str, x: torch.Tensor, stride: int = 1, padding: int = 1) -> torch.Tensor:
        """Grouped convolution: (B, M * C, H, W) -> (B, M * O, H', W')."""
        w = self.weight(prefix)
        m, o = w.shape[:2]
        b = self.params.get(prefix + ".bias")
        # channels-last: oneDNN's grouped convolutions on CPU are 1.2-5x faster in it than in NCHW
        # (forward + backward at the 8-16 px shapes; 5x where each group has 1 output channel, the
        # to-image layer); the nets keep activations in it from their first layer on, so this is a no-op
        x = x.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w.reshape(m * o, *w.shape[2:]), None if b is None else b.reshape(-1),
                        stride, padding, 1, m)

    def linear(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        """Batched linear layer: (M, B, I) -> (M, B, O)."""
        w, b = self.weight(prefix), self.params[prefix + ".bias"]
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    def embed(self, prefix: str, y: torch.Tensor) -> torch.Tensor:
        """Per-member embedding lookup: labels (M, B) -> (M, B, E)."""
        table = self.weight(prefix)  # (M, K, E)
        m, k, e = table.shape
        offs = (torch.arange(m, device=y.device) * k).unsqueeze(1)
        return F.embedding(y + offs, table.reshape(m * k, e))

    def norm(self, prefix: str, kind: str, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """BatchNorm2d with per-member statistics (class-conditional scale and shift when the solo
        CondNorm has class embeddings) on (B, M * C, H, W); ``kind="none"`` is the identity."""
        if kind == "none":
            return x
        bn = prefix + ".bn"
        rm, rv = self.buffers[bn + ".running_mean"], self.buffers[bn + ".running_var"]
        w, b = self.params.get(bn + ".weight"), self.params.get(bn + ".bias")
        if self.training:
            self.buffers[bn + ".num_batches_tracked"].add_(1)
        x = F.batch_norm(x, rm.view(-1), rv.view(-1), None if w is None else w.reshape(-1),
                         None if b is None else b.reshape(-1), self.training, 0.1, 1e-5)
        if prefix + ".gamma.weight" in self.params:
            bsz = x.shape[0]
            g = self.embed(prefix + ".gamma", y).transpose(0, 1).reshape(bsz, -1, 1, 1)  # (B, M * C, 1, 1)
            s = self.embed(prefix + ".beta", y).transpose(0, 1).reshape(bsz, -1, 1, 1)
            x = x * g + s
        return x


class FusedGenerator(FusedNet):
    """M `~generative.nets.Generator` s: z (M, B, z_dim) [+ y (M, B)] -> (B, M, C, H, W)."""

    def __init__(self, nets: list[Generator]) -> None:
        super().__init__(nets)
        t = nets[0]
        self.start, self.n_classes, self.out = t.start, t.n_classes, t.out
        self.fused_upsample = t.fused_upsample
        self.n_convs = len(t.convs)
        self.norm_kind = t.norm0.kind
        self.shape = (t.to_img.out_channels,)

    def __call__(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        m, bsz = z.shape[:2]
        if self.n_classes > 0:
            z = torch.cat([z, self.embed("emb", y)], dim=2)
        x = self.linear("fc", z).transpose(0, 1).reshape(bsz, -1, *self.start)  # (B, M * C0, sh, sw)
        x = x.contiguous(memory_format=torch.channels_last)  # here, while small: see FusedNet.conv
        x = F.relu(self.norm("norm0", self.norm_kind, x, y))
        for i in range(self.n_convs):
            prefix = f"convs.{i}"
            w = self.params[prefix + ".weight"]  # (M, O, C, 3, 3)
            o, c = w.shape[1], w.shape[2]
            # the solo network's size rule, per member, so each member computes what it would alone
            if self.fused_upsample and c * o * x.shape[2] * x.shape[3] >= 2**17:
                b = self.params.get(prefix + ".bias")
                x = upsample_conv(x, w.reshape(m * o, c, 3, 3), None if b is None else b.reshape(-1), groups=m)
            else:
                x = self.conv(prefix, F.interpolate(x, scale_factor=2.0, mode="nearest"))
            x = F.relu(self.norm(f"norms.{i}", self.norm_kind, x, y))
        x = self.conv("to_img", x)
        x = x.reshape(bsz, m, -1, *x.shape[2:])
        return torch.tanh(x) if self.out == "tanh" else x


class FusedDiscriminator(FusedNet):
    """M `~generative.nets.Discriminator` s: (B, M, C, H, W) [+ y (M, B)] -> (M, B, out_dim)."""

    def __init__(self, nets: list[Discriminator]) -> None:
        super().__init__(nets)
        t = nets[0]
        self.n_classes, self.projection = t.n_classes, t.projection
        self.n_convs = len(t.convs)
        self.has_embed = t.embed is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        bsz, m = x.shape[:2]
        h = x.reshape(bsz, -1, *x.shape[3:]).contiguous(memory_format=torch.channels_last)
        for i in range(self.n_convs):
            k = self.params.get(f"convs.{i}.weight", self.params.get(f"convs.{i}{_SN}.original")).shape[-1]
            h = self.conv(f"convs.{i}", h, stride=1 if k == 3 else 2, padding=1)
            if i == self.n_convs - 1:
                # back to NCHW before the activation: the flatten below needs it, and an activation whose
                # gradient arrives in another memory layout than its input takes a slow path (5-8x)
                h = h.contiguous()
            h = F.leaky_relu(h, 0.2)
        # (M, B, features), each member's in solo order; contiguous, so the matmul and the projection's
        # product run on dense rows
        h = h.reshape(bsz, m, -1).transpose(0, 1).contiguous()
        if self.n_classes > 0 and not self.projection:
            h = torch.cat([h, F.one_hot(y, self.n_classes).to(h.dtype)], dim=2)
        out = self.linear("head", h)
        if self.has_embed:
            out = out + (self.embed("embed", y) * h).sum(dim=2, keepdim=True)
        return out


def fuse(nets: list[nn.Module]) -> FusedNet:
    """The fused form of M solo networks of one class."""
    kind = type(nets[0])
    if any(type(n) is not kind for n in nets):
        raise ValueError("fused members must be networks of one class")
    if kind is Generator:
        return FusedGenerator(nets)  # type: ignore[arg-type]
    if kind is Discriminator:
        return FusedDiscriminator(nets)  # type: ignore[arg-type]
    raise ValueError(f"no fused form for {kind.__name__}")


__all__ = ["FusedNet", "FusedGenerator", "FusedDiscriminator", "fuse"]
