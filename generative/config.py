"""Frozen configs and the one place that turns user options into them (unknown keys are an error)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

from datacheck.errors import UserError

C = TypeVar("C")


@dataclass(frozen=True)
class TrainConfig:
    """Options of the trainer (the same for every model).

    steps: generator (or VAE) updates in total; None means the model's default.
    checkpoint_every / sample_every: write RUN/checkpoint.pt / RUN/samples.png every K steps
        (and always at the end); 0 means only at the end.
    log_every: steps per JSONL record (losses are averaged over them).
    amp: bf16 autocast; "auto" turns it on for CUDA only. channels_last likewise.
    compile: wrap the networks with torch.compile (CUDA mainly).
    threads: CPU threads for torch during the run (restored after); 0 = torch's setting (all
        cores). Use 1 when several runs share the machine.
    """

    steps: int | None = None
    batch_size: int = 64
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 500
    log_every: int = 50
    device: str = "cpu"
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    progress: bool = False
    threads: int = 0

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 0:
            raise UserError(f"steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")
        for k in ("checkpoint_every", "sample_every"):
            if getattr(self, k) < 0:
                raise UserError(f"{k} must be >= 0, got {getattr(self, k)}")
        if self.threads < 0:
            raise UserError(f"threads must be >= 0, got {self.threads}")
        if self.log_every < 1:
            raise UserError(f"log_every must be >= 1, got {self.log_every}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise UserError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        for k in ("amp", "channels_last"):
            if getattr(self, k) not in ("auto", "on", "off"):
                raise UserError(f"{k} must be 'auto', 'on' or 'off', got {getattr(self, k)!r}")


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def coerce(cls: type, key: str, value: Any) -> Any:
    """Turn a ``--set key=value`` string into the type of ``cls.key`` (others pass through)."""
    if not isinstance(value, str):
        return value
    default = next(f.default for f in dataclasses.fields(cls) if f.name == key)
    try:
        if isinstance(default, bool):
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise UserError(
            f"option {key}={value!r} is not a valid {type(default).__name__}"
        ) from None
    return value


def make_config(cls: type[C], options: Mapping[str, Any], what: str) -> C:
    """``cls(**options)`` with a one-line error naming the allowed keys for unknown ones."""
    allowed = field_names(cls)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(
            f"unknown {what} option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"allowed: {', '.join(allowed)}"
        )
    values = {k: coerce(cls, k, v) for k, v in options.items()}
    if "betas" in values:
        values["betas"] = tuple(float(b) for b in values["betas"])
    try:
        return cls(**values)
    except TypeError as e:  # wrong type for a field
        raise UserError(f"bad {what} options: {e}") from None


def parse_set(pairs: list[str] | None) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> {"a": "1", "b": "x"}."""
    out: dict[str, str] = {}
    for p in pairs or []:
        if "=" not in p:
            raise UserError(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out
