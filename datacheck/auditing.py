"""``datacheck audit``: run the checks, collect the findings, and write the audit artifacts.

Artifacts written with ``out=DIR`` (all atomically; the source itself is never touched):

- ``findings.csv``: one row per flagged item and check: ``id``, ``path``, ``check``, ``score``,
  ``detail``, ``group`` (duplicate group id, empty otherwise), ``label``;
- ``profile.json``: the same dict as ``datacheck profile --json``;
- ``summary.json``: per check ``n_flagged``, ``score``, ``threshold``, ``params`` and the check's own
  ``summary`` (e.g. the near-duplicate operating point), plus the ten-second ``headline``;
- ``report.html``: the self-contained HTML audit report.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .advice import ADVICE, unreadable_items  # noqa: F401  (part of the audit's API)
from .dataset import Dataset
from .errors import UserError
from .io import refuse_inside_source
from .sources import as_dataset, load  # noqa: F401  (as_dataset: part of the audit's API)

if TYPE_CHECKING:  # pandas and the checks load lazily: ``import datacheck`` stays fast
    import pandas as pd

    from .checks import CheckResult
    from .stream import StreamOptions, Streamed

log = logging.getLogger(__name__)

FINDING_COLUMNS = ("id", "path", "check", "score", "detail", "group", "label")


@dataclass
class AuditRun:
    """Everything one audit produced (``audit()`` returns only ``findings``)."""

    ds: Dataset
    results: dict[str, "CheckResult"]
    findings: "pd.DataFrame"
    summary: dict[str, Any]
    profile: dict[str, Any]
    out: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)


def audit(source_or_dataset: str | os.PathLike | Dataset, checks: Sequence[str] | None = None,
          params: Mapping[str, Mapping[str, Any]] | None = None, out: str | os.PathLike | None = None,
          *, features: str = "random", seed: int = 0, max_thumbs: int = 24, stream: bool | None = None) -> "pd.DataFrame":
    """Run the checks on a dataset and return the findings.

    Args:
        source_or_dataset: a `Dataset` or anything `datacheck.load` accepts.
        checks: check names to run (default: every registered check; label checks are skipped on
            unlabeled data).
        params: per-check parameter overrides, e.g. ``{"dark": {"threshold": 0.2}}``.
        out: folder for findings.csv, profile.json, summary.json and report.html (None: write nothing).
        features: feature extractor the feature-based checks use.
        seed: seed for every random choice the checks make.
        max_thumbs: thumbnails per section of the HTML report.
        stream: for a folder or CSV manifest: True measures each image at its own size in bounded
            memory (`datacheck.stream`), False loads it in memory, None (default) streams when an
            in-memory load would need over 512 MB or half the available memory.

    Returns:
        DataFrame, one row per flagged item and check: ``id``, ``path``, ``check``, ``score``
        (in [0, 1], lower = worse), ``detail``, ``group`` (duplicate group id or <NA>), ``label``.
        ``df.attrs["summary"]`` holds what summary.json holds.
    """
    run = run_audit(source_or_dataset, checks, params, out, features=features, seed=seed, max_thumbs=max_thumbs,
                    stream=stream)
    return run.findings


def run_audit(source_or_dataset: str | os.PathLike | Dataset, checks: Sequence[str] | None = None,
              params: Mapping[str, Mapping[str, Any]] | None = None, out: str | os.PathLike | None = None,
              *, features: str = "random", seed: int = 0, max_thumbs: int = 24, stream: bool | None = None,
              kind: str | None = None, load_options: Mapping[str, Any] | None = None,
              stream_options: "StreamOptions | None" = None, neighbors: str = "auto",
              exact_max_items: int | None = None, identity: str = "stat", executor: str = "local",
              address: str | None = None) -> AuditRun:
    """`audit`, returning the whole `AuditRun` (results, summary, profile, files).

    A folder or CSV manifest source is streamed (`datacheck.stream`) when ``stream`` is True, or
    when it is None and an in-memory load would need more than `datacheck.stream.stream_min_bytes`;
    the store then lives in ``OUT/store``. ``kind`` and ``load_options`` are `datacheck.load`'s.
    ``neighbors`` (auto | exact | approx) and ``exact_max_items`` (default
    `datacheck.neighbors.EXACT_MAX_ITEMS`) choose how the shared neighbour graph is searched.
    ``identity`` (stat | content), ``executor`` (local | ray) and ``address`` (a Ray cluster) are
    `datacheck.stream.StreamOptions`'s (used when no ``stream_options`` are given).
    """
    from .neighbors import resolve_method

    resolve_method(neighbors, 0)  # a bad value fails before the dataset loads
    from .checks import CHECKS, CheckContext, run_checks
    from .profile import profile as make_profile

    names = validate_checks(checks, params)
    params = {k: dict(v) for k, v in (params or {}).items()}
    out_dir = Path(out) if out is not None else None
    t0 = time.perf_counter()
    streamed = None
    if isinstance(source_or_dataset, Dataset):
        ds = source_or_dataset
    else:
        streamed = _maybe_stream(os.fspath(source_or_dataset), kind, dict(load_options or {}), stream, out_dir,
                                 stream_options, identity, executor, address)
        ds = streamed.ds if streamed is not None else load(source_or_dataset, kind=kind, **dict(load_options or {}))
    if out_dir is not None and streamed is None:
        refuse_inside_source(out_dir, ds.root, "--out", "the audit never writes into its input, pick a folder outside it")

    ctx = CheckContext(ds, features=features, seed=seed, neighbors=neighbors, exact_max_items=exact_max_items)
    if streamed is not None:  # measured at full size while streaming: the checks must not redo it on thumbnails
        from .checks.duplicates import groups_from_keys

        ctx.cache("image_stats", lambda: streamed.stats)
        ctx.cache("exact_groups", lambda: groups_from_keys(streamed.keys))
        if streamed.tmp is None:  # a store under --out: keep the features there for the next audit
            ctx.feature_store = streamed.store
    results: dict[str, CheckResult] = {}
    skipped: dict[str, str] = {}
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    for name in names:
        check = CHECKS.get(name)
        if check.needs_labels and not ds.labeled:
            skipped[name] = "the dataset has no labels"
            continue
        t = time.perf_counter()
        try:
            res = run_checks(ds, [name], {name: params[name]} if name in params else None, ctx=ctx)
        except UserError:
            raise
        except Exception as e:  # one broken check must not lose the others' findings
            log.warning("check %s failed: %s: %s", name, type(e).__name__, e)
            errors[name] = f"{type(e).__name__}: {e}"
            continue
        timings[name] = round(time.perf_counter() - t, 3)
        if name in res:
            results[name] = res[name]
    findings = collect_findings(ds, results)
    prof = make_profile(ds, streamed.channel_stats if streamed is not None else None)
    summary = build_summary(ds, results, findings, skipped=skipped, errors=errors,
                            seconds=time.perf_counter() - t0, timings=timings)
    # the shared neighbour graph(s): how they were searched and, when approximate, their measured recall
    summary["neighbors"] = {space: g.summary() for space, g in ctx.graphs.items()}
    findings.attrs["summary"] = summary
    run = AuditRun(ds=ds, results=results, findings=findings, summary=summary, profile=prof, out=out_dir)
    if out_dir is not None:
        write_artifacts(run, max_thumbs=max_thumbs)
    if streamed is not None:
        from .stream import drop_store

        drop_store(streamed.tmp)
    return run


def _maybe_stream(source: str, kind: str | None, options: dict[str, Any], stream: bool | None, out_dir: Path | None,
                  stream_options: "StreamOptions | None", identity: str = "stat",
                  executor: str = "local", address: str | None = None) -> "Streamed | None":
    """The streamed source when ``source`` is a folder or manifest that should stream, else None."""
    from . import listing as _lst
    from .sources import detect_kind, parse_options
    from .stream import StreamOptions, decide, new_store, stream_source

    if stream is False:
        return None
    kind = kind or detect_kind(source)
    if kind not in ("folder", "csv"):
        if stream:
            raise UserError(f"--stream applies to a folder or a CSV manifest of image files, not a {kind} source")
        return None
    if not os.path.exists(source):
        raise UserError(f"source {source!r} does not exist")
    opts = parse_options(kind, options)
    listing = _lst.list_files(source, kind, opts.split)
    sizes = None
    if out_dir is not None and (out_dir / "store" / "cache").is_dir():  # a re-audit: unchanged files' sizes are known
        from .stream_cache import known_sizes

        paths = listing.paths  # a property that builds the list: once, not once per file
        sizes = known_sizes(out_dir / "store" / "cache", paths, opts.max_pixels)
        todo = np.flatnonzero(sizes[:, 0] < 0)
        sizes[todo] = _lst.header_sizes([paths[i] for i in todo], opts.max_pixels).reshape(-1, 2)
    if sizes is None:
        sizes = _lst.header_sizes(listing.paths, opts.max_pixels)
    if not decide(source, kind, listing, sizes, opts.size, opts.channels, stream):
        return None
    if out_dir is not None:
        refuse_inside_source(out_dir, listing.root, "--out", "the audit never writes into its input, pick a folder outside it")
    so = stream_options or StreamOptions(workers=opts.workers, progress=opts.progress, identity=identity,
                                         executor=executor, address=address)
    store, tmp = new_store(out_dir)
    try:
        st = stream_source(source, kind, listing, store, sizes=sizes, size=opts.size, channels=opts.channels,
                           resample=opts.resample, max_pixels=opts.max_pixels, opts=so)
    except BaseException:
        from .stream import drop_store

        drop_store(tmp)
        raise
    st.tmp = tmp
    return st


def validate_checks(checks: Sequence[str] | None, params: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Check names to run (all registered by default); unknown check or parameter names are a
    one-line `UserError` listing the allowed ones."""
    from .checks import CHECKS
    from .checks.base import check_params

    names = list(CHECKS.names()) if checks is None else list(dict.fromkeys(checks))
    for n in list(names) + list(params or {}):
        CHECKS.get(n)  # UserError: "unknown check 'x'; expected one of: ..."
    for n, over in (params or {}).items():
        check_params(n, over)
    return names


