"""``datacheck.audit`` (module ``datacheck.auditing``) and the ``datacheck audit`` / ``dedupe`` commands: findings, artifacts, exit
codes, one-line errors, and an input folder left exactly as it was.

Two small checks are registered for the duration of a test only (never in library code), so the
orchestration is tested on known plants independently of the real checks' tuning; the real checks
are exercised end to end on digits as well.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import datacheck
from datacheck.auditing import audit, parse_params, run_audit
from datacheck.checks import CHECKS, Check, CheckResult
from datacheck.cli import main
from datacheck.errors import UserError
from datacheck.profile import profile

HOSTILE = "<img src=x onerror=alert(1)>.png"


def _t_dark(ds, ctx, threshold):
    mean = ds.images.reshape(len(ds), -1).mean(axis=1) / 255.0
    scores = np.clip(mean / 0.3, 0.0, 1.0)
    flags = mean < threshold
    return CheckResult("t_dark", scores, flags, {"score": float(scores.mean()), "threshold": threshold},
                       {"threshold": threshold}, details=[f"mean {m:.3f}" for m in mean])


def _t_dup(ds, ctx, min_size):
    digests = [hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in ds.images]
    first: dict[str, int] = {}
    members: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        first.setdefault(d, len(first))
        members.setdefault(d, []).append(i)
    groups = np.full(len(ds), -1, np.int64)
    flags = np.zeros(len(ds), bool)
    for d, idx in members.items():
        if len(idx) >= min_size:
            groups[idx] = first[d]
            flags[idx[1:]] = True  # the first copy is the one to keep
    scores = np.where(flags, 0.0, 1.0)
    summary = {"score": 1.0 - flags.mean() if len(ds) else 1.0, "threshold": 1.0,
               "operating_point": {"threshold": 1.0, "precision": 1.0, "recall": 1.0}}
    return CheckResult("t_dup", scores, flags, summary, {"min_size": min_size}, groups=groups)


def _t_unreadable(ds, ctx):
    flags = np.zeros(len(ds), bool)
    return CheckResult("unreadable", np.ones(len(ds)), flags,
                       {"n_flagged": len(ds.unreadable), "score": 1.0, "threshold": None, "items": list(ds.unreadable)})


@pytest.fixture
def test_checks(monkeypatch):
    """Register t_dark and t_dup (and ``unreadable`` if the real one is not there) for one test."""
    monkeypatch.setitem(CHECKS._items, "t_dark", Check("t_dark", _t_dark, {"threshold": 0.05}, "test: dark images"))
    monkeypatch.setitem(CHECKS._items, "t_dup", Check("t_dup", _t_dup, {"min_size": 2}, "test: identical images"))
    if "unreadable" not in CHECKS:
        monkeypatch.setitem(CHECKS._items, "unreadable", Check("unreadable", _t_unreadable, {}, "test: unreadable"))


def planted_digits(n: int = 400):
    """digits[:n] with 8 darkened items and 5 exact copies appended; returns (ds, dark ids, copy ids)."""
    ds = datacheck.load("digits").subset(np.arange(n))
    imgs = ds.images.copy()
    dark = np.arange(10, 90, 10)
    imgs[dark] = imgs[dark] // 40
    src = np.array([3, 5, 7, 9, 11])
    imgs = np.concatenate([imgs, imgs[src]])
    ids = list(ds.ids) + [f"copy:{i}" for i in src]
    out = datacheck.Dataset(images=imgs, labels=np.concatenate([ds.labels, ds.labels[src]]), ids=ids,
                            class_names=ds.class_names, source="planted")
    return out, [ds.ids[i] for i in dark], ids[n:], [ds.ids[i] for i in src]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under ``folder``: content hash and mtime (ns)."""
    snap = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        snap[str(p.relative_to(folder))] = (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir", st.st_mtime_ns)
    return snap


@pytest.fixture
def odd_folder(tmp_path) -> Path:
    """cats/ and dogs/ of small PNGs, one file named like an HTML tag, one broken file, one dark image."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(40, 255, (12, 12, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    Image.fromarray(rng.integers(40, 255, (12, 12, 3), dtype=np.uint8)).save(root / "cats" / HOSTILE)
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "dogs" / "night.png")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return root


# ------------------------------------------------------------------------------ API
def test_audit_finds_the_plants_and_writes_every_artifact(tmp_path, test_checks) -> None:
    ds, dark_ids, copy_ids, src_ids = planted_digits()
    out = tmp_path / "audit"
    df = audit(ds, checks=["t_dark", "t_dup"], out=out)
    assert list(df.columns)[:6] == ["id", "path", "check", "score", "detail", "group"]
    dark = df[df["check"] == "t_dark"]
    assert sorted(dark["id"]) == sorted(dark_ids)
    assert (dark["path"] == dark["id"]).all() and dark["group"].isna().all()
    assert dark["score"].is_monotonic_increasing and dark["detail"].str.startswith("mean ").all()
    dup = df[df["check"] == "t_dup"]
    assert sorted(dup["id"]) == sorted(copy_ids)
    assert dup["group"].notna().all() and dup["group"].nunique() == 5

    assert sorted(p.name for p in out.iterdir()) == ["findings.csv", "profile.json", "report.html", "summary.json"]
    back = pd.read_csv(out / "findings.csv", dtype=str, keep_default_na=False)
    assert len(back) == len(df) and list(back.columns) == list(df.columns)
    assert set(back.loc[back["check"] == "t_dark", "group"]) == {""}
    assert back.loc[back["check"] == "t_dup", "group"].str.fullmatch(r"\d+").all()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["checks"]["t_dark"]["n_flagged"] == 8 and summary["checks"]["t_dark"]["threshold"] == 0.05
    assert summary["checks"]["t_dup"]["summary"]["operating_point"]["precision"] == 1.0
    assert summary["n_images"] == len(ds) and summary["errors"] == {}
    assert [h["check"] for h in summary["headline"]] == ["t_dark", "t_dup"]
    assert json.loads((out / "profile.json").read_text()) == json.loads(json.dumps(profile(ds)))
    html = (out / "report.html").read_text()
    assert "t_dark" in html and dark_ids[0] in html and "Operating point" in html
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_params_override_and_unknown_names_are_user_errors(test_checks) -> None:
    ds, *_ = planted_digits(200)
    assert len(audit(ds, checks=["t_dark"], params={"t_dark": {"threshold": 0.0}})) == 0
    assert len(audit(ds, checks=["t_dark"], params={"t_dark": {"threshold": 0.5}})) > 8
    with pytest.raises(UserError, match="expected one of:.*t_dark"):
        audit(ds, checks=["no_such_check"])
    with pytest.raises(UserError, match="no parameter"):
        audit(ds, checks=["t_dark"], params={"t_dark": {"treshold": 0.1}})


def test_parse_params() -> None:
    assert parse_params(["a.x=0.5", "a.y=true", "b.z=abc", "b.w=[1, 2]"]) == {
        "a": {"x": 0.5, "y": True}, "b": {"z": "abc", "w": [1, 2]}}
    for bad in ("a=1", "a.x", ".x=1"):
        with pytest.raises(UserError):
            parse_params([bad])


def test_a_crashing_check_does_not_lose_the_others(monkeypatch, test_checks) -> None:
    def boom(ds, ctx):
        raise RuntimeError("kaput")

    monkeypatch.setitem(CHECKS._items, "t_boom", Check("t_boom", boom, {}, "test: crashes"))
    ds, dark_ids, *_ = planted_digits(200)
    run = run_audit(ds, checks=["t_boom", "t_dark"])
    assert "kaput" in run.summary["errors"]["t_boom"]
    assert sorted(run.findings["id"]) == sorted(dark_ids) and list(run.results) == ["t_dark"]


# ------------------------------------------------------------------------------ CLI
def test_cli_audit_exit_codes_and_summary(tmp_path, capsys, test_checks) -> None:
    ds, *_ = planted_digits()
    npz = tmp_path / "planted.npz"
    ds.save(npz)
    out = tmp_path / "a"
    assert main(["audit", str(npz), "--out", str(out), "--checks", "t_dark,t_dup"]) == 0
    text = capsys.readouterr().out
    assert "t_dark" in text and "8" in text and f"report: {out / 'report.html'}" in text
    assert (out / "report.html").exists()
    assert main(["audit", str(npz), "--out", str(out), "--checks", "t_dark,t_dup", "--fail-on", "t_dark"]) == 1
    assert main(["audit", str(npz), "--out", str(out), "--checks", "t_dark", "--fail-on", "t_dark",
                 "--param", "t_dark.threshold=0"]) == 0
    clean = tmp_path / "clean.npz"
    datacheck.load("digits").subset(np.arange(300)).save(clean)
    assert main(["audit", str(clean), "--out", str(tmp_path / "c"), "--checks", "t_dup", "--fail-on", "t_dup"]) == 0


@pytest.mark.parametrize("args,needle", [
    (["--checks", "t_dark,nope"], "expected one of"),
    (["--fail-on", "nope"], "expected one of"),
    (["--checks", "t_dark", "--fail-on", "t_dup"], "not run"),
    (["--param", "t_dark=1"], "CHECK.NAME=VALUE"),
    (["--param", "t_dark.nope=1"], "no parameter"),
    (["--param", "nope.x=1"], "expected one of"),
])
def test_cli_audit_bad_args_one_line_exit_2(tmp_path, capsys, test_checks, args, needle) -> None:
    out = tmp_path / "a"
    assert main(["audit", "digits", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not out.exists()


def test_cli_audit_odd_folder_lists_every_problem_and_changes_nothing(tmp_path, capsys, odd_folder, test_checks) -> None:
    before = snapshot(odd_folder)
    out = tmp_path / "audit"
    assert main(["audit", str(odd_folder), "--out", str(out), "--checks", "unreadable,t_dark,t_dup"]) == 0
    assert snapshot(odd_folder) == before
    df = pd.read_csv(out / "findings.csv", dtype=str, keep_default_na=False)
    unread = df[df["check"] == "unreadable"]
    assert list(unread["path"]) == ["dogs/broken.png"] and unread["detail"].iloc[0]
    assert list(df.loc[df["check"] == "t_dark", "path"]) == ["dogs/night.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checks"]["unreadable"]["n_flagged"] == 1
    html = (out / "report.html").read_text()
    assert "dogs/broken.png" in html and HOSTILE not in html  # escaped, never raw markup
    # every registered check on the odd folder: completes, lists the broken file, changes nothing
    assert main(["audit", str(odd_folder), "--out", str(tmp_path / "all")]) == 0
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["errors"] == {} and set(summary["checks"]) | set(summary["skipped"]) == set(CHECKS.names())
    assert summary["checks"]["unreadable"]["n_flagged"] == 1
    assert snapshot(odd_folder) == before
    # writing into the source folder is refused, and nothing appears there
    assert main(["audit", str(odd_folder), "--out", str(odd_folder / "audit"), "--checks", "t_dark"]) == 2
    assert "inside the source folder" in capsys.readouterr().err
    assert snapshot(odd_folder) == before


def test_report_for_10k_images_stays_under_5mb(tmp_path, test_checks) -> None:
    # 10,000 color 24x24 mosaics of 3x3 digits (distinct), 600 darkened, 400 exact copies
    digits = datacheck.load("digits")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(digits), size=(10_000, 9))
    tiles = digits.images[:, 0][idx].reshape(10_000, 3, 3, 8, 8).transpose(0, 1, 3, 2, 4).reshape(10_000, 24, 24)
    imgs = np.stack([tiles, np.roll(tiles, 5, axis=0), 255 - tiles], axis=1).astype(np.uint8)
    imgs ^= rng.integers(0, 24, imgs.shape, dtype=np.uint8)  # grain: thumbnails that barely compress
    imgs[9_000:9_600] //= 40
    imgs[5_000:5_400] = imgs[:400]
    ds = datacheck.Dataset(images=imgs, labels=digits.labels[idx[:, 0]], ids=[f"tiles/{i:05d}.png" for i in range(10_000)],
                           class_names=digits.class_names, source="tiles")
    run = run_audit(ds, checks=["t_dark", "t_dup", "dark", "low_information", "exact_duplicate", "grayscale"],
                    out=tmp_path / "big")
    size = os.path.getsize(run.files["report.html"])
    assert run.summary["checks"]["t_dark"]["n_flagged"] == 600 and run.summary["checks"]["t_dup"]["n_flagged"] == 400
    assert size < 5_000_000, size
    html = run.files["report.html"].read_text()
    assert html.count("<figure>") <= 4 * 24 + 2 * 12 * 8  # thumbnails are capped per section
    print(f"report for 10,000 images: {size / 1e6:.2f} MB")


def test_thumbnails_shrink_to_fit_the_byte_budget() -> None:
    from datacheck.report_html import THUMB_BUDGET, _encode_thumbs

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (600, 3, 96, 96), dtype=np.uint8)  # incompressible
    ds = datacheck.Dataset(images=noise, labels=np.full(600, -1), ids=[f"n{i}" for i in range(600)])
    thumbs = _encode_thumbs(ds, list(range(600)))
    total = sum(len(t["src"]) for t in thumbs.values())
    assert len(thumbs) == 600 and total <= THUMB_BUDGET
    assert not any(t["pixelated"] for t in thumbs.values())  # downscaled, not enlarged
    tiny = datacheck.load("digits").subset(np.arange(5))
    assert all(t["pixelated"] for t in _encode_thumbs(tiny, list(range(5))).values())  # 8x8: kept, enlarged by CSS


def test_package_exports_the_three_functions() -> None:
    import importlib

    from datacheck.deduplication import find_duplicate_groups  # importing the modules shadows nothing
    import datacheck.splitting  # noqa: F401

    assert callable(find_duplicate_groups)
    for mod, fn in (("auditing", "audit"), ("splitting", "split"), ("deduplication", "dedupe"), ("copies", "find_copies")):
        module = importlib.import_module(f"datacheck.{mod}")
        assert type(module).__name__ == "module" and getattr(datacheck, mod) is module
        assert callable(getattr(datacheck, fn)) and not isinstance(getattr(datacheck, fn), type(module))
    assert type(datacheck).__name__ == "module"  # the plain module class: no __setattr__ trick
    for name in ("audit", "dedupe", "split"):
        assert callable(getattr(datacheck, name)) and name in datacheck.__all__
    ds = datacheck.load("digits").subset(np.arange(300))
    assert list(datacheck.dedupe(ds).columns) == ["id", "path", "cluster", "keep", "reason"]
    assert list(datacheck.split(ds, groups=False).columns) == ["id", "path", "label", "split"]


# ------------------------------------------------------------------------------ real checks
def test_real_audit_of_digits_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "digits"
    assert main(["audit", "digits", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["checks"]) == set(CHECKS.names()) - set(summary["skipped"])
    assert summary["errors"] == {}
    for s in summary["checks"].values():
        assert {"n_flagged", "score", "threshold", "summary"} <= set(s)
    df = pd.read_csv(out / "findings.csv", dtype=str, keep_default_na=False)
    assert df["path"].str.startswith("digits:").all()
    assert len(df) == sum(s["n_flagged"] for n, s in summary["checks"].items() if n != "unreadable")
    assert "report:" in text


def test_cli_dedupe_copies_kept_files_only(tmp_path, capsys) -> None:
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "a" / f"{i}.png")
    (root / "a" / "copy_of_3.png").write_bytes((root / "a" / "3.png").read_bytes())
    before = snapshot(root)
    csv, dest = tmp_path / "dedupe.csv", tmp_path / "kept"
    assert main(["dedupe", str(root), "--out", str(csv), "--copy-to", str(dest)]) == 0
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    assert list(df.columns)[:5] == ["id", "path", "cluster", "keep", "reason"] and len(df) == 9
    kept = sorted(df.loc[df["keep"].str.lower() == "true", "path"])
    assert len(kept) == 8
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == kept
    for rel in kept:
        assert (dest / rel).read_bytes() == (root / rel).read_bytes()
    assert snapshot(root) == before
    # into the source folder, or from a source without files: refused, one line, nothing written
    assert main(["dedupe", str(root), "--out", str(tmp_path / "d2.csv"), "--copy-to", str(root / "kept")]) == 2
    assert main(["dedupe", "digits", "--out", str(tmp_path / "d3.csv"), "--copy-to", str(tmp_path / "k3")]) == 2
    # neither CSV may be written into the source folder either
    assert main(["dedupe", str(root), "--out", str(root / "d.csv")]) == 2
    assert main(["split", str(root), "--out", str(root / "a" / "s.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all("error" in e for e in err)
    assert snapshot(root) == before and not (tmp_path / "d2.csv").exists()
