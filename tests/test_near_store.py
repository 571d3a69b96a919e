"""The near-duplicate check of a streamed audit with a store (``datacheck.near_store``): the first run
equals the in-memory engine; a re-audit after a few added, removed and changed files reuses the
operating point and the verified pairs and equals a full run at that threshold; an unchanged re-audit
writes the same findings; a large change recalibrates."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datacheck import Dataset
from datacheck.auditing import run_audit
from datacheck.checks import CheckContext, run_checks
from datacheck.checks.duplicates import GridRows, cached_near_duplicates, near_duplicate_pairs, verifier_grid
from datacheck.near_store import _probe, new_pairs
from datacheck import hashing

SIDE = 32


def _textured(rng: np.random.Generator, n: int, side: int = SIDE) -> np.ndarray:
    """uint8 (n, 3, side, side): smooth random colour fields at random scales plus fine texture."""
    out = np.empty((n, 3, side, side), np.uint8)
    for i in range(n):
        cells = int(rng.integers(3, 9))
        small = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        a = np.asarray(Image.fromarray(small).resize((side, side), Image.BICUBIC), np.int16)
        a = a + rng.integers(-8, 9, (side, side, 1), dtype=np.int16)
        out[i] = np.clip(a, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return out


def _near(img: np.ndarray, rng: np.random.Generator, kind: int) -> np.ndarray:
    """A near copy: noise, brightness/contrast, or a one-pixel shift."""
    if kind == 0:
        return np.clip(np.rint(img + rng.normal(0, 3.0, img.shape)), 0, 255).astype(np.uint8)
    if kind == 1:
        return np.clip(np.rint(img * 1.1 - 12), 0, 255).astype(np.uint8)
    return np.concatenate([img[:, :, :1], img[:, :, :-1]], 2)


def _base(rng: np.random.Generator, n: int = 260) -> dict[str, np.ndarray]:
    """n textured images, 25 near copies, 2 exact copies and 4 near-uniform ones (two close pairs)."""
    imgs = _textured(rng, n)
    items = {f"f{i:04d}": imgs[i] for i in range(n)}
    for k in range(25):
        items[f"f{k:04d}_near"] = _near(imgs[k], rng, k % 3)
    items["f0100_copy"] = imgs[100].copy()
    items["f0101_copy"] = imgs[101].copy()
    for k, v in enumerate((40, 41, 200, 200)):
        items[f"u{k}"] = np.full((3, SIDE, SIDE), v, np.uint8)
    return items


def _grow(items: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Some new files near copies of old ones (one of an old near group, one shifted), one exact copy
    that sorts before its original (it becomes the representative), one removed, one changed."""
    out = dict(items)
    del out["f0003"]
    out["f0010"] = _near(items["f0110"], rng, 0)  # changed: now a near copy of another old item
    out["f0001_again"] = _near(items["f0001"], rng, 1)  # joins an old near group
    out["f0150_new"] = _near(items["f0150"], rng, 2)
    out["f0151_new"] = _near(items["f0151"], rng, 0)
    out["a0120_copy"] = items["f0120"].copy()
    fresh = _textured(rng, 6)
    for k in range(6):
        out[f"g{k}"] = fresh[k]
    out["g0_near"] = _near(fresh[0], rng, 0)  # new vs new
    return out


def _ds(items: dict[str, np.ndarray]) -> Dataset:
    ids = sorted(items)
    return Dataset(images=np.stack([items[i] for i in ids]), labels=np.full(len(ids), -1), ids=tuple(ids))


def _stored(ds: Dataset, store: Path, **params):
    ctx = CheckContext(ds)
    ctx.feature_store = store
    return cached_near_duplicates(ds, ctx, params)


def _same(nd, full) -> None:
    np.testing.assert_array_equal(nd.pairs, full.pairs)
    np.testing.assert_array_equal(nd.scores, full.scores)
    for f in ("rep", "near_group", "group", "reason", "uniform"):
        np.testing.assert_array_equal(getattr(nd, f), getattr(full, f))


def test_grid_rows_and_cross_search_equal_the_full_ones() -> None:
    rng = np.random.default_rng(0)
    im = rng.integers(0, 256, (300, 3, 40, 48), dtype=np.uint8)
    idx = rng.integers(0, 300, 500)
    np.testing.assert_array_equal(GridRows(im, 32)[idx], verifier_grid(im, 32)[idx])
    h = rng.integers(0, 2**63, 3000, dtype=np.uint64)
    h[1000:1200] = h[:200] ^ (np.uint64(1) << rng.integers(0, 64, 200).astype(np.uint64))  # close pairs
    hq = np.stack([h ^ rng.integers(0, 2**63, 3000, dtype=np.uint64) * (rng.random(3000) < 0.5) for _ in range(4)])
    hq[:, 1500:1600] = h[1600:1700] ^ np.uint64(3)
    s, d = _probe(h[:50], h, 11, 4)
    bf = np.argwhere(np.bitwise_count(h[:50, None] ^ h[None]) <= 11)
    np.testing.assert_array_equal(np.stack([s, d], 1), bf)
    full = hashing.hamming_pairs(h, 11, queries=hq, query_radius=7)
    new = np.sort(rng.choice(3000, 300, replace=False))
    new = np.union1d(new, [5, 1005, 1550, 1650])
    is_new = np.isin(full, new).any(1)
    np.testing.assert_array_equal(new_pairs(h, hq, new, 11, 7, 4), full[is_new])


