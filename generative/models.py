"""The model registry: dcgan, sngan, cgan (GAN family) and vae, cvae (VAE family).

A model owns its networks, its EMA copy and its optimizers, and supplies one update,
``_step(images_float, labels, generator) -> {loss name: 0-d tensor}``, which the trainer calls and follows
with ``update_ema()`` (reading the losses back only at log boundaries); ``train_step`` is the same
with the losses as floats, for custom loops. `generative.population` runs the same update for M
members at once. All randomness inside a step comes from the ``generator`` argument, which is what
makes resume exact. ``sample(n, generator, labels)`` returns uint8 (N, C, H, W) like the training data.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from datacheck.errors import UserError
from datacheck.registry import Registry

from .augment import diff_augment, parse_policy
from .config import make_config
from .nets import Discriminator, Generator

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class GANConfig:
    """Options of the GAN family.

    loss: "bce" (non-saturating) or "hinge". d_steps: discriminator updates per generator update
    (each on its own real batch). ema: decay of the generator's EMA used for sampling (0 = off).
    augment: DiffAugment policy, a comma list of color, translation, cutout ("" = off).
    """

    z_dim: int = 32
    g_width: int = 0  # 0: sized from the image (auto_width)
    d_width: int = 0
    loss: str = "bce"
    spectral_norm: bool = False
    conditional: bool = False
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    d_steps: int = 1
    ema: float = 0.999
    augment: str = ""

    def __post_init__(self) -> None:
        if self.loss not in ("bce", "hinge"):
            raise UserError(f"loss must be 'bce' or 'hinge', got {self.loss!r}")
        _check_common(self)
        if self.d_steps < 1:
            raise UserError(f"d_steps must be >= 1, got {self.d_steps}")
        try:
            parse_policy(self.augment)
        except ValueError as e:
            raise UserError(str(e)) from None


@dataclass(frozen=True)
class VAEConfig:
    """Options of the VAE family.

    Reconstruction loss: Bernoulli log-likelihood on [0, 1] pixels (binary cross-entropy with
    logits, summed over pixels); ``beta`` weights the KL term to the N(0, I) prior.
    """

    z_dim: int = 16
    g_width: int = 0
    d_width: int = 0
    beta: float = 1.0
    conditional: bool = False
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    ema: float = 0.0

    def __post_init__(self) -> None:
        _check_common(self)
        if self.beta < 0:
            raise UserError(f"beta must be >= 0, got {self.beta}")


def auto_width(shape: tuple[int, int, int]) -> int:
    """Channels at full resolution when g_width/d_width is 0: 2x the image side, in [16, 64]
    (16 for 8x8 digits keeps a step at a few ms on a CPU core)."""
    return int(min(64, max(16, 2 * min(shape[1], shape[2]))))


def _check_common(cfg: Any) -> None:
    if cfg.z_dim < 1:
        raise UserError(f"z_dim must be >= 1, got {cfg.z_dim}")
    for k in ("g_width", "d_width"):
        if getattr(cfg, k) < 0:
            raise UserError(f"{k} must be >= 0 (0 = sized from the image), got {getattr(cfg, k)}")
    if not 0.0 <= cfg.ema < 1.0:
        raise UserError(f"ema must be in [0, 1), got {cfg.ema}")
    if len(cfg.betas) != 2:
        raise UserError(f"betas must be two numbers, got {cfg.betas}")


# ------------------------------------------------------------------------ base class
class GenerativeModel:
    """What the trainer and the API see. Subclasses set ``nets``, ``sampler_name``, ``optimizers``."""

    family: ClassVar[str] = ""
    config_cls: ClassVar[type] = object

    def __init__(self, name: str, config: Any, shape: tuple[int, int, int], n_classes: int,
                 class_names: tuple[str, ...] = ()) -> None:
        self.name, self.config, self.shape = name, config, tuple(int(s) for s in shape)
        self.conditional = bool(config.conditional)
        if self.conditional and n_classes < 1:
            raise UserError(f"model {name!r} is class-conditional and needs labeled data; this dataset has no classes")
        self.n_classes = int(n_classes) if self.conditional else 0
        self.class_names = tuple(class_names)
        self.device = torch.device("cpu")
        self.nets: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.sampler_name = ""  # key in nets of the network sample() runs
        self.ema_net: nn.Module | None = None
        self.batches_per_step = 1
        self.ema_updates = 0
        self._ema_lists: tuple[list[torch.Tensor], ...] | None = None

    # -- setup
    def _finish(self) -> None:
        if self.config.ema > 0:
            self.ema_net = copy.deepcopy(self.nets[self.sampler_name]).eval()
            for p in self.ema_net.parameters():
                p.requires_grad_(False)
        for n in self.nets.values():
            n.train()

    def modules(self) -> dict[str, nn.Module]:
        mods = dict(self.nets)
        if self.ema_net is not None:
            mods["ema"] = self.ema_net
        return mods

    def to(self, device: str | torch.device, channels_last: bool = False) -> "GenerativeModel":
        self.device = torch.device(device)
        fmt = torch.channels_last if channels_last else torch.preserve_format
        for m in self.modules().values():
            m.to(device=self.device, memory_format=fmt)
        self._ema_lists = None
        return self

    def compile(self) -> None:
        """torch.compile every network in place (state_dict keys stay the same)."""
        for m in self.modules().values():
            m.compile()
        self._ema_lists = None

    def n_params(self) -> dict[str, int]:
        return {k: sum(p.numel() for p in m.parameters()) for k, m in self.nets.items()}

    # -- data edge
    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float in the model's range."""
        raise NotImplementedError

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    # -- training
    def train_step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """One update of every network on a batch (x float (B', C, H, W) in the model's range,
        B' = batch_size * batches_per_step; y int64 (B',)). Returns the losses as floats."""
        losses = self._step(x, y, generator)
        self.update_ema()
        return {k: float(v) for k, v in losses.items()}

    def _step(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema_net is None:
            return
        src = self.nets[self.sampler_name]
        # Warm-up so early samples are not dominated by the random init: decay ramps to ema.
        step = self.ema_updates
        decay = min(self.config.ema, (1.0 + step) / (10.0 + step))
        self.ema_updates = step + 1
        if self._ema_lists is None:
            # Built once per device move: module.to() replaces buffer tensors (not parameters).
            self._ema_lists = ([p.detach() for p in self.ema_net.parameters()],
                               [p.detach() for p in src.parameters()],
                               list(self.ema_net.buffers()), list(src.buffers()))
        ep, sp, eb, sb = self._ema_lists
        torch._foreach_lerp_(ep, sp, 1.0 - decay)
        if eb:
            torch._foreach_copy_(eb, sb)

    def collapse_key(self) -> str | None:
        """Name of the loss that signals a collapsing discriminator (GANs), else None."""
        return None

    # -- sampling
    def sampling_net(self) -> nn.Module:
        return self.ema_net if self.ema_net is not None else self.nets[self.sampler_name]

    def default_labels(self, n: int) -> np.ndarray:
        """Balanced labels 0, 1, ..., K-1, 0, 1, ... for conditional sampling."""
        return (np.arange(n) % self.n_classes).astype(np.int64)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: np.ndarray | list[int] | int | None = None, batch_size: int = 1000) -> np.ndarray:
        """``n`` samples as uint8 (N, C, H, W). ``generator`` defaults to one seeded with 0.
        ``labels`` (conditional models): one int, or N ints, default balanced over classes."""
        return self.sample_with_labels(n, generator, labels, batch_size)[0]

    @torch.no_grad()
    def sample_with_labels(self, n: int, generator: torch.Generator | None = None,
                           labels: np.ndarray | list[int] | int | None = None,
                           batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray | None]:
        """Like `sample`, also returning the labels used (None for unconditional models)."""
        n = int(n)
        if n < 0:
            raise UserError(f"n must be >= 0, got {n}")
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        y_np: np.ndarray | None = None
        if self.conditional:
            if labels is None:
                y_np = self.default_labels(n)
            else:
                y_np = np.broadcast_to(np.asarray(labels, dtype=np.int64), (n,)).copy()
                if y_np.size and (y_np.min() < 0 or y_np.max() >= self.n_classes):
                    raise UserError(f"labels must lie in [0, {self.n_classes}), got {int(y_np.min())}..{int(y_np.max())}")
        elif labels is not None:
            raise UserError(f"model {self.name!r} is not class-conditional; labels cannot be given")
        net = self.sampling_net()
        was_training = net.training
        net.eval()
        out = []
        try:
            for s in range(0, n, batch_size):
                b = min(batch_size, n - s)
                z = torch.randn(b, self.config.z_dim, generator=generator, device=generator.device).to(self.device)
                y = torch.from_numpy(y_np[s:s + b]).to(self.device) if y_np is not None else None
                out.append(self.to_uint8(self._decode(net, z, y).float()))
        finally:
            net.train(was_training)
        c, h, w = self.shape
        imgs = np.concatenate(out) if out else np.zeros((0, c, h, w), np.uint8)
        return imgs, y_np

    def _decode(self, net: nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return net(z, y)

    # -- state
    def state_dict(self) -> dict[str, Any]:
        """Networks, EMA copy and optimizers (tensors and primitives only)."""
        sd: dict[str, Any] = {
            "nets": {k: m.state_dict() for k, m in self.nets.items()},
            "optim": {k: o.state_dict() for k, o in self.optimizers.items()},
            "ema_updates": int(self.ema_updates),
        }
        if self.ema_net is not None:
            sd["ema"] = self.ema_net.state_dict()
        return sd

    def load_state_dict(self, sd: dict[str, Any], optimizers: bool = True) -> None:
        for k, m in self.nets.items():
            m.load_state_dict(sd["nets"][k])
        if self.ema_net is not None:
            if "ema" in sd:
                self.ema_net.load_state_dict(sd["ema"])
            else:
                self.ema_net.load_state_dict(self.nets[self.sampler_name].state_dict())
        if optimizers:
            for k, o in self.optimizers.items():
                o.load_state_dict(sd["optim"][k])
        self.ema_updates = int(sd.get("ema_updates", 0))

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)