def parse_params(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["near_duplicate.threshold=0.9", ...]`` -> ``{"near_duplicate": {"threshold": 0.9}}``.

    Values are read as JSON when they parse (numbers, true/false, null, lists), else as strings.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items or ():
        key, eq, raw = item.partition("=")
        check, dot, name = key.strip().partition(".")
        if not eq or not dot or not check or not name:
            raise UserError(f"--param {item!r}: expected CHECK.NAME=VALUE, e.g. near_duplicate.threshold=0.9")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(check, {})[name] = value
    return out


def collect_findings(ds: Dataset, results: Mapping[str, "CheckResult"]) -> "pd.DataFrame":
    """One row per flagged item and check (see `audit`), in check order; within a check,
    duplicates by group, everything else worst score first."""
    import pandas as pd

    rows: list[tuple[Any, ...]] = []
    for name, res in results.items():
        if name == "unreadable":
            for u in unreadable_items(ds, res):
                rows.append((u["path"], u["path"], name, 0.0, u.get("reason", ""), None, ""))
            continue
        idx = np.flatnonzero(res.flags)
        scores = np.nan_to_num(np.asarray(res.scores, np.float64), nan=0.0)
        if res.groups is not None:
            grp = np.asarray(res.groups)
            idx = idx[np.lexsort((idx, grp[idx]))]
        else:
            idx = idx[np.lexsort((idx, scores[idx]))]
        for i in idx.tolist():
            g = int(res.groups[i]) if res.groups is not None and res.groups[i] >= 0 else None
            rows.append((ds.ids[i], ds.path_of(i), name, round(float(scores[i]), 6),
                         str(res.details[i]) if res.details is not None else "", g, ds.label_name(ds.labels[i])))
    df = pd.DataFrame(rows, columns=list(FINDING_COLUMNS))
    df["score"] = df["score"].astype("float64")
    df["group"] = df["group"].astype("Int64")
    return df


def headline(ds: Dataset, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flagged checks, most items first: name, n_flagged, percent, what it means, what to do."""
    n = max(len(ds), 1)
    out = []
    for name, s in summary["checks"].items():
        k = int(s["n_flagged"])
        if k <= 0:
            continue
        meaning, action = ADVICE.get(name, (s.get("description") or f"flagged by {name}", "look at the flagged items in the report"))
        out.append({"check": name, "n_flagged": k, "percent": round(100.0 * k / n, 2),
                    "meaning": meaning, "action": action.replace("SOURCE", ds.source or "SOURCE")})
    out.sort(key=lambda r: (-r["n_flagged"], r["check"]))
    return out


def build_summary(ds: Dataset, results: Mapping[str, "CheckResult"], findings: "pd.DataFrame", *,
                  skipped: Mapping[str, str], errors: Mapping[str, str], seconds: float,
                  timings: Mapping[str, float]) -> dict[str, Any]:
    """The JSON-ready dict written to summary.json."""
    from .checks import CHECKS

    checks: dict[str, Any] = {}
    for name, res in results.items():
        s = res.summary
        n_flagged = int(s.get("n_flagged", res.n_flagged))
        if name == "unreadable":
            n_flagged = max(n_flagged, len(unreadable_items(ds, res)))
        checks[name] = {
            "n_flagged": n_flagged,
            "score": _jsonable(s.get("score")),
            "threshold": _jsonable(s.get("threshold")),
            "description": CHECKS.get(name).description,
            "params": _jsonable(res.params),
            "summary": _jsonable(s),
            "seconds": timings.get(name),
        }
    out = {
        "source": ds.source,
        "n_images": len(ds),
        "n_unreadable": len(ds.unreadable),
        "n_classes": ds.n_classes,
        "fingerprint": ds.fingerprint,
        "seconds": round(seconds, 3),
        "n_findings": int(len(findings)),
        "checks": checks,
        "skipped": dict(skipped),
        "errors": dict(errors),
    }
    out["headline"] = headline(ds, out)
    return out


def format_summary(summary: Mapping[str, Any], report: str | os.PathLike | None = None) -> str:
    """The ten-second text summary the CLI prints."""
    lines = [f"audit of {summary['source']}: {summary['n_images']} images, {summary['n_classes']} classes, "
             f"{len(summary['checks'])} checks in {summary['seconds']:.1f} s"]
    head = summary["headline"]
    if head:
        w = max(len(r["check"]) for r in head)
        for r in head:
            lines.append(f"  {r['check']:<{w}}  {r['n_flagged']:>6}  ({r['percent']:.1f}%)  {r['meaning']}")
            lines.append(f"  {'':<{w}}  {'':>6}  -> {r['action']}")
    else:
        lines.append("  no check flagged anything")
    clean = [n for n, s in summary["checks"].items() if int(s["n_flagged"]) == 0]
    if clean:
        lines.append("clean: " + ", ".join(clean))
    for space, g in (summary.get("neighbors") or {}).items():
        if g.get("recall") is not None:  # approximate search: say how far it is from exact (exact runs say nothing)
            lines.append(f"neighbours: {g['k']}-NN graph on {space} features, {g['method']} ({g['library']}), "
                         f"recall@{g['k']} {g['recall']:.4f} against exact search on {g['recall_queries']} sampled items")
    if summary["skipped"]:
        lines.append("skipped: " + ", ".join(f"{k} ({v})" for k, v in summary["skipped"].items()))
    if summary["errors"]:
        lines.append("FAILED: " + ", ".join(f"{k} ({v})" for k, v in summary["errors"].items()))
    if report is not None:
        lines.append(f"report: {report}")
    return "\n".join(lines)


def write_artifacts(run: AuditRun, max_thumbs: int = 24) -> dict[str, Path]:
    """Write findings.csv, profile.json, summary.json and report.html into ``run.out``."""
    from .io import write_json, write_text
    from .report_html import render_report

    assert run.out is not None
    out = run.out
    files = {name: out / name for name in ("findings.csv", "profile.json", "summary.json", "report.html")}
    write_text(files["findings.csv"], run.findings.to_csv(index=False, lineterminator="\n"))
    write_json(files["profile.json"], _jsonable(run.profile))
    write_json(files["summary.json"], run.summary)
    write_text(files["report.html"], render_report(run.ds, run.results, run.findings, run.summary, run.profile,
                                                  max_thumbs=max_thumbs))
    run.files = files
    return files


# ---------------------------------------------------------------------------- helpers
def _jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become None (browsers reject NaN in JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
