"""``datacheck profile``: a readable summary of a dataset, and the same as a JSON-ready dict."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from .dataset import Dataset
from .decode import display_name


def profile(ds: Dataset, channel_stats: tuple[list[float], list[float]] | None = None) -> dict[str, Any]:
    """Summary of ``ds`` as a JSON-ready dict (keys listed in docs/datacheck.md, "Loading and profiling").

    ``channel_stats``: (means, stds) already measured elsewhere (the streaming audit measures them on
    the full-size images while ``ds`` holds thumbnails)."""
    n = len(ds)
    means, stds = channel_stats if channel_stats is not None else _channel_stats(ds.images)
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


def _channel_stats(images: np.ndarray, chunk_bytes: int = 64 << 20) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images scaled to [0, 1]: exact integer running
    sums over chunks of at most ``chunk_bytes`` of uint32 squares (never a float copy of the data)."""
    n, c, h, w = images.shape
    if n == 0:
        return [], []
    s = np.zeros(c, np.float64)
    s2 = np.zeros(c, np.float64)
    per = max(1, chunk_bytes // max(1, 4 * c * h * w))
    for i in range(0, n, per):
        x = images[i:i + per]
        s += x.sum(axis=(0, 2, 3), dtype=np.uint64)
        sq = x.astype(np.uint32)
        sq *= sq
        s2 += sq.sum(axis=(0, 2, 3), dtype=np.uint64)
    return moments(s, s2, n * h * w)


def moments(s: np.ndarray, s2: np.ndarray, m: int) -> tuple[list[float], list[float]]:
    """(means, stds) in [0, 1] per channel from sums of 0..255 values and of their squares over ``m`` pixels."""
    mean = np.asarray(s, np.float64) / (255.0 * m)
    var = np.maximum(np.asarray(s2, np.float64) / (255.0 * 255.0 * m) - mean**2, 0.0)
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