def _adam(params: Any, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    # fused=True: one kernel per parameter tensor instead of ~10 small ops each (the default
    # single-tensor Adam on CPU). On the tiny networks used for small images the per-op overhead
    # of the default was ~0.9 ms of a ~15 ms step (dcgan, 8x8, one thread); fused takes ~0.2 ms.
    # Same update rule and deterministic on CPU, so resume stays bitwise exact.
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), fused=True)


# ----------------------------------------------------------------------------- GANs
class GAN(GenerativeModel):
    """Generator + discriminator; BCE (non-saturating) or hinge loss; optional spectral norm,
    projection conditioning, DiffAugment, EMA and several D steps per G step."""

    family = "gan"
    config_cls = GANConfig

    def __init__(self, name: str, config: GANConfig, shape: tuple[int, int, int], n_classes: int,
                 class_names: tuple[str, ...] = ()) -> None:
        super().__init__(name, config, shape, n_classes, class_names)
        k = self.n_classes
        self.nets = {
            "G": Generator(self.shape, config.z_dim, config.g_width or auto_width(self.shape), k,
                           norm="bn", out="tanh"),
            "D": Discriminator(self.shape, config.d_width or auto_width(self.shape), 1, k,
                               spectral_norm=config.spectral_norm),
        }
        self.optimizers = {
            "G": _adam(self.nets["G"].parameters(), config.lr_g, config.betas),
            "D": _adam(self.nets["D"].parameters(), config.lr_d, config.betas),
        }
        self.sampler_name = "G"
        self.policy = parse_policy(config.augment)
        self.batches_per_step = config.d_steps
        self._finish()

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() / 127.5 - 1.0

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()

    def collapse_key(self) -> str | None:
        return "loss_d"

    def _aug(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return diff_augment(x, self.policy, g) if self.policy else x

    def _d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        if self.config.loss == "hinge":
            return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))

    def _g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        if self.config.loss == "hinge":
            return -fake.mean()
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))  # non-saturating

    def _step(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        G, D = self.nets["G"], self.nets["D"]
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        cfg = self.config
        chunks = x.chunk(self.batches_per_step)
        ychunks = y.chunk(self.batches_per_step)
        fake = torch.empty(0)
        yr: torch.Tensor | None = None
        for i, (xr, yr) in enumerate(zip(chunks, ychunks)):
            last = i == len(chunks) - 1
            z = torch.randn(xr.shape[0], cfg.z_dim, generator=g, device=g.device)
            # Fake classes are the real batch's classes: keeps the class balance of the data.
            yc = yr if self.conditional else None
            # The last D step's fakes keep their graph and are reused for the G step (one G
            # forward per step, as in the classic DCGAN loop).
            with torch.set_grad_enabled(last):
                fake = G(z, yc)
            # Real and fake go through D in one forward pass (D has no batch norm, so this
            # equals two passes with half the per-op overhead).
            both = self._aug(torch.cat([xr, fake.detach().to(xr.dtype)]), g)
            out = D(both, torch.cat([yr, yr]) if self.conditional else None).float()
            loss_d = self._d_loss(out[: xr.shape[0]], out[xr.shape[0]:])
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        # Generator: D is frozen so its weight gradients are not computed.
        for p in D.parameters():
            p.requires_grad_(False)
        out = D(self._aug(fake, g), yr if self.conditional else None).float()
        loss_g = self._g_loss(out)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        for p in D.parameters():
            p.requires_grad_(True)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}


