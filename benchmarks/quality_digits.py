"""Quality bar on digits: train every model with its default steps, classify its samples with a
logistic regression fitted on real digits, and check class coverage (and label agreement for the
conditional models).

    python benchmarks/quality_digits.py [--models dcgan,vae] [--n 1000] [--steps N] [--out DIR] [--device cuda]

Bar: all 10 classes present, none below 3% of samples; cgan/cvae: >= 80% of samples classified
as the requested label. Exit code 1 when a model misses the bar.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import datacheck
import generative
from generative.config import parse_set

MIN_SHARE = 0.03
MIN_AGREE = 0.80


def fit_classifier(data: datacheck.Dataset, seed: int = 0):
    """Logistic regression on [0, 1] pixels; returns (classifier, held-out accuracy)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x = data.images.reshape(len(data), -1) / 255.0
    xtr, xte, ytr, yte = train_test_split(x, data.labels, test_size=0.25, random_state=seed, stratify=data.labels)
    acc = LogisticRegression(max_iter=3000).fit(xtr, ytr).score(xte, yte)
    return LogisticRegression(max_iter=3000).fit(x, data.labels), float(acc)


def evaluate(model, clf, n: int = 1000, seed: int = 0) -> dict:
    """Class shares of ``n`` samples (and agreement with requested labels when conditional)."""
    imgs, labels = model.sample_with_labels(n, generator=torch.Generator().manual_seed(seed))
    pred = clf.predict(imgs.reshape(n, -1) / 255.0)
    shares = np.bincount(pred, minlength=10) / n
    out = {"min_share": float(shares.min()), "classes": int((shares > 0).sum()),
           "shares": [round(float(s), 3) for s in shares]}
    if labels is not None:
        out["agreement"] = float((pred == labels).mean())
    out["passed"] = bool(out["classes"] == 10 and out["min_share"] >= MIN_SHARE
                         and out.get("agreement", 1.0) >= MIN_AGREE)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(generative.MODELS.names()))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=None, help="override the default steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temp folder)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    data = datacheck.load("digits")
    clf, acc = fit_classifier(data)
    print(f"classifier: logistic regression on pixels, held-out accuracy {acc:.3f}")
    opts = parse_set(args.set)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="quality-"))
    print(f"{'model':6} {'steps':>5} {'train_s':>7} {'classes':>7} {'min_share':>9} {'agree':>6}  result")
    ok = True
    for name in args.models.split(","):
        t = time.perf_counter()
        run = generative.train(model=name, data=data, out=root / name, steps=args.steps, seed=args.seed,
                               checkpoint_every=0, device=args.device, **opts)
        secs = time.perf_counter() - t
        r = evaluate(run.model, clf, n=args.n, seed=args.seed)
        ok &= r["passed"]
        agree = f"{r['agreement']:.3f}" if "agreement" in r else "-"
        print(f"{name:6} {run.steps:5d} {secs:7.1f} {r['classes']:7d} {r['min_share']:9.3f} {agree:>6}  "
              f"{'PASS' if r['passed'] else 'FAIL'}  shares={r['shares']}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
