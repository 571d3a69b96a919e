"""VALUE/report.html: one offline file in the study report's style (inline SVG and PNG, no scripts, no
CDN). Every data-derived string goes through jinja2's autoescape or ``html.escape`` (`reports.svg`)."""
from __future__ import annotations

import base64
import math
from typing import Any, Mapping

import numpy as np

from datacheck.dataset import Dataset
from datacheck.io import fmt_num

from .svg import COLORS, svg_chart
from .verdict import Stat

TOP = 24  # thumbnails shown at each end of the ranking
LEGEND = {"top": "the items ranked most harmful removed", "random": "as many removed at random",
          "audit": "the audit's worst flags removed"}

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Data value: {{ data }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1250px;padding:16px 24px;color:#222}
h1{margin:.2em 0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.6em}
.meta{color:#555;font-size:.9em}
#answer{background:#f3f7fb;border-left:5px solid #1f77b4;padding:10px 16px}
#answer .big{font-size:1.15em;font-weight:600;margin:.2em 0 .5em}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
.thumbs{display:flex;flex-wrap:wrap;gap:6px}
.thumb{width:92px;font-size:10px;text-align:center;border:1px solid #e3e3e3;padding:2px}
.thumb img{width:64px;height:64px;image-rendering:pixelated}.thumb div{overflow-wrap:anywhere}
.legend span{display:inline-block;width:14px;height:3px;margin:0 4px 3px 10px;vertical-align:middle}
.warn{color:#a15c00}.sig{color:#a11}.ns{color:#666}
.panels{display:flex;flex-wrap:wrap;gap:6px}
</style></head><body>
<h1>Which training images help or hurt {{ model }}</h1>
<p class="meta">data <b>{{ data }}</b> · {{ n_items }} items valued · FID against {{ n_reference }} held-out real images
({{ features }} features) · estimate: {{ members }} members on random halves · verification: {{ seeds }} paired seeds ·
{{ steps }} steps per member · {{ seconds }} s</p>
<div id="answer"><p class="big">{{ headline }}</p>
<p>What <b>value</b> means: {{ meaning }}. Rank 1 is the item the estimate calls most harmful.</p>
{% for n in notes %}<p class="warn">{{ n }}</p>{% endfor %}</div>

<h2>Verification by retraining</h2>
<p>FID (lower is better) after removing a fraction of the training set: the items ranked most harmful (top), the
same number at random (random), and the audit's worst flags (audit); fraction 0 is the full set. Points: mean
over seeds; bars: 95% t interval of that mean (one arm's seeds). The primary tests (largest fraction, Holm over three)
use the exact sign-flip test on the paired seeds.</p>
<div class="panels">{{ chart }}</div>
<p class="legend">{% for name, color, words in legend %}<span style="background:{{ color }}"></span>{{ name }}: {{ words }}{% endfor %}</p>
<table id="tests"><tr><th>fraction</th><th class="l">comparison</th><th>FID top</th><th>FID other</th>
<th>effect (top - other)</th><th>95% interval</th><th>p</th><th>Holm p</th><th>seeds</th><th class="l">reading</th></tr>
{% for t in tests %}<tr><td>{{ t.fraction }}</td><td class="l">{{ t.comparison }}</td><td>{{ t.top }}</td>
<td>{{ t.other }}</td><td>{{ t.effect }}</td><td>{{ t.ci }}</td><td>{{ t.p }}</td><td>{{ t.p_holm }}</td>
<td>{{ t.n }}</td><td class="l {{ t.cls }}">{{ t.reading }}</td></tr>{% endfor %}</table>

<h2>Most harmful items</h2>
<div class="thumbs" id="harmful">{% for it in harmful %}<div class="thumb"><img alt="{{ it.id }}" src="data:image/png;base64,{{ it.png }}">
<div>#{{ it.rank }} {{ it.id }}</div><div>label {{ it.label }}</div><div>value {{ it.value }}</div><div>score {{ it.score }}</div>
{% if it.audit %}<div>audit: {{ it.audit }}</div>{% endif %}</div>{% endfor %}</div>
<h2>Most helpful items</h2>
<div class="thumbs" id="helpful">{% for it in helpful %}<div class="thumb"><img alt="{{ it.id }}" src="data:image/png;base64,{{ it.png }}">
<div>#{{ it.rank }} {{ it.id }}</div><div>label {{ it.label }}</div><div>value {{ it.value }}</div><div>score {{ it.score }}</div>
</div>{% endfor %}</div>

<h2>Groups</h2>
<p>Value: the sum of the group's item values (FID points; interval: bootstrap over its items). For classes and
clusters, retrained without the group{{ keep_words }} on {{ group_seeds }} paired seed(s): the change of FID and of the
generator's coverage and recall <i>of that group's real images</i>; a large drop in coverage means the model
needs more images of this kind.</p>
<table id="groups"><tr><th class="l">group</th><th class="l">kind</th><th>n</th><th>value</th><th>interval</th>
<th>FID change without</th><th>coverage (full → without)</th><th>recall (full → without)</th></tr>
{% for g in groups %}<tr><td class="l">{{ g.group }}</td><td class="l">{{ g.kind }}</td><td>{{ g.n }}</td><td>{{ g.value }}</td>
<td>{{ g.interval }}</td><td>{{ g.fid }}</td><td>{{ g.coverage }}</td><td>{{ g.recall }}</td></tr>{% endfor %}</table>
<p class="meta">Files: items.csv (every item: id, value, rank, score, fit, margin, audit), groups.csv, verification.csv,
arms.csv, value.json.</p>
</body></html>
"""


def _png(img: np.ndarray) -> str:
    from .arms import grid_png

    return base64.b64encode(grid_png(img[None], scale=max(1, 64 // max(img.shape[1:])))).decode()


def _ci(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) or np.isfinite(hi)):
        return "unbounded" if math.isinf(lo) or math.isinf(hi) else "n/a"
    return f"[{fmt_num(lo)}, {fmt_num(hi)}]"


def _thumb(items: Any, pool: Dataset, i: int) -> dict[str, Any]:
    r = items.iloc[i]
    return {"id": str(r["id"]), "rank": int(r["rank"]), "label": str(r["label"]), "value": fmt_num(float(r["value"])),
            "score": fmt_num(float(r["score"])), "audit": str(r["audit_checks"] or ""), "png": _png(pool.images[i])}


def render_value(result: Mapping[str, Any], pool: Dataset) -> str:
    """The report page of one ``reports value`` result (see `reports.value_run.run`)."""
    import jinja2
    from markupsafe import Markup

    from .analysis import t_interval

    cfg = result["config"]
    items = result["items"]
    order = np.argsort(items["rank"].to_numpy())
    harmful = [_thumb(items, pool, int(i)) for i in order[:TOP]]
    helpful = [_thumb(items, pool, int(i)) for i in order[::-1][:TOP]]
    series = {}
    for kind, pts in result["curves"].items():
        ser = []
        for x, vals in pts:
            lo, hi = t_interval(vals)
            half = (hi - lo) / 2 if np.isfinite(lo) else 0.0
            ser.append((float(x), Stat(float(np.mean(vals)), float(half), len(vals))))
        series[kind] = ser
    chart = svg_chart(series, title="FID after removing items", xlabel="fraction of the training set removed",
                      width=460, height=280, lower_better=True)
    tests = []
    for t in result["tests"]:
        cls = "sig" if t["significant"] else "ns"
        reading = ("significant: " + t["direction"]) if t["significant"] else (
            "not significant" if t["primary"] else "descriptive")
        tests.append({"fraction": f"{t['fraction']:g}", "comparison": t["comparison"], "top": fmt_num(t["top_mean"]),
                      "other": fmt_num(t["other_mean"]), "effect": fmt_num(t["effect"]), "ci": _ci(t["ci_low"], t["ci_high"]),
                      "p": fmt_num(t["p_value"]), "p_holm": fmt_num(t["p_holm"], missing=""), "n": t["n_pairs"],
                      "cls": cls, "reading": reading})
    groups = []
    for g in result["groups"]:
        def pair(m: str, g: Mapping[str, Any] = g) -> str:
            a, b = g.get(f"{m}_full"), g.get(f"{m}_without")
            return "" if a is None else f"{fmt_num(a)} → {fmt_num(b)}"
        seeds = int(g.get("arm_seeds") or 0)
        fid = "" if g.get("fid_change") is None else (
            f"{fmt_num(g['fid_change'])} " + ("(1 seed: no interval)" if seeds < 2 else
                                              _ci(g.get("fid_change_low", math.nan), g.get("fid_change_high", math.nan))))
        groups.append({"group": g["group"], "kind": g["kind"], "n": g["n"], "value": fmt_num(g["value"]),
                       "interval": _ci(g["value_low"], g["value_high"]), "fid": fid, "coverage": pair("coverage"),
                       "recall": pair("recall")})
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    keep = float(cfg.get("group_keep") or 0.0)
    return env.from_string(TEMPLATE).render(
        data=str(cfg["data"]), model=str(cfg["model"]), n_items=result["n_items"], n_reference=result["n_reference"],
        features=str((result.get("features") or {}).get("name", "")), members=cfg["members"], seeds=cfg["seeds"],
        steps=cfg["steps"], seconds=fmt_num(result["seconds"].get("total")), headline=result["headline"],
        meaning=result["value_meaning"], notes=result["notes"], chart=Markup(chart), tests=tests,
        legend=[(k, COLORS[i % len(COLORS)], LEGEND[k]) for i, k in enumerate(series)],
        harmful=harmful, helpful=helpful, groups=groups, group_seeds=cfg["group_seeds"],
        keep_words="" if keep == 0 else f" (thinned to {keep:g} of it)")
