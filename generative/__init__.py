"""generative: train GANs and VAEs on any datacheck Dataset with one trainer and exact resume.

    import generative
    run = generative.train(model="dcgan", data="digits", out="runs/dcgan")
    model = generative.load("runs/dcgan")
    images = model.sample(64, generator=torch.Generator().manual_seed(0))  # uint8 (64, 1, 8, 8)
"""
from __future__ import annotations

from .api import load, train
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .population import Member, MemberResult, train_population
from .models import GAN, MODELS, VAE, GANConfig, GenerativeModel, ModelSpec, VAEConfig, build_model, default_steps
from .trainer import NonFiniteLossError, Run, estimate_seconds_per_step

__all__ = [
    "GAN", "GANConfig", "GenerativeModel", "MODELS", "Member", "MemberResult", "ModelSpec", "NonFiniteLossError", "Run",
    "TrainConfig", "VAE", "VAEConfig", "build_model", "default_steps", "estimate_seconds_per_step",
    "load", "load_checkpoint", "train", "train_population",
]
