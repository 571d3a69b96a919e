"""The HTML audit report: one self-contained file (inline CSS, thumbnails as inline base64 PNGs, no
scripts, no network), every string from the user's data escaped by jinja2's autoescape.

Layout: a ten-second summary (what is wrong, how many, what to do), then one section per check with
its worst items as thumbnails and scores, duplicate groups side by side, and the check's own summary
(e.g. the near-duplicate operating point). Thumbnails are capped per section and shrunk when the
total would pass a byte budget, so the file stays small whatever the dataset's size.
"""
from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .advice import ADVICE, unreadable_items
from .dataset import Dataset

if TYPE_CHECKING:
    import pandas as pd

    from .checks import CheckResult

THUMB_SIDES = (64, 48, 32, 24)  # tried in turn until the thumbnails fit the budget
THUMB_BUDGET = 3_000_000  # bytes of base64 thumbnails in one report
MAX_GROUP_MEMBERS = 8
MAX_UNREADABLE_ROWS = 200
_OP_KEYS = ("operating", "precision", "recall", "threshold", "calibrat")


def render_report(ds: Dataset, results: Mapping[str, "CheckResult"], findings: "pd.DataFrame",
                  summary: Mapping[str, Any], profile: Mapping[str, Any], *, max_thumbs: int = 24) -> str:
    """The report as one HTML string (see the module docstring)."""

    n = len(ds)
    max_thumbs = max(1, int(max_thumbs))
    max_groups = max(4, max_thumbs // 2)

    def item(i: int, res: "CheckResult") -> dict[str, Any]:
        return {
            "i": i,
            "path": ds.path_of(i),
            "score": float(np.nan_to_num(res.scores[i], nan=0.0)),
            "detail": str(res.details[i]) if res.details is not None else "",
            "label": ds.label_name(ds.labels[i]),
        }

    sections = []
    needed: set[int] = set()
    for name, res in results.items():
        s = summary["checks"][name]
        meaning, action = ADVICE.get(name, (s.get("description", ""), "look at the flagged items"))
        sec: dict[str, Any] = {
            "name": name, "description": s.get("description", ""), "meaning": meaning,
            "action": action.replace("SOURCE", ds.source or "SOURCE"),
            "n_flagged": int(s["n_flagged"]), "percent": 100.0 * int(s["n_flagged"]) / max(n, 1),
            "score": s.get("score"), "threshold": s.get("threshold"),
            "params": _flat(s.get("params") or {}), "facts": _flat(_drop_lists(s.get("summary") or {})),
            "op_point": [], "items": [], "groups": [], "unreadable": [], "shown": 0, "more": 0,
        }
        sec["op_point"] = _operating_point(s.get("summary") or {})
        if name == "unreadable":
            rows = unreadable_items(ds, res)
            sec["unreadable"] = rows[:MAX_UNREADABLE_ROWS]
            sec["more"] = max(0, len(rows) - MAX_UNREADABLE_ROWS)
        else:
            flagged = np.flatnonzero(res.flags)
            if res.groups is not None:  # duplicate checks: show whole groups side by side
                grp = np.asarray(res.groups)
                in_group = np.flatnonzero(grp >= 0)
                gids, sizes = np.unique(grp[in_group], return_counts=True)
                order = np.lexsort((gids, -sizes))
                for g in gids[order][:max_groups].tolist():
                    members = np.flatnonzero(grp == g)
                    shown = members[:MAX_GROUP_MEMBERS].tolist()
                    needed.update(shown)
                    sec["groups"].append({"id": int(g), "size": int(members.size),
                                          "items": [item(i, res) for i in shown],
                                          "more": int(members.size - len(shown))})
                sec["shown"] = min(len(gids), max_groups)
                sec["more"] = max(0, len(gids) - max_groups)
                sec["n_groups"] = int(len(gids))
            else:
                scores = np.nan_to_num(np.asarray(res.scores, np.float64), nan=0.0)
                worst = flagged[np.lexsort((flagged, scores[flagged]))][:max_thumbs].tolist()
                needed.update(worst)
                sec["items"] = [item(i, res) for i in worst]
                sec["shown"] = len(worst)
                sec["more"] = int(flagged.size - len(worst))
        sections.append(sec)
    # flagged checks first (most items first), clean ones after, each in run order otherwise
    sections.sort(key=lambda x: (x["n_flagged"] == 0, -x["n_flagged"]))

    thumbs = _encode_thumbs(ds, sorted(needed))
    counts = profile.get("class_counts") or {}
    top = max(counts.values(), default=0)
    fair = (sum(counts.values()) / len(counts)) if counts else 0.0
    classes = [{"name": k, "count": v, "width": (100.0 * v / top) if top else 0.0, "low": v < 0.5 * fair}
               for k, v in counts.items()]
    env = _env()
    return env.from_string(_TEMPLATE).render(
        source=ds.source, n=n, shape=list(ds.shape), n_classes=ds.n_classes, summary=summary,
        headline=summary.get("headline", []), sections=sections, thumbs=thumbs, classes=classes,
        clean=[s["name"] for s in sections if s["n_flagged"] == 0],
        skipped=summary.get("skipped", {}), errors=summary.get("errors", {}),
        n_unreadable=len(ds.unreadable), profile=profile, max_group_members=MAX_GROUP_MEMBERS,
    )


def _env() -> Any:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    return env


def _num(v: Any) -> str:
    from .io import fmt_num

    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return fmt_num(v)  # 3 significant digits, as the study report
    if isinstance(v, Mapping):
        return " · ".join(f"{k} {_num(x)}" for k, x in v.items())
    return str(v)


def _flat(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dict -> [("a.b", scalar), ...] (lists of scalars shortened to 10 entries)."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.extend(_flat(v, key + "."))
        elif isinstance(v, (list, tuple)):
            shown = ", ".join(_num(x) for x in v[:10])
            out.append((key, f"[{shown}{', …' if len(v) > 10 else ''}]"))
        else:
            out.append((key, v))
    return out


def _operating_point(summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A short (key, value) list for a check that reports an operating point: its scalars, and
    each nested dict on one line (``recall_by_edit: jpeg 0.99 · noise 1``)."""
    op = next((v for k, v in summary.items() if "operating" in str(k).lower() and isinstance(v, Mapping)), None)
    if op is None:
        if not any(t in str(k).lower() for k in summary for t in ("precision", "recall")):
            return []
        op = {k: v for k, v in summary.items() if any(t in str(k).lower() for t in _OP_KEYS)}
    rows: list[tuple[str, Any]] = []
    for k, v in op.items():
        if isinstance(v, Mapping):
            rows.append((str(k), " · ".join(f"{kk} {_num(vv)}" for kk, vv in v.items() if not isinstance(vv, (Mapping, list)))))
        elif not isinstance(v, (list, tuple)):
            rows.append((str(k), v))
    return rows


def _drop_lists(d: Mapping[str, Any]) -> dict[str, Any]:
    """The summary without per-item lists (file lists, group lists): those are shown elsewhere."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], (Mapping, list, tuple)):
            out[k] = f"{len(v)} entries (see findings.csv)"
        elif isinstance(v, Mapping) and len(v) > 30:
            out[k] = f"{len(v)} entries"
        elif isinstance(v, Mapping):
            out[k] = _drop_lists(v)
        else:
            out[k] = v
    return out


def _encode_thumbs(ds: Dataset, idx: list[int]) -> dict[int, dict[str, Any]]:
    """Item index -> {"src": data URI of a PNG, "pixelated": bool}, within THUMB_BUDGET bytes."""
    thumbs: dict[int, dict[str, Any]] = {}
    for side in THUMB_SIDES:
        thumbs = {i: _thumb(ds.images[i], side) for i in idx}
        if sum(len(t["src"]) for t in thumbs.values()) <= THUMB_BUDGET:
            break
    return thumbs


def _thumb(img: np.ndarray, side: int) -> dict[str, Any]:
    """A (C, H, W) uint8 image as a PNG data URI no larger than ``side`` pixels. Small images are
    embedded as they are and enlarged by the browser with nearest-neighbour (CSS pixelated)."""
    from PIL import Image

    arr = img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0))
    pil = Image.fromarray(arr)
    small = max(pil.size) <= side
    if not small:
        pil.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return {"src": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
            "pixelated": small}


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>datacheck audit: {{ source }}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:20px 24px 60px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:18px;margin:0 0 6px}h3{font-size:14px;margin:14px 0 6px}
.sub{color:#5b6673;margin:0 0 16px}
.card{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:16px 18px;margin:14px 0}
.verdict{font-size:17px;font-weight:600;margin:0 0 10px}
.ok{color:#1b7a3a}.bad{color:#b3261e}.warn{color:#9a6700}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.03em;color:#5b6673}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
a{color:#0b57d0;text-decoration:none}a:hover{text-decoration:underline}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.pill{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;font-weight:600;background:#fde7e4;color:#b3261e}
.pill.zero{background:#e3f4e8;color:#1b7a3a}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:96px}
figure img{width:64px;height:64px;object-fit:contain;display:block;background:#eceff3;border:1px solid #d3d9e0;border-radius:3px}
img.px{image-rendering:pixelated;image-rendering:crisp-edges}
figcaption{font-size:11px;line-height:1.3;color:#3c4650;overflow-wrap:anywhere;margin-top:3px}
figcaption .s{font-weight:600;color:#b3261e}
.groups{display:flex;flex-wrap:wrap;gap:10px}
.group{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;padding:8px;border:1px solid #dde2e8;border-radius:6px;background:#fafbfc;max-width:100%}
.group .gh{width:100%;font-size:12px;color:#5b6673}
.bar{background:#dfe6ee;height:10px;border-radius:2px}.bar i{display:block;height:10px;background:#4a78c2;border-radius:2px}
.bar i.low{background:#c2554a}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:6px 0}
dl.kv dt{color:#5b6673}dl.kv dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.op{background:#eef4ff;border:1px solid #c9dafc;border-radius:6px;padding:6px 10px;margin:8px 0}
.muted{color:#5b6673}
nav a{margin-right:10px;white-space:nowrap}
</style>
</head>
<body>
<main>
<h1>Audit of <span class="mono">{{ source }}</span></h1>
<p class="sub">{{ n|num }} images{% if n_unreadable %} loaded, {{ n_unreadable|num }} unreadable{% endif %} ·
{{ n_classes }} classes · shape (C, H, W) {{ shape|join(" × ") }} · {{ summary.checks|length }} checks in {{ summary.seconds|num }} s ·
fingerprint <code>{{ summary.fingerprint[:12] }}</code></p>

<section class="card" id="summary">
{% if headline %}
<p class="verdict bad">{{ headline|length }} of {{ summary.checks|length }} checks found problems ({{ summary.n_findings|num }} findings).</p>
<table>
<thead><tr><th>Check</th><th class="n">Items</th><th class="n">Share</th><th>What it means</th><th>What to do</th></tr></thead>
<tbody>
{% for r in headline %}
<tr><td><a href="#check-{{ r.check }}">{{ r.check }}</a></td><td class="n">{{ r.n_flagged|num }}</td>
<td class="n">{{ "%.1f"|format(r.percent) }}%</td><td>{{ r.meaning }}</td><td>{{ r.action }}</td></tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p class="verdict ok">No check flagged anything in {{ n|num }} images.</p>
{% endif %}
{% if clean %}<p class="ok">Clean: {{ clean|join(", ") }}.</p>{% endif %}
{% if skipped %}<p class="muted">Skipped: {% for k, v in skipped.items() %}{{ k }} ({{ v }}){% if not loop.last %}, {% endif %}{% endfor %}.</p>{% endif %}
{% if errors %}<p class="bad">Failed to run: {% for k, v in errors.items() %}{{ k }} ({{ v }}){% if not loop.last %}; {% endif %}{% endfor %}.</p>{% endif %}
<p class="muted">Every flagged item is listed in <code>findings.csv</code> beside this file; per-check numbers in <code>summary.json</code>.</p>
{% for space, g in (summary.neighbors or {}).items() %}<p class="muted">Neighbours: {{ g.k }}-NN graph on {{ space }} features, {{ g.method }} ({{ g.library }}){% if g.recall is not none %}, recall@{{ g.k }} {{ g.recall }} against exact search on {{ g.recall_queries }} sampled items{% endif %}.</p>{% endfor %}
</section>


<nav class="card">{% for s in sections %}<a href="#check-{{ s.name }}">{{ s.name }} <span class="pill{{ ' zero' if not s.n_flagged else '' }}">{{ s.n_flagged|num }}</span></a> {% endfor %}</nav>

{% for s in sections %}
<section class="card" id="check-{{ s.name }}">
<h2>{{ s.name }} <span class="pill{{ ' zero' if not s.n_flagged else '' }}">{{ s.n_flagged|num }} flagged{% if s.n_flagged %} · {{ "%.1f"|format(s.percent) }}%{% endif %}</span></h2>
<p>{{ s.description or s.meaning }}{% if s.n_flagged %} <b>What to do:</b> {{ s.action }}.{% endif %}</p>
<p class="muted">dataset score {{ s.score|num }} · threshold {{ s.threshold|num }}</p>
{% if s.op_point %}
<div class="op"><b>Operating point</b>
<dl class="kv">{% for k, v in s.op_point %}<dt>{{ k }}</dt><dd>{{ v|num }}</dd>{% endfor %}</dl></div>
{% endif %}
{% if s.unreadable %}
<table><thead><tr><th>File</th><th>Reason</th></tr></thead><tbody>
{% for u in s.unreadable %}<tr><td class="mono">{{ u.path }}</td><td>{{ u.reason }}</td></tr>{% endfor %}
</tbody></table>
{% if s.more %}<p class="muted">… and {{ s.more|num }} more in findings.csv.</p>{% endif %}
{% endif %}
{% if s.groups %}
<h3>Largest groups ({{ s.shown }} of {{ s.n_groups|num }})</h3>
<div class="groups">
{% for g in s.groups %}
<div class="group"><div class="gh">group {{ g.id }} · {{ g.size }} items</div>
{% for it in g["items"] %}{% set t = thumbs[it.i] %}
<figure><img class="{{ 'px' if t.pixelated else '' }}" src="{{ t.src }}" alt="{{ it.path }}" title="{{ it.path }}">
<figcaption>{{ it.path }}<br><span class="s">{{ "%.3f"|format(it.score) }}</span>{% if it.label %} · {{ it.label }}{% endif %}{% if it.detail %}<br>{{ it.detail }}{% endif %}</figcaption></figure>
{% endfor %}
{% if g.more %}<div class="muted">+{{ g.more }} more</div>{% endif %}
</div>
{% endfor %}
</div>
{% if s.more %}<p class="muted">… and {{ s.more|num }} more groups in findings.csv.</p>{% endif %}
{% endif %}
{% if s["items"] %}
<h3>Worst {{ s.shown }}{% if s.more %} of {{ s.n_flagged|num }}{% endif %} (lowest score first)</h3>
<div class="grid">
{% for it in s["items"] %}{% set t = thumbs[it.i] %}
<figure><img class="{{ 'px' if t.pixelated else '' }}" src="{{ t.src }}" alt="{{ it.path }}" title="{{ it.path }}">
<figcaption>{{ it.path }}<br><span class="s">{{ "%.3f"|format(it.score) }}</span>{% if it.label %} · {{ it.label }}{% endif %}{% if it.detail %}<br>{{ it.detail }}{% endif %}</figcaption></figure>
{% endfor %}
</div>
{% if s.more %}<p class="muted">… and {{ s.more|num }} more in findings.csv.</p>{% endif %}
{% endif %}
{% if not s.n_flagged %}<p class="ok">Nothing flagged.</p>{% endif %}
<details><summary class="muted">Parameters and summary</summary>
<dl class="kv">{% for k, v in s.params %}<dt>param {{ k }}</dt><dd>{{ v|num }}</dd>{% endfor %}
{% for k, v in s.facts %}<dt>{{ k }}</dt><dd>{{ v|num }}</dd>{% endfor %}</dl>
</details>
</section>
{% endfor %}

{% if classes %}
<section class="card" id="classes">
<h2>Classes</h2>
<table>
{% for c in classes %}
<tr><td style="width:22%">{{ c.name }}</td><td class="n" style="width:8%">{{ c.count|num }}</td>
<td><div class="bar"><i class="{{ 'low' if c.low else '' }}" style="width:{{ '%.1f'|format(c.width) }}%"></i></div></td></tr>
{% endfor %}
</table>
</section>
{% endif %}

<section class="card" id="profile">
<h2>Profile</h2>
<dl class="kv">
<dt>sizes found</dt><dd>{% for k, v in profile.sizes_found.items() %}{{ k }} ({{ v }}){% if not loop.last %}, {% endif %}{% endfor %}</dd>
<dt>modes found</dt><dd>{% for k, v in profile.modes_found.items() %}{{ k }} ({{ v }}){% if not loop.last %}, {% endif %}{% endfor %}</dd>
<dt>channel means</dt><dd>{% for v in profile.channel_means %}{{ "%.3f"|format(v) }} {% endfor %}</dd>
<dt>skipped files</dt><dd>{{ profile.skipped }}</dd>
<dt>unlabeled</dt><dd>{{ profile.n_unlabeled }}</dd>
</dl>
</section>
<p class="muted">Written by datacheck. Self-contained: no scripts, no network; thumbnails are embedded.</p>
</main>
</body>
</html>
"""
