"""Per-image quality checks: ``unreadable``, ``dark``, ``light``, ``blurry``, ``noisy``,
``low_information``, ``odd_size``, ``odd_aspect_ratio`` and ``grayscale``.

Scores map a per-image measure smoothly around the threshold: ``score = sigmoid(margin / width)``
where ``margin`` is positive on the clean side, so score < 0.5 exactly when the item is flagged.

Thresholds are absolute where the quantity means the same thing in every dataset (brightness levels,
channel differences, contrast) and relative to the dataset's own median where it does not
(sharpness depends on content and resolution; sizes and aspect ratios are only odd relative to the
rest). Every measure is computed on the decoded images (luminance ``0.299 R + 0.587 G + 0.114 B``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import hashing
from ..dataset import Dataset
from .base import CheckContext, CheckResult, register_check


def smooth_score(margin: np.ndarray, width: float) -> np.ndarray:
    """Score in [0, 1], 0.5 at margin 0, towards 1 on the clean (positive) side."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(margin, np.float64) / width, -50, 50)))


def image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image measures, float64 (N,) each, computed in memory-bounded chunks:

    p05 / p95: 5th / 95th luminance percentile (0..255; images over 128 px a side use a strided
    sample of about 128x128 pixels for these and for ``dominant``); std: luminance std; info_std: the largest
    per-channel std (a red disc on a green background of equal luminance still has information);
    dominant: fraction of pixels within 2 levels of the per-channel medians in every channel; sharpness: std of the 4-neighbour Laplacian over the
    luminance std (contrast-free, edge-replicated borders); chroma: mean over pixels of
    max(R, G, B) - min(R, G, B) (0 for 1-channel images); autocorr: the lag-1 autocorrelation of the
    luminance (mean of the horizontal and vertical neighbour correlations; about 0 for pixel noise,
    0.3-0.8 for 8x8 digits, above 0.8 for photos).
    """
    n, c, h, w = images.shape
    keys = ("p05", "p95", "std", "info_std", "dominant", "sharpness", "chroma", "autocorr")
    out = {k: np.zeros(n) for k in keys}
    per = max(1, (1 << 22) // max(1, h * w))
    stride_h, stride_w = max(1, -(-h // 128)), max(1, -(-w // 128))
    for s in range(0, n, per):
        lum = hashing.gray(images, s, s + per).astype(np.float64)
        sl = slice(s, s + len(lum))
        # order statistics on at most ~128x128 pixels (a strided sample): sorting every pixel of
        # big images dominated the run time and the percentiles do not need them
        sub = lum[:, ::stride_h, ::stride_w].reshape(len(lum), -1)
        out["p05"][sl], out["p95"][sl] = np.percentile(sub, [5, 95], axis=1)
        std = lum.reshape(len(lum), -1).std(1)
        out["std"][sl] = std
        chans = images[s : s + per].reshape(len(lum), c, -1).astype(np.float32)
        out["info_std"][sl] = chans.std(2).max(1)
        subc = images[s : s + per, :, ::stride_h, ::stride_w].reshape(len(lum), c, -1).astype(np.float32)
        med = np.median(subc, axis=2, keepdims=True)
        out["dominant"][sl] = (np.abs(subc - med) <= 2.0).all(1).mean(1)
        p = np.pad(lum, ((0, 0), (1, 1), (1, 1)), mode="edge")
        lap = 4 * lum - p[:, :-2, 1:-1] - p[:, 2:, 1:-1] - p[:, 1:-1, :-2] - p[:, 1:-1, 2:]
        out["sharpness"][sl] = lap.reshape(len(lum), -1).std(1) / (std + 1e-3)
        cen = lum - lum.mean((1, 2), keepdims=True)
        var = (cen * cen).mean((1, 2)) + 1e-6
        hor = (cen[:, :, 1:] * cen[:, :, :-1]).mean((1, 2)) if w > 1 else var
        ver = (cen[:, 1:, :] * cen[:, :-1, :]).mean((1, 2)) if h > 1 else var
        out["autocorr"][sl] = (hor + ver) / (2 * var)
        if c == 3:
            x = images[s : s + per]
            out["chroma"][sl] = (x.max(1).astype(np.int16) - x.min(1)).reshape(len(x), -1).mean(1)
    return out


def _stats(ds: Dataset, ctx: CheckContext) -> dict[str, np.ndarray]:
    return ctx.cache("image_stats", lambda: image_stats(ds.images))


def _result(name: str, flags: np.ndarray, scores: np.ndarray, threshold: Any, params: dict[str, Any],
            details: list[str], **summary: Any) -> CheckResult:
    n = len(flags)
    return CheckResult(name=name, scores=np.clip(scores, 0.0, 1.0), flags=flags.astype(bool),
                       summary={"score": 1 - float(flags.mean()) if n else 1.0, "threshold": threshold, **summary},
                       params=params, details=details)


def _detail(flags: np.ndarray, fmt: str, values: np.ndarray) -> list[str]:
    return [fmt.format(v) if f else "" for f, v in zip(flags, values)]


# ----------------------------------------------------------------------------- unreadable
@register_check("unreadable", defaults={}, description="files the loader refused, with the reason")
def check_unreadable(ds: Dataset, ctx: CheckContext) -> CheckResult:
    """Files the loader refused (``ds.unreadable``).

    They are not items of the dataset (its N rows are the images that did load), so per-item scores
    are all 1 and flags all False; the files are listed in ``summary["items"]`` as ``{path, reason}``
    and ``summary["n_flagged"]`` is their count.
    """
    items = [{"path": str(u.get("path", "")), "reason": str(u.get("reason", ""))} for u in ds.unreadable]
    n = len(ds)
    return CheckResult(name="unreadable", scores=np.ones(n), flags=np.zeros(n, bool),
                       summary={"n_flagged": len(items), "items": items, "threshold": "loader refused the file",
                                "score": n / max(n + len(items), 1)}, params={})


# ----------------------------------------------------------------------------- brightness
@register_check("dark", defaults={"threshold": 0.25},
                description="the brightest 5% of pixels are below threshold x 255")
def check_dark(ds: Dataset, ctx: CheckContext, threshold: float) -> CheckResult:
    """Dark: the 95th luminance percentile is below ``threshold`` x 255 (default 0.25, i.e. 64).

    A black-background digit is not dark (its strokes are bright); a photo taken in the dark is.
    """
    v = _stats(ds, ctx)["p95"] / 255.0
    flags = v < threshold
    return _result("dark", flags, smooth_score(v - threshold, 0.04), threshold, {"threshold": threshold},
                   _detail(flags, "95th luminance percentile {:.2f} of 1", v))


@register_check("light", defaults={"threshold": 0.75},
                description="the darkest 5% of pixels are above threshold x 255 (washed out)")
def check_light(ds: Dataset, ctx: CheckContext, threshold: float) -> CheckResult:
    """Light / washed out: the 5th luminance percentile is above ``threshold`` x 255 (default 0.75,
    i.e. 191), so nothing in the image is dark. White-background images whose subject covers at least
    5% of the frame are not flagged."""
    v = _stats(ds, ctx)["p05"] / 255.0
    flags = v > threshold
    return _result("light", flags, smooth_score(threshold - v, 0.04), threshold, {"threshold": threshold},
                   _detail(flags, "5th luminance percentile {:.2f} of 1", v))


# ----------------------------------------------------------------------------- blur
@register_check("blurry", defaults={"threshold": 0.5},
                description="sharpness below threshold x the dataset's median sharpness")
def check_blurry(ds: Dataset, ctx: CheckContext, threshold: float) -> CheckResult:
    """Blurry: sharpness (Laplacian std / luminance std, so contrast does not matter) below
    ``threshold`` x the dataset median (default 0.5).

    Relative because sharpness depends on content and resolution; on digits a Gaussian blur of
    sigma 1 px halves it while the softest clean digits stay above 0.55 x median. Near-constant images
    are left to ``low_information``. If most of the dataset is blurry, the median is too, and a
    relative rule cannot see it: the summary reports the median for that reason.
    """
    st = _stats(ds, ctx)
    sharp = st["sharpness"]
    informative = st["std"] >= 2.0
    med = float(np.median(sharp[informative])) if informative.any() else 0.0
    rel = sharp / med if med > 0 else np.ones_like(sharp)
    flags = (rel < threshold) & informative
    margin = np.where(informative, np.log(np.maximum(rel, 1e-6) / threshold), 1.0)
    return _result("blurry", flags, smooth_score(margin, 0.1), threshold, {"threshold": threshold},
                   _detail(flags, "sharpness {:.2f} x the dataset median", rel), median_sharpness=round(med, 4))


# ----------------------------------------------------------------------------- noise
@register_check("noisy", defaults={"threshold": 0.4},
                description="neighbour-pixel correlation below threshold x the dataset's median: pixel noise")
def check_noisy(ds: Dataset, ctx: CheckContext, threshold: float) -> CheckResult:
    """Noisy: the lag-1 autocorrelation of the luminance (how much a pixel predicts its neighbours)
    below ``threshold`` x the dataset median (default 0.4).

    Real images are spatially smooth, pixel noise is not: on digits (median 0.54, softest clean
    digit 0.29) pure-noise images score at most 0.18 and are flagged below 0.22; photos sit near 0.9.
    Relative for the same reason as ``blurry``. Noise *added* to a real image lowers the measure only
    as far as the noise dominates the image's own variance, so mild noise passes (that is
    ``near_duplicate``'s business when it makes copies). Near-constant images are left to
    ``low_information``.
    """
    st = _stats(ds, ctx)
    r = st["autocorr"]
    informative = st["std"] >= 2.0
    med = float(np.median(r[informative])) if informative.any() else 0.0
    cut = threshold * med
    flags = (r < cut) & informative & (med > 0)
    margin = np.where(informative, r - cut, 1.0)
    return _result("noisy", flags, smooth_score(margin, 0.03), threshold, {"threshold": threshold},
                   _detail(flags, "neighbour correlation {:.2f}", r), median_autocorr=round(med, 4),
                   cutoff=round(cut, 4))


# ----------------------------------------------------------------------------- low information
@register_check("low_information", defaults={"min_std": 6.0, "max_dominant": 0.98},
                description="blank or nearly constant: every channel's std < min_std levels or one color covers > max_dominant")
def check_low_information(ds: Dataset, ctx: CheckContext, min_std: float, max_dominant: float) -> CheckResult:
    """Blank or nearly constant images: the largest per-channel std is below ``min_std`` levels of
    255 (default 6) or more than ``max_dominant`` (default 0.98) of the pixels lie within 2 levels of
    the median color (a blank frame with a speck)."""
    st = _stats(ds, ctx)
    m1 = np.log((st["info_std"] + 0.5) / (min_std + 0.5))
    m2 = (max_dominant - st["dominant"]) * 20
    margin = np.minimum(m1, m2)
    flags = (st["info_std"] < min_std) | (st["dominant"] > max_dominant)
    details = [f"std {s:.1f} levels, {d:.0%} of pixels at one color" if f else ""
               for f, s, d in zip(flags, st["info_std"], st["dominant"])]
    return _result("low_information", flags, smooth_score(margin, 0.15), {"min_std": min_std, "max_dominant": max_dominant},
                   {"min_std": min_std, "max_dominant": max_dominant}, details)


# ----------------------------------------------------------------------------- sizes
@register_check("odd_size", defaults={"factor": 4.0},
                description="original pixel area more than factor x smaller or larger than the median")
def check_odd_size(ds: Dataset, ctx: CheckContext, factor: float) -> CheckResult:
    """Odd original size (before the loader's shape policy): pixel area more than ``factor``
    (default 4, i.e. 2x per side) away from the dataset's median area, either way. A dataset of one
    size flags nothing."""
    hw = ds.orig_sizes.astype(np.float64)
    area = np.maximum(hw[:, 0] * hw[:, 1], 1.0)
    med = float(np.median(area)) if len(area) else 1.0
    dev = np.abs(np.log(area / med))
    flags = dev > np.log(factor)
    details = [f"original size {int(h)}x{int(w)} (median area {med:.0f} px)" if f else ""
               for f, (h, w) in zip(flags, hw)]
    return _result("odd_size", flags, smooth_score(np.log(factor) - dev, 0.15), factor, {"factor": factor}, details,
                   median_area=med)


@register_check("odd_aspect_ratio", defaults={"factor": 2.0},
                description="original width/height more than factor x off the median aspect ratio")
def check_odd_aspect_ratio(ds: Dataset, ctx: CheckContext, factor: float) -> CheckResult:
    """Odd original aspect ratio: width/height more than ``factor`` (default 2) times off the
    dataset's median aspect ratio, either way (so a dataset of panoramas is not all odd)."""
    hw = np.maximum(ds.orig_sizes.astype(np.float64), 1.0)
    logar = np.log(hw[:, 1] / hw[:, 0])
    med = float(np.median(logar)) if len(logar) else 0.0
    dev = np.abs(logar - med)
    flags = dev > np.log(factor)
    details = _detail(flags, "aspect ratio {:.2f} (width/height)", np.exp(logar))
    return _result("odd_aspect_ratio", flags, smooth_score(np.log(factor) - dev, 0.1), factor, {"factor": factor},
                   details, median_aspect_ratio=round(float(np.exp(med)), 4))


# ----------------------------------------------------------------------------- grayscale
@register_check("grayscale", defaults={"max_chroma": 2.0, "max_fraction": 0.5},
                description="3-channel image whose channels are equal (mean max-min channel difference <= max_chroma)")
def check_grayscale(ds: Dataset, ctx: CheckContext, max_chroma: float, max_fraction: float) -> CheckResult:
    """Grayscale content in a color dataset, whatever the file mode: the mean over pixels of
    max(R, G, B) - min(R, G, B) is at most ``max_chroma`` levels (default 2, which tolerates JPEG
    chroma noise).

    Flags items only when they are a minority (at most ``max_fraction`` of the dataset, default
    0.5): when most of a 3-channel dataset is gray, the finding is dataset-level (store it with one
    channel) and is reported in the summary (``all_gray_fraction``) instead of flagging every item.
    1-channel datasets flag nothing (the summary says so).
    """
    n = len(ds)
    params = {"max_chroma": max_chroma, "max_fraction": max_fraction}
    if ds.images.shape[1] == 1:
        return _result("grayscale", np.zeros(n, bool), np.ones(n), max_chroma, params, [""] * n,
                       gray_fraction=1.0 if n else 0.0, note="1-channel dataset: every image is grayscale by construction")
    chroma = _stats(ds, ctx)["chroma"]
    gray = chroma <= max_chroma
    frac = float(gray.mean()) if n else 0.0
    minority = frac <= max_fraction
    flags = gray & minority
    scores = smooth_score(chroma - max_chroma, 0.5) if minority else np.ones(n)
    extra: dict[str, Any] = {"gray_fraction": round(frac, 4)}
    if not minority:
        extra["note"] = f"{frac:.0%} of this 3-channel dataset is grayscale: consider loading it with channels=1"
    return _result("grayscale", flags, scores, max_chroma, params,
                   _detail(flags, "channels equal (mean channel spread {:.2f} levels)", chroma), **extra)
