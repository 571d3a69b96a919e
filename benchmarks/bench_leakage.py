"""Training-data leakage on a study-like arm: a cvae trained long on 5% of the digits, scored by
`reports evaluate`'s membership inference (GAN-Leaks full black-box: ``mia_auc`` with its bootstrap interval)
beside its per-sample copy rate; and the same scores for a real held-out sample passed off as generated.

Data: scikit-learn's digits shuffled (seed 0): the first 5% of 1,200 (60 digits) train the cvae; 600 other
digits are the reference (the non-members); 500 more are the "honest fake" (real digits no model saw).

    python benchmarks/bench_leakage.py [--steps 1500] [--n-train 60] [--samples 1000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--n-train", type=int, default=60)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--model", default="cvae")
    args = ap.parse_args(argv)
    import torch

    import datacheck
    import generative
    from reports.evaluation import Evaluator

    d = datacheck.load("digits")
    perm = np.random.default_rng(0).permutation(len(d))
    train, ref, other = (d.subset(perm[: args.n_train]), d.subset(perm[1200:1797]), d.subset(perm[600:1100]))
    ev = Evaluator(real=ref, features="random", n=len(ref))
    for name, fake in (("real held-out digits as 'fake'", other.images),):
        r = ev.evaluate(fake=fake, train=train)
        print(f"{name}: mia_auc {r['mia_auc']} [{r['mia_auc_low']}, {r['mia_auc_high']}] "
              f"({r['mia_n_members']} members vs {r['mia_n_nonmembers']}); copy_rate {r['copy_rate']:.3f} "
              f"(held-out {r['copy_rate_heldout']:.3f})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run = generative.train(model=args.model, data=train, out=tmp, steps=args.steps, checkpoint_every=args.steps,
                               log_every=args.steps, threads=1)
        secs = time.perf_counter() - t
        g = torch.Generator().manual_seed(1)
        fake = run.model.sample(args.samples, generator=g)  # a conditional model: classes balanced
    r = ev.evaluate(fake=fake, train=train)
    print(f"{args.model}, {args.steps} steps on {len(train)} digits ({secs:.0f} s): mia_auc {r['mia_auc']} "
          f"[{r['mia_auc_low']}, {r['mia_auc_high']}] ({r['mia_n_members']} members vs {r['mia_n_nonmembers']}); "
          f"copy_rate {r['copy_rate']:.3f} (held-out {r['copy_rate_heldout']:.3f}, p = {r['copy_p']:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
