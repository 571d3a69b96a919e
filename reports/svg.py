"""The study report's inline SVG charts: a line chart per factor and metric, and the forest plot of the
primary effects. Every label is escaped here (`html.escape`); the page marks the result safe."""
from __future__ import annotations

import html
import math
from typing import Any, Mapping, Sequence

import numpy as np

from .verdict import Stat, _num

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


def svg_chart(series: Mapping[str, Sequence[tuple[float, Stat]]], *, title: str, xlabel: str,
              log_x: bool = False, width: int = 300, height: int = 220, lower_better: bool | None = None) -> str:
    """A line chart, one line per series, error bars = ±1 std over seeds. Returns an <svg> string. The title
    and the direction hint sit on two lines, so neither is cut at the chart's width."""
    ml, mr, mt, mb = 46, 10, 34, 38
    pw, ph = width - ml - mr, height - mt - mb
    pts = [(x, s) for ser in series.values() for x, s in ser]
    esc = html.escape
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">'
            f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="12" font-weight="bold">{esc(title)}</text>'
            + (f'<text x="{width / 2}" y="27" text-anchor="middle" font-size="10" fill="#666">'
               f'({"lower" if lower_better else "higher"} is better)</text>' if lower_better is not None else ""))
    if not pts:
        return head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="11">no data</text></svg>'
    tx = (lambda v: math.log10(max(v, 1e-9))) if log_x else (lambda v: v)
    xs = [tx(x) for x, _ in pts]
    lo = min(s.mean - s.std for _, s in pts)
    hi = max(s.mean + s.std for _, s in pts)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.06 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    x0, x1 = min(xs), max(xs)
    if x1 - x0 < 1e-12:
        x0, x1 = x0 - 1, x1 + 1

    def X(v: float) -> float:
        return ml + (tx(v) - x0) / (x1 - x0) * pw

    def Y(v: float) -> float:
        return mt + (hi - v) / (hi - lo) * ph

    parts = [head, f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for t in np.linspace(lo + pad, hi - pad, 4):
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{ml - 4}" y="{Y(t) + 3:.1f}" text-anchor="end" font-size="9">{esc(_num(float(t)))}</text>')
    for x in sorted({x for x, _ in pts}):
        parts.append(f'<text x="{X(x):.1f}" y="{mt + ph + 12}" text-anchor="middle" font-size="9">{esc(f"{x:g}")}</text>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" font-size="10">{esc(xlabel)}</text>')
    for i, (name, ser) in enumerate(series.items()):
        col = COLORS[i % len(COLORS)]
        ser = sorted(ser)
        if not ser:
            continue
        path = " ".join(f"{'M' if j == 0 else 'L'}{X(x):.1f},{Y(s.mean):.1f}" for j, (x, s) in enumerate(ser))
        parts.append(f'<path d="{path}" fill="none" stroke="{col}" stroke-width="1.8"/>')
        for x, s in ser:
            if s.n > 1 and s.std > 0:
                parts.append(f'<line x1="{X(x):.1f}" x2="{X(x):.1f}" y1="{Y(s.mean - s.std):.1f}" '
                             f'y2="{Y(s.mean + s.std):.1f}" stroke="{col}" stroke-width="1.2"/>')
                for yy in (s.mean - s.std, s.mean + s.std):
                    parts.append(f'<line x1="{X(x) - 3:.1f}" x2="{X(x) + 3:.1f}" y1="{Y(yy):.1f}" y2="{Y(yy):.1f}" stroke="{col}"/>')
            parts.append(f'<circle cx="{X(x):.1f}" cy="{Y(s.mean):.1f}" r="2.6" fill="{col}">'
                         f'<title>{esc(name)} @ {x:g}: {esc(s.fmt())} (n={s.n})</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def svg_forest(rows: Sequence[Mapping[str, Any]], *, title: str, width: int = 620) -> str:
    """A forest plot: one row per test (label, effect, ci_low, ci_high, kind), the effect as a dot and
    its interval as a line around a zero line; data factors blue, model tweaks orange; rows in the order
    given (sorted by size by the caller)."""
    esc = html.escape
    colors = {"data": "#1f77b4", "model": "#ff7f0e", "control": "#7f7f7f"}
    ml, mr, top, step = 250, 60, 48, 16
    h = top + step * len(rows) + 26
    ends = [float(r[k]) for r in rows for k in ("ci_low", "ci_high", "effect") if np.isfinite(float(r[k]))]
    lo, hi = min([0.0] + ends), max([0.0] + ends)
    span = (hi - lo) or 1.0
    tx = lambda v: ml + (width - ml - mr) * (float(v) - lo) / span  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" '
             f'role="img" aria-label="{esc(title)}"><text x="4" y="14" font-size="12" font-weight="bold">{esc(title)}</text>'
             f'<text x="4" y="28" font-size="10" fill="#666">dot: estimate; line: 95% interval (to the edge: unbounded, '
             f'too few blocks); bold label: significant</text>'
             f'<text x="4" y="40" font-size="10" fill="#666">blue: data factor, orange: model tweak, gray: negative '
             f'control</text>'
             f'<line x1="{tx(0):.1f}" y1="{top - 4}" x2="{tx(0):.1f}" y2="{h - 22}" stroke="#999" stroke-dasharray="3,3"/>']
    for i, r in enumerate(rows):
        y = top + step * i + 8
        col = colors.get(str(r.get("kind", "data")), "#555")
        # an unbounded end (too few blocks for the test to reject anything) runs to the plot's edge
        a = tx(r["ci_low"]) if np.isfinite(float(r["ci_low"])) else ml - 4
        b = tx(r["ci_high"]) if np.isfinite(float(r["ci_high"])) else width - mr + 2
        weight = ' font-weight="bold"' if r.get("significant") else ""
        parts.append(f'<text x="{ml - 6}" y="{y + 4}" text-anchor="end" font-size="10"{weight}>{esc(str(r["label"]))}</text>'
                     f'<line x1="{a:.1f}" y1="{y}" x2="{b:.1f}" y2="{y}" stroke="{col}" '
                     f'stroke-width="2"/><circle cx="{tx(r["effect"]):.1f}" cy="{y}" r="3.5" fill="{col}"/>'
                     f'<text x="{width - mr + 4}" y="{y + 4}" font-size="9" fill="#444">{esc(_num(float(r["effect"])))}</text>')
    for v in (lo, 0.0, hi):
        parts.append(f'<text x="{tx(v):.1f}" y="{h - 8}" text-anchor="middle" font-size="9" fill="#666">{esc(_num(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)