def test_store_reuses_the_operating_point_and_pairs_and_equals_a_full_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    items = _base(rng)
    ds1 = _ds(items)
    first = _stored(ds1, tmp_path)
    _same(first, near_duplicate_pairs(ds1))  # the first run is the in-memory engine's
    assert first.operating_point["threshold"] == near_duplicate_pairs(ds1).operating_point["threshold"]
    assert (tmp_path / "near" / f"items-3x{SIDE}x{SIDE}.npz").is_file()

    ds2 = _ds(_grow(items, rng))
    again = _stored(ds2, tmp_path)
    op = again.operating_point
    assert "reused" in op["note"] and op["threshold"] == first.operating_point["threshold"]
    inc = op["incremental"]
    assert 0 < inc["n_new_items"] <= 12 and inc["n_reused_pairs"] > 20
    full = near_duplicate_pairs(ds2, threshold=op["threshold"])
    _same(again, full)
    ids = np.array(ds2.ids)
    grp = again.near_group
    for a, b in (("f0001", "f0001_again"), ("f0150", "f0150_new"), ("g0", "g0_near"), ("f0010", "f0110")):
        ia, ib = np.flatnonzero(ids == a)[0], np.flatnonzero(ids == b)[0]
        assert grp[ia] >= 0 and grp[ia] == grp[ib], (a, b)

    # once more, unchanged: nothing searched, same result
    same = _stored(ds2, tmp_path)
    assert same.operating_point["incremental"]["n_new_items"] == 0
    _same(same, full)


def test_a_large_change_recalibrates_as_a_full_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    items = _base(rng, 120)
    _stored(_ds(items), tmp_path)
    fresh = _textured(rng, 40)
    items.update({f"h{k:02d}": fresh[k] for k in range(40)})
    ds = _ds(items)
    nd = _stored(ds, tmp_path)
    assert "incremental" not in nd.operating_point
    full = near_duplicate_pairs(ds)
    _same(nd, full)
    assert nd.operating_point == full.operating_point
    assert "incremental" in _stored(ds, tmp_path).operating_point
    # another seed (another calibration sample) or other parameters: not reused
    ctx = CheckContext(ds, seed=1)
    ctx.feature_store = tmp_path
    assert "incremental" not in cached_near_duplicates(ds, ctx, {}).operating_point
    strict = _stored(ds, tmp_path, threshold=0.999)
    assert "incremental" not in strict.operating_point


def _write(folder: Path, items: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.glob("*.png"):
        if p.stem not in items:
            p.unlink()
    for name, a in items.items():
        p = folder / f"{name}.png"
        if p.exists() and np.array_equal(np.asarray(Image.open(p)).transpose(2, 0, 1), a):
            continue
        Image.fromarray(a.transpose(1, 2, 0)).save(p)


@pytest.mark.parametrize("checks", [["exact_duplicate", "near_duplicate"]])
def test_streamed_reaudit_is_incremental_and_equals_the_full_check(tmp_path: Path, checks: list[str]) -> None:
    rng = np.random.default_rng(3)
    items = _base(rng, 160)
    src, out = tmp_path / "imgs", tmp_path / "out"
    _write(src, items)
    kw = {"checks": checks, "stream": True, "load_options": {"workers": 1}}
    run_audit(src, out=out, **kw)
    first_csv = (out / "findings.csv").read_text()
    again = run_audit(src, out=out, **kw)
    assert (out / "findings.csv").read_text() == first_csv  # an unchanged re-audit: the same findings
    assert "reused" in again.summary["checks"]["near_duplicate"]["summary"]["operating_point"]["note"]

    _write(src, _grow(items, rng))
    grown = run_audit(src, out=out, **kw)
    r = grown.results["near_duplicate"]
    op = r.summary["operating_point"]
    assert "reused" in op["note"] and op["incremental"]["n_new_items"] <= 12
    full = run_checks(grown.ds, ["near_duplicate"], {"near_duplicate": {"threshold": op["threshold"]}})["near_duplicate"]
    np.testing.assert_array_equal(r.groups, full.groups)
    np.testing.assert_array_equal(r.scores, full.scores)
    assert list(r.details) == list(full.details)
    s = json.loads((out / "summary.json").read_text())
    assert s["checks"]["near_duplicate"]["summary"]["operating_point"]["incremental"]["n_new_items"] == op["incremental"]["n_new_items"]


def test_a_damaged_store_is_a_full_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ds = _ds(_base(rng, 110))
    _stored(ds, tmp_path)
    for f in (tmp_path / "near").glob("*.npz"):
        f.write_bytes(b"not an npz")
    nd = _stored(ds, tmp_path)
    assert "incremental" not in nd.operating_point
    _same(nd, near_duplicate_pairs(ds))
    assert "incremental" in _stored(ds, tmp_path).operating_point  # rewritten whole