# ----------------------------------------------------------------------------- VAEs
class VAE(GenerativeModel):
    """Conv encoder (the discriminator trunk with a 2*z_dim head) and conv decoder (the generator
    with logits out). Conditional: the decoder gets a class embedding and the encoder a one-hot."""

    family = "vae"
    config_cls = VAEConfig

    def __init__(self, name: str, config: VAEConfig, shape: tuple[int, int, int], n_classes: int,
                 class_names: tuple[str, ...] = ()) -> None:
        super().__init__(name, config, shape, n_classes, class_names)
        k = self.n_classes
        self.nets = {
            "enc": Discriminator(self.shape, config.d_width or auto_width(self.shape), 2 * config.z_dim, k,
                                 projection=False),
            "dec": Generator(self.shape, config.z_dim, config.g_width or auto_width(self.shape), k,
                             norm="none", out="logits"),
        }
        params = list(self.nets["enc"].parameters()) + list(self.nets["dec"].parameters())
        self.optimizers = {"vae": _adam(params, config.lr, config.betas)}
        self.sampler_name = "dec"
        self._finish()

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() / 255.0

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        return (torch.sigmoid(x) * 255.0).round().to(torch.uint8).cpu().numpy()

    def _step(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        enc, dec = self.nets["enc"], self.nets["dec"]
        yk = y if self.conditional else None
        mu, logvar = enc(x, yk).float().chunk(2, dim=1)
        logvar = logvar.clamp(-12.0, 8.0)  # keeps exp() finite early in training
        eps = torch.randn(mu.shape, generator=g, device=g.device).to(mu.device)
        z = mu + eps * torch.exp(0.5 * logvar)
        logits = dec(z.to(x.dtype), yk).float()
        n = x.shape[0]
        recon = F.binary_cross_entropy_with_logits(logits, x.float(), reduction="sum") / n
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum() / n
        loss = recon + self.config.beta * kl
        opt = self.optimizers["vae"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def reconstruct(self, images: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Encode and decode uint8 (N, C, H, W) images with the posterior means (for inspection)."""
        x = self.to_float(torch.from_numpy(images).to(self.device))
        y = torch.from_numpy(np.asarray(labels, np.int64)).to(self.device) if self.conditional else None
        enc = self.nets["enc"]
        was = enc.training
        enc.eval()
        mu, _ = enc(x, y).chunk(2, dim=1)
        enc.train(was)
        net = self.sampling_net()
        was = net.training
        net.eval()
        out = self.to_uint8(net(mu, y))
        net.train(was)
        return out


# -------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its class, preset options, default steps and a one-line description."""

    name: str
    cls: type[GenerativeModel]
    preset: dict[str, Any]
    default_steps: int
    description: str

    @property
    def config_cls(self) -> type:
        return self.cls.config_cls

    def make_config(self, options: dict[str, Any] | None = None) -> Any:
        return make_config(self.config_cls, {**self.preset, **(options or {})}, f"{self.name} model")

    def build(self, shape: tuple[int, int, int], n_classes: int, class_names: tuple[str, ...] = (),
              options: dict[str, Any] | None = None, config: Any = None) -> GenerativeModel:
        cfg = config if config is not None else self.make_config(options)
        return self.cls(self.name, cfg, shape, n_classes, class_names)

    def defaults(self) -> dict[str, Any]:
        return dataclasses.asdict(self.make_config())


MODELS: Registry[ModelSpec] = Registry("model")


def _register(name: str, cls: type[GenerativeModel], steps: int, description: str, **preset: Any) -> None:
    MODELS.add(name, ModelSpec(name, cls, preset, steps, description))


_register("dcgan", GAN, 800, "DCGAN, non-saturating BCE loss", loss="bce", spectral_norm=False,
          betas=(0.5, 0.999))
_register("sngan", GAN, 800, "hinge loss, spectral norm in D", loss="hinge", spectral_norm=True,
          betas=(0.0, 0.9))
_register("cgan", GAN, 800, "class-conditional GAN: projection D, class-conditional BN in G",
          loss="hinge", spectral_norm=True, conditional=True, betas=(0.0, 0.9))
_register("vae", VAE, 800, "conv VAE, Gaussian latent, Bernoulli (BCE) reconstruction, beta-KL")
_register("cvae", VAE, 800, "class-conditional conv VAE", conditional=True)


def default_steps(name: str) -> int:
    """Default number of training steps of model ``name``."""
    return MODELS.get(name).default_steps


def build_model(name: str, shape: tuple[int, int, int], n_classes: int = 0,
                class_names: tuple[str, ...] = (), **options: Any) -> GenerativeModel:
    """A fresh model for images of ``shape`` (C, H, W)."""
    return MODELS.get(name).build(shape, n_classes, class_names, options)

