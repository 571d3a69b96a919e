"""The cheap half of ``reports value``: a per-item score from a fused population trained on random halves.

Estimate: P members of the model in complementary pairs, each pair splitting the training set into two random
halves (each item in exactly P/2 members; seeds ``estimate_seed + m``). For item i, each member that did NOT see it
scores how well it explains i (out of bag, so a member cannot have memorized i):

- ``fit``: for a VAE the ELBO of i under its given label (posterior mean, no sampling noise); for a GAN
  the discriminator's logit on i (projection D: under its given label). Standardized within the item's
  given class (median and MAD), because some classes are easier than others.
- ``margin`` (conditional models only): fit under the given label minus the best fit under any other
  label: a flipped label explains the image worse than the right one. Standardized over all items.

``score`` = mean over the out-of-bag members of (fit z + margin z); low = the models that never saw the
item find it least like the rest: a corrupted image, a flipped label, an outlier.

Calibration to FID points (the datamodel term): across the members, FID_m is regressed on the mean
score of the items member m trained on; the slope b (FID per unit of mean score) turns a score into
``value_i = -b * (score_i - mean score) / n_member``: the FID points keeping item i instead of an average
item saves (positive = keeping it helps). Where b is not negative the values are 0. This is the fallback:
`reports.value_run` prefers the retraining's own calibration (`reports.value_verify.verified_calibration`)
whenever the retraining shows the ranking works; value.json says which was used.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from datacheck.dataset import Dataset
from datacheck.errors import UserError

log = logging.getLogger(__name__)



def halves(n: int, members: int, seed: int) -> np.ndarray:
    """(members, n) bool inclusion matrix of complementary pairs: member 2j trains on a random half,
    member 2j+1 on the other half, so every item is in exactly members/2 members and out of the other
    members/2 (its out-of-bag scorers). ``members`` must be even."""
    if members < 2 or members % 2:
        raise UserError(f"members must be an even number >= 2 (complementary halves), got {members}")
    rng = np.random.default_rng([int(seed), 22])
    m = np.zeros((members, n), bool)
    for j in range(0, members, 2):
        perm = rng.permutation(n)
        m[j, perm[:n // 2]] = True
        m[j + 1, perm[n // 2:]] = True
    return m


def robust_z(x: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """(x - median) / (1.4826 MAD), within each value of ``groups`` (None: over all); a zero MAD uses
    the standard deviation (and 1 if that is 0 too)."""
    out = np.zeros(len(x))
    keys = np.zeros(len(x), int) if groups is None else np.asarray(groups)
    for g in np.unique(keys):
        sel = keys == g
        v = x[sel]
        med = np.median(v)
        scale = 1.4826 * np.median(np.abs(v - med)) or float(v.std()) or 1.0
        out[sel] = (v - med) / scale
    return out


def member_fit(model: Any, images: np.ndarray, labels: np.ndarray, batch: int = 512) -> np.ndarray:
    """(N, K) fit of every image under every label (K = classes; 1 column for unconditional models):
    VAE: ELBO (nats) at the posterior mean, encoded once under the item's given label and decoded under
    each label (K decoder passes, one encoder pass); GAN: discriminator logit. Higher = explained better."""
    import torch
    from torch.nn import functional as F

    k = model.n_classes if model.conditional else 1
    out = np.zeros((len(images), k))
    nets = model.nets
    with torch.no_grad():
        for net in nets.values():
            net.eval()
        for s in range(0, len(images), batch):
            x = model.to_float(torch.from_numpy(images[s:s + batch]).to(model.device))
            given = torch.from_numpy(np.maximum(labels[s:s + batch], 0)).long().to(model.device)
            if model.family == "vae":
                mu, logvar = nets["enc"](x, given if model.conditional else None).float().chunk(2, dim=1)
                logvar = logvar.clamp(-12.0, 8.0)
                kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
            for c in range(k):
                y = torch.full((len(x),), c, dtype=torch.long, device=model.device) if model.conditional else None
                if model.family == "vae":
                    logits = model.sampling_net()(mu, y).float()
                    rec = F.binary_cross_entropy_with_logits(logits, x.float(), reduction="none").flatten(1).sum(1)
                    out[s:s + batch, c] = (-(rec + float(model.config.beta) * kl)).cpu().numpy()
                else:
                    out[s:s + batch, c] = nets["D"](x, y).float().flatten().cpu().numpy()
    return out


def item_scores(fits: Sequence[np.ndarray], inclusion: np.ndarray, labels: np.ndarray,
                conditional: bool) -> dict[str, np.ndarray]:
    """Out-of-bag components from per-member fits ((N, K) each; only the rows of the items the member
    did not train on are read) and the (P, N) inclusion matrix: ``fit``, ``margin`` (NaN for
    unconditional models), ``score`` (see the module docstring), ``n_oob``."""
    n = inclusion.shape[1]
    lab = np.where(labels >= 0, labels, 0) if conditional else np.zeros(n, int)
    oob = ~inclusion
    n_oob = oob.sum(0)
    fit = np.zeros(n)
    margin = np.zeros(n)
    for f, o in zip(fits, oob):
        own = f[np.arange(n), lab]
        # each member's fits are standardized over its own out-of-bag items first (within the given
        # class: some digits are easier), so no member's scale dominates the average
        z = np.zeros(n)
        z[o] = robust_z(own[o], labels[o])
        fit += z
        if conditional:
            other = f.copy()
            other[np.arange(n), lab] = -np.inf
            zm = np.zeros(n)
            zm[o] = robust_z((own - other.max(1))[o])
            margin += zm
    fit /= n_oob
    margin = margin / n_oob if conditional else np.full(n, np.nan)
    score = fit + margin if conditional else fit.copy()
    return {"fit": fit, "margin": margin, "score": score, "n_oob": n_oob}


def calibrate(fids: np.ndarray, inclusion: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    """Least squares of member FID on the mean score of its training items: slope (FID per unit of mean
    score), its 95% t interval, and the FID points per item per unit score (slope / items per member)."""
    from scipy import stats

    ok = np.isfinite(fids)
    x = np.array([score[m].mean() for m in inclusion])[ok]
    y = np.asarray(fids, float)[ok]
    out: dict[str, Any] = {"members": int(ok.sum()), "slope": math.nan, "slope_low": math.nan,
                           "slope_high": math.nan, "per_item": 0.0, "supported": False}
    if len(x) < 3 or np.ptp(x) == 0:
        return out
    r = stats.linregress(x, y)
    half = stats.t.ppf(0.975, len(x) - 2) * r.stderr
    n_member = float(inclusion.sum(1).mean())
    out.update(slope=float(r.slope), slope_low=float(r.slope - half), slope_high=float(r.slope + half),
               n_member=n_member, per_item=float(max(-r.slope, 0.0) / n_member),
               supported=bool(r.slope + half < 0))
    return out


def estimate(pool: Dataset, model_name: str, options: dict[str, Any], members: int, steps: int, seed: int,
             batch_size: int, device: str, work: Path, scorer: Callable[[Any], float] | None,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train the estimate population on halves of ``pool`` and score every item.

    ``scorer(model) -> FID`` measures a trained member (for the calibration; None: no calibration, the
    values are 0 and only the score ranks). Returns the components
    (arrays of len(pool)), ``value`` (FID points), ``inclusion`` (P, N), the members' ``fids`` and
    the ``calibration``."""
    import generative
    from generative.population import Member

    inc = halves(len(pool), members, seed)
    mem = [Member(pool.subset(np.flatnonzero(inc[m])), work / f"estimate-{m}", seed=seed + m, steps=steps,
                  options=options) for m in range(members)]
    res = _train_chunks(model_name, mem, batch_size, device, progress, "estimate")
    fits, fids = [], []
    for m, r in enumerate(res):
        if r.status != "finished":
            raise UserError(f"estimate member {m} failed to train ({r.error}); try fewer --steps or another --model")
        trained = generative.load(r.path)
        f = np.zeros((len(pool), trained.n_classes if trained.conditional else 1))
        oob = np.flatnonzero(~inc[m])  # only the items this member did not see are ever read
        f[oob] = member_fit(trained, pool.images[oob], pool.labels[oob])
        fits.append(f)
        fids.append(scorer(trained) if scorer is not None else math.nan)
    cond = bool(generative.MODELS.get(model_name).make_config(options).conditional)
    comp = item_scores(fits, inc, pool.labels, cond)
    cal = calibrate(np.array(fids), inc, comp["score"])
    value = cal["per_item"] * (comp["score"] - comp["score"].mean()) + 0.0  # + 0.0: no "-0.0" in the CSV
    return {**comp, "value": value, "inclusion": inc, "fids": fids, "calibration": cal, "conditional": cond}


def _train_chunks(model_name: str, members: list[Any], batch_size: int, device: str,
                  progress: Callable[[str], None] | None, what: str) -> list[Any]:
    """Train ``members`` as fused groups of at most generative.population.MAX_MEMBERS (the size that pays on the device)."""
    from generative.population import train_population

    from generative.population import MAX_MEMBERS  # members per fused group, as the study fuses them

    size = MAX_MEMBERS["cuda" if str(device).startswith("cuda") else "cpu"]
    out = []
    for s in range(0, len(members), size):
        if progress is not None:
            progress(f"{what}: training members {s + 1}-{min(s + size, len(members))} of {len(members)}")
        out += train_population(model_name, members[s:s + size], batch_size=batch_size, device=device,
                                log_every=10_000)
    return out
