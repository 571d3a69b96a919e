"""``generative`` command line: train and sample GANs and VAEs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from datacheck.cli_util import Parser, run
from datacheck.errors import UserError


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def cmd_train(args: argparse.Namespace) -> int:
    from . import api
    from .config import parse_set

    options = parse_set(args.set)
    r = api.train(
        model=args.model, data=args.data, out=args.out, steps=args.steps, batch_size=args.batch_size,
        seed=args.seed, checkpoint_every=args.checkpoint_every, resume=args.resume, device=args.device,
        progress=not args.no_progress, compile=args.compile, threads=args.threads, **options,
    )
    last = r.history[-1] if r.history else {}
    losses = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k not in ("step", "seconds", "steps_per_s"))
    print(f"trained {r.model_name} for {r.steps} steps in {r.seconds:.1f} s ({losses})")
    print(f"wrote {r.path / 'config.json'}, {r.path / 'train.jsonl'}, {r.checkpoint}, {r.path / 'samples.png'}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from . import api
    from datacheck.io import atomic_path

    model = api.load(args.run)
    if args.label is not None and not model.conditional:
        raise UserError(f"--label needs a class-conditional model; {args.run} holds {model.name!r}")
    imgs, labels = model.sample_with_labels(args.n, generator=torch.Generator().manual_seed(args.seed),
                                            labels=args.label)
    arrays = {"images": imgs.transpose(0, 2, 3, 1)}
    if labels is not None:
        arrays["labels"] = labels
        if model.class_names:
            arrays["class_names"] = np.array(model.class_names, dtype=str)
    out = Path(args.out)
    if out.suffix != ".npz":
        raise UserError(f"--out must end with .npz, got {args.out!r}")
    with atomic_path(out, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    n, h, w, c = arrays["images"].shape
    extra = f" and labels ({', '.join(str(int(v)) for v in np.unique(labels))})" if labels is not None else ""
    print(f"wrote {n} samples {h}x{w}x{c} uint8{extra} from {model.name} to {out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import MODELS

    for name in MODELS:
        spec = MODELS.get(name)
        print(f"{name:6} {spec.default_steps:5d} steps  {spec.description}")
        if args.verbose:
            print("       " + " ".join(f"{k}={v}" for k, v in spec.defaults().items()))
    return 0


def build_parser() -> Parser:
    p = Parser(prog="generative", description="Train GANs and VAEs on any dataset, with exact resume.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model on a dataset", description="Train a model; writes "
                       "RUN/config.json, RUN/train.jsonl, RUN/checkpoint.pt, RUN/samples.png.")
    t.add_argument("--model", required=True, help="dcgan, sngan, cgan, vae or cvae")
    t.add_argument("--data", required=True, help="'digits', a folder, .csv, .npz, ... (see datacheck)")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--steps", type=_positive, default=None, help="training steps (default: the model's)")
    t.add_argument("--batch-size", type=_positive, default=None, help="default 64 (resume: the run's)")
    t.add_argument("--seed", type=int, default=None, help="default 0 (resume: the run's)")
    t.add_argument("--checkpoint-every", type=_positive, default=500, help="steps between checkpoints and sample grids")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--compile", action="store_true", help="torch.compile the networks")
    t.add_argument("--threads", type=_positive, default=0, help="CPU threads for torch (0 = torch's setting: all cores)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. --set lr_g=1e-4 --set augment=translation,cutout")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("-v", "--verbose", action="store_true")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a trained run",
                       description="Write FILE.npz with images uint8 (N, H, W, C) (and labels for conditional models).")
    s.add_argument("run", help="run folder (or checkpoint file)")
    s.add_argument("--n", type=_positive, required=True)
    s.add_argument("--out", required=True, help="FILE.npz")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--label", type=int, default=None, help="class for conditional models (default: balanced)")
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(func=cmd_sample)

    m = sub.add_parser("models", help="list the models, their default steps (and options with -v)")
    m.add_argument("-v", "--verbose", action="store_true")
    m.set_defaults(func=cmd_models)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run("generative", build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
