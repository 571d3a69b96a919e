"""The HTML study report: one self-contained offline file (inline SVG plots, inline PNG grids, no
scripts, no CDN). Every data-derived string goes through jinja2's autoescape or ``html.escape``.

Order: the answer card (the one answer, its comparisons, the pilot and control notes, a forest plot of
the primary effects) beside the methods box, the verdict, one collapsible section per factor (its
sentence and plots), failed arms, the effects table, copies, sample grids per arm, every result in a
table, and a reproducibility block. The words come from `reports.verdict`, the charts from
`reports.svg`, the statistics from `reports.analysis`.
"""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from datacheck.io import fmt_num, write_text

from .analysis import with_derived
from .factors import FACTORS
from .svg import COLORS, svg_chart, svg_forest
from .verdict import (METRICS, _num, axis_words, panels, copying_arms, curve, factor_sentences,
                      study_analysis, verdict_general)

# ============================================================================ page
TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Data-ablation study: {{ data }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1250px;padding:16px 24px;color:#222}
h1{margin:.2em 0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.6em}
.verdict{background:#f3f7fb;border-left:4px solid #1f77b4;padding:8px 16px}
.verdict li{margin:.35em 0}
.panels{display:flex;flex-wrap:wrap;gap:6px}
.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f4f4f4;position:sticky;top:0}td.l,th.l{text-align:left}
.grids td{text-align:center;vertical-align:top}.grids img{width:150px;image-rendering:pixelated}
.scroll{overflow-x:auto;max-height:600px}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}
.warn{color:#a15c00}
.top{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
#answer{flex:1 1 640px;background:#f3f7fb;border-left:5px solid #1f77b4;padding:10px 16px}
#answer .big{font-size:1.25em;font-weight:600;margin:.2em 0 .5em}
#methods{flex:0 1 420px;background:#f8f8f8;border:1px solid #ddd;padding:8px 14px;font-size:.88em}
#methods li{margin:.25em 0}
details{margin:.4em 0;border:1px solid #e3e3e3;padding:4px 10px}
summary{cursor:pointer;font-weight:600}
.sig{color:#a11}.ns{color:#666}
</style></head><body>
<h1>Data-ablation study</h1>
<p class="meta">data <b>{{ data }}</b> · {{ n_arms }} finished arms of {{ n_grid }} · models {{ models|join(", ") }} ·
seeds {{ seeds|join(", ") }} · {{ n_samples }} generated samples per arm, scored against {{ n_ref }} held-out real images
with the <b>{{ features_name }}</b> extractor{% if accuracy is not none %} (held-out accuracy {{ accuracy }}){% endif %}</p>
{% if incomplete %}<p class="warn">This study is not finished: {{ n_grid - n_arms }} arms have not run yet; numbers below use what has.</p>{% endif %}
{% for w in warnings %}<p class="warn">{{ w }}</p>{% endfor %}

<div class="top">
<section id="answer" aria-label="the answer">
<p class="big">{{ answer.sentence }}</p>
{% for d in answer.details %}<p>{{ d }}</p>{% endfor %}
{% for n in notes %}<p class="warn">{{ n }}</p>{% endfor %}
{% if forest %}{{ forest }}{% endif %}
</section>
<aside id="methods" aria-label="methods"><b>Methods, declared before the data</b>
<ul>{% for m in methods %}<li>{{ m }}</li>{% endfor %}</ul></aside>
</div>

<h2 id="verdict">Verdict</h2>
<div class="verdict"><ul>{% for s in verdict %}<li>{{ s }}</li>{% endfor %}</ul></div>
<p class="meta">Only the primary tests (one per factor, in the box above) are called significant; every other number
is descriptive: ± is one standard deviation over seeds. Each factor's seed also draws which items it affects, so the
spread includes that luck.</p>

<h2 id="factors">Each factor</h2>
<p class="legend">{% for m in legend %}<span style="color:{{ m.color }}">&#9632;</span> {{ m.name }} &nbsp; {% endfor %}<span class="meta">(bars: ±1 std over seeds)</span></p>
{% for f in factor_sections %}
<details{% if loop.first %} open{% endif %}><summary>{{ f.name }} <span class="meta">({{ f.kind }})</span>{% if f.status %} ·
<span class="{{ 'sig' if f.status.startswith('significant') else 'ns' }}">{{ f.status }}</span>{% endif %}
<span class="meta">— {{ f.meaning }}</span></summary>
{% if f.sentence %}<p>{{ f.sentence }}</p>{% endif %}
<div class="panels">{% for svg in f.svgs %}{{ svg }}{% endfor %}</div>
</details>
{% endfor %}

{% if failed %}<h2 id="failed">Failed arms</h2>
<p>These arms ended with an error instead of a result; every other arm is unaffected. <code>reports ablate --retry-failed</code>
(same settings) runs them again.</p>
<table><tr><th class="l">arm</th><th class="l">reason</th></tr>
{% for f in failed %}<tr><td class="l">{{ f.arm }}</td><td class="l">{{ f.error }}</td></tr>{% endfor %}
</table>{% endif %}

{% if effect_rows %}<h2 id="effects">Effects</h2>
<details><summary>The {{ n_tests }} primary tests first, then the descriptive paired effects (as in <code>effects.csv</code>)</summary>
<p>Primary rows: the plan's test per factor, pooled over models (blocks = seed x model), its matching interval and
Holm's adjustment within the family; "significant" and "direction" come from it alone. Descriptive rows: seed s of each
arm paired with seed s of its model's baseline, the mean difference with a paired t interval and the unadjusted sign-flip
p; never called significant. With n pairs the smallest possible sign-flip p is 2/2<sup>n</sup>.</p>
<div class="scroll"><table><tr><th class="l">factor · level · model · metric</th><th>primary</th><th>baseline</th><th>arm</th><th>effect</th><th>95% interval</th><th>p</th><th>p (Holm)</th><th>pairs</th><th>significant</th><th class="l">direction</th></tr>
{% for r in effect_rows %}<tr><td class="l">{{ r.test }}</td><td>{{ 'yes' if r.primary else '' }}</td><td>{{ r.base }}</td><td>{{ r.arm }}</td><td>{{ r.effect }}</td><td>{{ r.ci }}</td><td>{{ r.p }}</td><td>{{ r.holm }}</td><td>{{ r.n }}</td><td>{{ r.sig }}</td><td class="l">{{ r.dir }}</td></tr>{% endfor %}
</table></div></details>{% endif %}

<h2 id="copies">Copies of training images</h2>
{% if copy_rows %}<p>Per arm, the training images its generator copied most (left), beside their copies among the arm's
samples, found one by one by <code>datacheck copies</code> (identical, re-encoded, brightness-changed or shifted pictures of a
training image). The held-out rate is the same search on the study's real reference (no copies): the false-alarm
baseline; p is the one-sided Fisher test that the arm's rate is higher.</p>
<table class="grids"><tr><th class="l">arm</th><th>copy rate</th><th>held-out rate</th><th>p</th><th class="l">most-copied training images and their copies</th></tr>
{% for r in copy_rows %}<tr><td class="l">{{ r.arm }}</td><td>{{ r.rate }}</td><td>{{ r.heldout }}</td><td>{{ r.p }}</td><td class="l">{% if r.b64 %}<img alt="copies of {{ r.arm }}" src="data:image/png;base64,{{ r.b64 }}">{% endif %}</td></tr>{% endfor %}
</table>{% else %}<p>No arm's samples copy a training image (per-sample search; see the copy_rate column).</p>{% endif %}

<h2 id="samples">Sample grids per arm</h2>
{% for f in grid_sections %}
<h3>{{ f.name }}</h3>
<table class="grids"><tr><th class="l">level</th>{% for c in f.cols %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in f.rows %}<tr><td class="l">{{ r.level }}</td>{% for img in r.imgs %}<td>{% if img %}<img alt="{{ img.alt }}" src="data:image/png;base64,{{ img.b64 }}">{% else %}—{% endif %}</td>{% endfor %}</tr>{% endfor %}
</table>
{% endfor %}

<h2 id="results">Every result</h2>
<div class="scroll"><table><tr>{% for c in columns %}<th class="{{ 'l' if loop.index <= 5 else '' }}">{{ c }}</th>{% endfor %}</tr>
{% for r in table %}<tr>{% for v in r %}<td class="{{ 'l' if loop.index <= 5 else '' }}">{{ v }}</td>{% endfor %}</tr>{% endfor %}
</table></div>

<h2 id="reproduce">Reproducibility</h2>
<p>Command{% if commands|length != 1 %}s{% endif %}:</p>
<pre>{% for c in commands %}{{ c }}
{% endfor %}</pre>
<table>
<tr><th class="l">data fingerprint</th><td class="l">{{ protocol.data_fingerprint }}</td></tr>
<tr><th class="l">reference (held out)</th><td class="l">{{ n_ref }} images, fingerprint {{ protocol.reference_fingerprint }}, split seed {{ protocol.split_seed }}</td></tr>
<tr><th class="l">training pool</th><td class="l">{{ n_pool }} images, fingerprint {{ protocol.pool_fingerprint }}</td></tr>
<tr><th class="l">feature extractor</th><td class="l">{{ features_identity }}</td></tr>
<tr><th class="l">training steps / batch size</th><td class="l">{{ steps_text }} / {{ protocol.batch_size }}</td></tr>
<tr><th class="l">image size</th><td class="l">{{ images_text }}</td></tr>
<tr><th class="l">network width</th><td class="l">{{ widths_text }}</td></tr>
{% for t in training %}<tr><th class="l">how arms trained{% if training|length > 1 %} (run {{ loop.index }}){% endif %}</th><td class="l">{{ t }}</td></tr>{% endfor %}
{% for k, v in versions.items() %}<tr><th class="l">{{ k }}</th><td class="l">{{ v }}</td></tr>{% endfor %}
</table>
</body></html>
"""


def _b64(path: Path) -> str | None:
    try:
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None


def build_context(study: Path) -> dict[str, Any]:
    import pandas as pd

    from .store import read_results
    from .study import grid as study_grid, StudyConfig

    df = with_derived(read_results(study))  # + the copy signals the plan can test (dup_excess)
    meta = json.loads((study / "study.json").read_text()) if (study / "study.json").exists() else {}
    cfg_d = meta.get("config", {})
    try:
        n_grid = len(study_grid(StudyConfig.from_dict(cfg_d))) if cfg_d else len(df)
    except Exception:
        n_grid = len(df)
    manifests: dict[str, Any] = {}
    features: dict[str, Any] = {}
    for arm_id in df.get("arm_id", []):
        d = study / "arms" / str(arm_id)
        try:
            manifests[str(arm_id)] = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError):
            pass
        if not features:
            try:
                features = json.loads((d / "result.json").read_text()).get("metrics", {}).get("features") or {}
            except (OSError, ValueError):
                pass
    if len(df):
        df["level"] = pd.to_numeric(df["level"], errors="coerce")
    models = list(dict.fromkeys(df["model"])) if len(df) else list(cfg_d.get("models", []))
    seeds = sorted(set(int(s) for s in df["seed"])) if len(df) else list(cfg_d.get("seeds", []))
    factor_order = [f for f in cfg_d.get("factors", []) if f in set(df.get("factor", []))] or \
        [f for f in dict.fromkeys(df.get("factor", [])) if f != "baseline"]
    from .effects import study_plan

    plan, reanalysed = study_plan(study)
    analysis = study_analysis(df, plan)
    sentences = factor_sentences(df, analysis, copying_arms(df)) if len(df) and "baseline" in set(df["factor"]) else {}

    factor_sections = []
    for f in factor_order:
        svgs = []
        for metric in panels(f):
            if metric not in df.columns or df[metric].isna().all():
                continue
            label, hib = METRICS[metric]
            series = {m: curve(df, f, metric, m) for m in models}
            svgs.append(svg_chart(series, title=label, xlabel=axis_words(f),
                                  log_x=f in FACTORS and FACTORS.get(f).log_scale, lower_better=not hib))
        row = analysis["primary"].get(f)
        factor_sections.append({"name": f, "xlabel": axis_words(f),
                                "kind": FACTORS.get(f).kind if f in FACTORS else "data",
                                "meaning": meta.get("factors", {}).get(f, ""), "svgs": svgs,
                                "sentence": sentences.get(f, ""),
                                "status": ("" if row is None else "significant, " + row["direction"]
                                           if row["significant"] else "not significant")})

    grid_sections = []
    cols = [(m, s) for m in models for s in seeds]
    for f in ["baseline"] + factor_order:
        rows = []
        levels = sorted(set(df.loc[df["factor"] == f, "level"].dropna().astype(float))) if f != "baseline" else [None]
        for lv in levels:
            imgs = []
            for m, s in cols:
                sel = df[(df["factor"] == f) & (df["model"] == m) & (df["seed"] == s)]
                if lv is not None:
                    sel = sel[np.isclose(sel["level"].astype(float), lv)]
                if len(sel):
                    aid = str(sel["arm_id"].iloc[0])
                    b = _b64(study / "arms" / aid / "samples.png")
                    imgs.append({"alt": aid, "b64": b} if b else None)
                else:
                    imgs.append(None)
            rows.append({"level": "—" if lv is None else f"{lv:g}", "imgs": imgs})
        if rows:
            grid_sections.append({"name": f, "cols": [f"{m} · seed {s}" for m, s in cols], "rows": rows})

    failed = []
    made: dict[str, set[str]] = {"library versions": set(), "feature extractor": set()}
    for p in sorted((study / "arms").glob("*/result.json")) if (study / "arms").is_dir() else []:
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("status") == "failed":
            failed.append({"arm": p.parent.name, "error": str(doc.get("error", ""))})
        elif isinstance(doc, dict) and doc.get("provenance"):
            made["library versions"].add(json.dumps(doc["provenance"].get("versions"), sort_keys=True))
            made["feature extractor"].add(json.dumps(doc["provenance"].get("extractor"), sort_keys=True))
    warnings = [f"Arms were made with {len(v)} different {k}: their numbers may not be comparable "
                "(see each arm's result.json, provenance)." for k, v in made.items() if len(v) > 1]
    seen: dict[str, list[str]] = {}
    for p in sorted((study / "arms").glob("*/result.json")) if (study / "arms").is_dir() else []:
        try:
            for w in json.loads(p.read_text()).get("metrics", {}).get("warnings") or []:
                seen.setdefault(str(w), []).append(p.parent.name)
        except (OSError, ValueError, AttributeError):
            continue
    warnings += _merge_warnings(seen)

    # the answer card: the one answer, its numbers, the primary effects side by side (data, model, control)
    rows = sorted(analysis["rows"], key=lambda r: ({"data": 0, "model": 1, "control": 2}.get(r["kind"], 3),
                                                   -abs(r["effect"])))
    def forest_label(r: Mapping[str, Any]) -> str:
        ref = r.get("reference", "baseline")
        return (f"{r['factor']} (farthest level {_num(float(r['level']))}"
                + (f", against {ref})" if ref != "baseline" else ")"))
    forest = svg_forest([{"label": forest_label(r), "effect": r["effect"],
                          "ci_low": r["ci_low"], "ci_high": r["ci_high"], "kind": r["kind"],
                          "significant": r["significant"]} for r in rows],
                        title=f"Primary effects on {plan.metric} (fitted change, pooled over models)") \
        if rows else None
    ans = analysis["answer"]
    notes = [n for n in (reanalysed, analysis["pilot"], analysis["control"]) if n]
    effect_rows, n_tests = [], 0
    if (study / "effects.csv").exists():
        eff = pd.read_csv(study / "effects.csv")
        n_tests = int(eff["primary"].astype(bool).sum()) if "primary" in eff.columns else 0
        if len(eff):
            eff = eff.reindex(eff["effect"].abs().sort_values(ascending=False).index)
            eff = eff.sort_values("primary", ascending=False, kind="stable") if "primary" in eff.columns else eff
            shown = eff[eff["metric"].isin(["fid", "recall", "label_agreement", "copy_rate"])]
            for r in shown.itertuples(index=False):
                effect_rows.append({"test": f"{r.factor} {_cell(r.level)} · {r.model} · {r.metric}",
                                    "primary": bool(getattr(r, "primary", False)),
                                    "base": _cell(r.baseline_mean), "arm": _cell(r.arm_mean), "effect": _cell(r.effect),
                                    "ci": f"[{_cell(r.ci_low)}, {_cell(r.ci_high)}]", "p": _cell(r.p_value),
                                    "holm": _cell(r.p_holm), "n": int(r.n_pairs),
                                    "sig": "yes" if bool(getattr(r, "significant", False)) else "",
                                    "dir": r.direction})

    copy_rows = []
    if "copy_rate" in df.columns:
        for r in df[df["copy_rate"].fillna(0) > 0].sort_values("copy_rate", ascending=False).itertuples(index=False):
            copy_rows.append({"arm": r.arm_id, "rate": _cell(r.copy_rate), "heldout": _cell(getattr(r, "copy_rate_heldout", None)),
                              "p": _cell(getattr(r, "copy_p", None)), "b64": _b64(study / "arms" / str(r.arm_id) / "copies.png")})

    columns = [c for c in df.columns]
    table = [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    acc = features.get("accuracy", features.get("test_accuracy"))
    proto = meta.get("protocol", {})
    return {
        "data": cfg_d.get("data", proto.get("data", "?")),
        "n_arms": len(df), "n_grid": n_grid, "incomplete": len(df) < n_grid,
        "models": models, "seeds": seeds,
        "legend": [{"name": m, "color": COLORS[i % len(COLORS)]} for i, m in enumerate(models)], "n_samples": proto.get("n_samples", "?"),
        "n_ref": meta.get("reference", {}).get("n", "?"), "n_pool": meta.get("pool", {}).get("n", "?"),
        "features_name": features.get("name", proto.get("features", "?")),
        "accuracy": None if acc is None else f"{float(acc):.3f}",
        "answer": {"verdict": ans.verdict, "sentence": ans.sentence, "details": list(ans.details)},
        "notes": notes, "methods": plan.methods(),
        "verdict": verdict_general(df, manifests, analysis) if len(df) else ["No arm has finished yet."],
        "factor_sections": factor_sections, "grid_sections": grid_sections,
        "copy_rows": copy_rows, "failed": failed, "warnings": warnings,
        "effect_rows": effect_rows, "n_tests": n_tests, "forest": forest,
        "columns": columns, "table": table,
        "commands": meta.get("commands", []) or ["(not recorded)"],
        "protocol": _Obj(proto), "versions": meta.get("versions", {}),
        "steps_text": _steps_text(proto.get("steps")),
        "widths_text": _widths_text(proto.get("widths"), cfg_d.get("width")),
        "images_text": _images_text(meta.get("images", {})),
        "training": [t.get("summary", "") for t in meta.get("training", [])],
        "features_identity": json.dumps(features, sort_keys=True) if features else proto.get("features", "?"),
    }


class _Obj(dict):
    """dict with attribute access for the template (missing keys are None)."""

    def __getattr__(self, k: str) -> Any:
        return self.get(k)


def _images_text(images: dict[str, Any]) -> str:
    """The shape the study trained and evaluated at, and the reduction from the data's own, if any."""
    orig, used = images.get("original_shape"), images.get("trained_shape")
    if not used:
        return "?"
    text = "x".join(map(str, used))
    if orig and orig != used:
        text += (f", area-downsampled from {'x'.join(map(str, orig))} (reference and training pool alike) "
                 "to fit a CPU study; every metric is measured at this size")
    return text


def _widths_text(widths: Any, setting: Any) -> str:
    """What the study's width setting did, e.g. that the CPU preset reduced the models' auto width."""
    if not isinstance(widths, dict) or all(v is None for v in widths.values()):
        return "each model's auto width (2x the image side, 16 to 64)"
    vals = ", ".join(f"{m}: {v}" for m, v in widths.items())
    if setting == "cpu":
        return (f"{vals} channels at full resolution: reduced for a CPU study (width x side <= 256, at least 8), "
                "where the models' auto width would be 2x the image side (16 to 64)")
    return f"{vals} channels at full resolution (set by the study)"


def _steps_text(steps: Any) -> str:
    if isinstance(steps, dict):
        return ", ".join(f"{m}: {v if v is not None else 'model default'}" for m, v in steps.items())
    return "model default" if steps is None else str(steps)


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _merge_warnings(seen: Mapping[str, list[str]]) -> list[str]:
    """One line per kind of evaluation warning: messages that differ only in their numbers merge, each
    differing number shown as its range ("12.4-19.9% of real held-out images ... (8 arms)")."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for w, arms in seen.items():
        groups.setdefault(_NUMBER.sub("#", w), []).append((w, len(arms)))
    out = []
    for template, members in groups.items():
        numbers = [[float(x) for x in _NUMBER.findall(w)] for w, _n in members]
        texts = [_NUMBER.findall(w) for w, _n in members]
        parts = template.split("#")
        line = parts[0]
        for k, rest in enumerate(parts[1:]):
            lo, hi = min(n[k] for n in numbers), max(n[k] for n in numbers)
            shown = texts[0][k] if lo == hi else f"{fmt_num(lo)}-{fmt_num(hi)}"
            line += shown + rest
        n = sum(c for _w, c in members)
        out.append(f"{line} ({n} arm{'s' if n > 1 else ''})")
    return out


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return fmt_num(v, missing="")
    return str(v)


def render_html(context: Mapping[str, Any]) -> str:
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    ctx = dict(context)
    # the SVGs are built here with every label escaped; mark them safe so they are not escaped twice
    ctx["factor_sections"] = [{**f, "svgs": [Markup(s) for s in f["svgs"]]} for f in ctx["factor_sections"]]
    ctx["forest"] = Markup(ctx["forest"]) if ctx.get("forest") else None  # built from escaped strings (svg_forest)
    return env.from_string(TEMPLATE).render(**ctx)


def render_study(study: str | os.PathLike) -> Path:
    """(Re)build ``STUDY/report.html`` (and ``STUDY/effects.csv``, the paired effects the report's table
    shows) from results.csv, study.json and the arms' files."""
    from datacheck.errors import UserError

    from .effects import write_effects

    study = Path(study)
    if not (study / "results.csv").exists() and not (study / "study.json").exists():
        raise UserError(f"{study} is not a study folder (no results.csv or study.json)")
    if (study / "results.csv").exists():
        write_effects(study)
    out = study / "report.html"
    write_text(out, render_html(build_context(study)))
    return out
