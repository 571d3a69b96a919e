"""``datacheck profile``: a readable summary of a dataset, and the same as a JSON-ready dict."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from .dataset import Dataset


def profile(ds: Dataset) -> dict[str, Any]:
    """Summary of ``ds`` as a JSON-ready dict (keys listed in the README)."""
    n = len(ds)
    x = ds.images.astype(np.float64) / 255.0  # (N, C, H, W)
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
        "channel_means": [float(v) for v in x.mean(axis=(0, 2, 3))] if n else [],
        "channel_stds": [float(v) for v in x.std(axis=(0, 2, 3))] if n else [],
        "unreadable": [dict(u) for u in ds.unreadable],
        "skipped": int(ds.skipped),
        "fingerprint": ds.fingerprint,
    }


def format_profile(p: dict[str, Any]) -> str:
    """Human-readable text for a :func:`profile` dict."""
    lines = [
        f"source       {p['source']}",
        f"images       {p['n_images']}  shape (C, H, W) {tuple(p['shape'])}",
        f"classes      {p['n_classes']}" + (f"  unlabeled {p['n_unlabeled']}" if p["n_unlabeled"] else ""),
    ]
    if p["class_counts"]:
        lines.append("  " + "  ".join(f"{k}: {v}" for k, v in p["class_counts"].items()))
    lines.append("sizes found  " + ", ".join(f"{k} ({v})" for k, v in p["sizes_found"].items()))
    lines.append("modes found  " + ", ".join(f"{k} ({v})" for k, v in p["modes_found"].items()))
    pol = p.get("policy") or {}
    if pol:
        lines.append(f"policy       {pol}")
    lines.append("channel mean " + ", ".join(f"{v:.3f}" for v in p["channel_means"])
                 + "   std " + ", ".join(f"{v:.3f}" for v in p["channel_stds"]))
    lines.append(f"skipped      {p['skipped']} non-image file(s)")
    lines.append(f"unreadable   {len(p['unreadable'])} file(s)")
    for u in p["unreadable"][:20]:
        lines.append(f"  {u['path']}: {u['reason']}")
    if len(p["unreadable"]) > 20:
        lines.append(f"  ... and {len(p['unreadable']) - 20} more")
    lines.append(f"fingerprint  {p['fingerprint']}")
    return "\n".join(lines)
