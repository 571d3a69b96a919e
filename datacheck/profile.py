"""``datacheck profile``: a readable summary of a dataset, and the same as a JSON-ready dict."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from .dataset import Dataset
from .decode import display_name


def profile(ds: Dataset) -> dict[str, Any]:
    """Summary of ``ds`` as a JSON-ready dict (keys listed in docs/datacheck.md, "Loading and profiling")."""
    n = len(ds)
    means, stds = _channel_stats(ds.images)
    sizes = Counter(f"{int(h)}x{int(w)}" for h, w in ds.orig_sizes)
    return {
        "source": ds.source,
        "n_images": n,
        "n_classes": ds.n_classes,
        "class_counts": ds.class_counts(),
        "n_unlabeled": int((ds.labels < 0).sum()),
        "shape": list(ds.shape),
        "sizes_found": dict(sizes.most_common()),
        "modes_found": dict(Counter(ds.orig_modes).most_common()),
        "policy": ds.policy,
        "channel_means": means,
        "channel_stds": stds,
        "unreadable": [dict(u) for u in ds.unreadable],
        "skipped": int(ds.skipped),
        "fingerprint": ds.fingerprint,
    }


def _channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images scaled to [0, 1], in chunks so a
    large dataset is never copied to float64 whole."""
    n, c = images.shape[:2]
    if n == 0:
        return [], []
    s = np.zeros(c, np.float64)
    s2 = np.zeros(c, np.float64)
    for i in range(0, n, chunk):
        x = images[i:i + chunk].astype(np.float64) / 255.0
        s += x.sum(axis=(0, 2, 3))
        s2 += np.square(x).sum(axis=(0, 2, 3))
    m = n * images.shape[2] * images.shape[3]
    mean = s / m
    var = np.maximum(s2 / m - mean**2, 0.0)
    return [float(v) for v in mean], [float(v) for v in np.sqrt(var)]


def _top(counts: dict[str, int], k: int = 8) -> str:
    items = list(counts.items())
    text = ", ".join(f"{key} ({v})" for key, v in items[:k])
    return text + (f", ... {len(items) - k} more" if len(items) > k else "")


def format_profile(p: dict[str, Any]) -> str:
    """Human-readable text for a `profile` dict."""
    lines = [
        f"source       {display_name(str(p['source']))}",
        f"images       {p['n_images']}  shape (C, H, W) {tuple(p['shape'])}",
        f"classes      {p['n_classes']}" + (f"  unlabeled {p['n_unlabeled']}" if p["n_unlabeled"] else ""),
    ]
    if p["class_counts"]:
        items = list(p["class_counts"].items())
        for i in range(0, min(len(items), 40), 8):  # eight per line, at most five lines
            lines.append("  " + "  ".join(f"{display_name(k)}: {v}" for k, v in items[i:i + 8]))
        if len(items) > 40:
            lines.append(f"  ... {len(items) - 40} more classes (all in the --json output)")
    lines.append("sizes found  " + _top(p["sizes_found"]) + "   (H x W before the policy)")
    lines.append("modes found  " + _top(p["modes_found"]))
    pol = p.get("policy") or {}
    if pol:
        size = "x".join(str(v) for v in pol.get("size", []))
        how = f", resized with {pol['resample']} ({pol.get('n_resized', 0)} image(s))" if pol.get("n_resized") else ""
        lines.append(f"policy       {size}, {pol.get('channels')} channel(s){how}: {pol.get('reason', '')}")
    lines.append("channel mean " + ", ".join(f"{v:.3f}" for v in p["channel_means"])
                 + "   std " + ", ".join(f"{v:.3f}" for v in p["channel_stds"]))
    lines.append(f"skipped      {p['skipped']} non-image file(s)")
    lines.append(f"unreadable   {len(p['unreadable'])} file(s)" + (" (left out):" if p["unreadable"] else ""))
    for u in p["unreadable"][:20]:
        lines.append(f"  {display_name(u['path'])}: {display_name(u['reason'])}")
    if len(p["unreadable"]) > 20:
        lines.append(f"  ... and {len(p['unreadable']) - 20} more (all are listed in the --json output)")
    lines.append(f"fingerprint  {p['fingerprint']}")
    return "\n".join(lines)
