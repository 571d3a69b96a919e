"""The neighbour graph kept in a streamed audit's store (issue #20: re-audit incrementally): a patched
graph is the graph a full exact build gives in the same space; a re-audit after adding files patches it
with the space frozen; large sets get a PCA-reduced space."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datacheck import graph_store as gs
from datacheck.hashing import exact_keys
from datacheck.auditing import run_audit
from datacheck.neighbors import build_graph


def test_patched_graph_equals_a_full_exact_build() -> None:
    rng = np.random.default_rng(0)
    old_x = rng.normal(size=(700, 12)).astype(np.float32)
    old = build_graph(old_x, 10, "exact")
    keep = np.ones(700, bool)
    keep[[3, 50, 51, 400]] = False  # removed (their neighbours must be searched again)
    new_rows = rng.normal(size=(30, 12)).astype(np.float32)
    new_rows[0] = old_x[10] + 1e-3  # a new row right next to an old one: it enters that row's list
    x = np.concatenate([old_x[keep][:200], new_rows[:15], old_x[keep][200:], new_rows[15:]])
    old_of_new = np.concatenate([np.flatnonzero(keep)[:200], -np.ones(15, np.int64), np.flatnonzero(keep)[200:],
                                 -np.ones(15, np.int64)])
    patched, counts = gs.patch_graph(x, old, old_of_new)
    full = build_graph(x, 10, "exact")
    np.testing.assert_array_equal(patched.idx, full.idx)
    np.testing.assert_array_equal(patched.dist, full.dist)
    assert counts["n_new"] == 30 and counts["n_removed"] == 4 and counts["n_searched_again"] > 0
    assert patched.idx[9, 0] == 200  # the new near row is old row 10 (now row 9)'s nearest


def test_large_sets_get_a_reduced_space(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gs, "REDUCE_MIN_ITEMS", 500)
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(900, 20)) @ rng.normal(size=(20, 200))).astype(np.float32) * rng.uniform(1, 50, 200).astype(np.float32)
    m = gs.fit_space(x, True, seed=0)
    z = m.apply(x)
    assert m.reduced and z.shape == (900, gs.REDUCE_DIM)
    assert m.variance_kept is not None and m.variance_kept > 0.999  # 20 true dimensions: 128 keep all
    # the projection keeps distances of the standardized space (rank 20 < 128)
    s = (x - x.mean(0, dtype=np.float64)) / (x.std(0, dtype=np.float64) + 1e-6)
    d_full = np.linalg.norm(s[:50, None] - s[None, :50], axis=-1)
    d_red = np.linalg.norm(z[:50, None].astype(np.float64) - z[None, :50], axis=-1)
    np.testing.assert_allclose(d_red, d_full, rtol=1e-3, atol=1e-3)
    small = gs.fit_space(x[:400], True)
    assert not small.reduced
    np.testing.assert_array_equal(small.apply(x[:400]),
                                  ((x[:400] - x[:400].mean(0, dtype=np.float64)) / (x[:400].std(0, dtype=np.float64) + 1e-6)).astype(np.float32))


def _folder(root: Path, n: int, seed: int, start: int = 0) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        cells = int(rng.integers(3, 9))
        a = np.asarray(Image.fromarray((rng.random((cells, cells, 3)) * 255).astype(np.uint8)).resize((40, 40), Image.BICUBIC))
        if i % 37 == 5:  # a few odd ones out: noise
            a = rng.integers(0, 256, a.shape, dtype=np.uint8)
        Image.fromarray(a).save(root / f"{i:04d}.png")


def _outlier_graph(run) -> dict:
    return run.results["outlier"].summary["neighbors"]


def test_reaudit_patches_the_stored_graph_in_a_frozen_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datacheck.features import RandomCNNFeatures

    seen: list[int] = []
    real = RandomCNNFeatures.__call__
    monkeypatch.setattr(RandomCNNFeatures, "__call__", lambda self, images: seen.append(len(images)) or real(self, images))
    root = tmp_path / "imgs"
    _folder(root, 150, seed=0)
    out = tmp_path / "audit"
    first = run_audit(root, checks=["outlier"], out=out, stream=True)
    assert _outlier_graph(first)["update"]["mode"] == "built" and sum(seen) == 150
    store_file = out / "store" / "graphs" / "random-std.npz"
    assert store_file.is_file()
    with np.load(store_file) as z:
        mu_first, sd_first = z["mu"], z["sd"]
    same = run_audit(root, checks=["outlier"], out=out, stream=True)
    assert _outlier_graph(same)["update"]["mode"] == "reused"
    assert same.findings.equals(first.findings)

    _folder(root, 6, seed=5, start=150)  # 4% new files, one removed
    (root / "0007.png").unlink()
    seen.clear()
    again = run_audit(root, checks=["outlier"], out=out, stream=True)
    up = _outlier_graph(again)["update"]
    assert up["mode"] == "patched" and up["n_new"] == 6 and up["n_removed"] == 1
    assert sum(seen) == 6  # features extracted for the new thumbnails only
    # the patched graph is the exact graph of the frozen space: rebuild it from the store and compare
    with np.load(store_file) as z:
        info = json.loads(str(z["info"]))
        smap = gs.SpaceMap(mu=z["mu"], sd=z["sd"])
        idx, dist = z["idx"], z["dist"]
    assert info["meta"]["name"] == "random"
    z = np.load(next((out / "store" / "features").glob("random-*.npy")))
    feats = dict(zip(z["key"].tolist(), z["f"]))
    digests = exact_keys(np.asarray(again.ds.images))
    x = np.stack([feats[d] for d in digests.tolist()])
    full = build_graph(smap.apply(x), idx.shape[1], "exact")
    np.testing.assert_array_equal(idx, full.idx)
    np.testing.assert_allclose(dist, full.dist, rtol=0, atol=1e-9)
    # the frozen space is the first audit's: its statistics did not move, though a fresh fit would
    np.testing.assert_array_equal(smap.mu, mu_first)
    np.testing.assert_array_equal(smap.sd, sd_first)
    assert not np.allclose(x.mean(0, dtype=np.float64), mu_first, rtol=0, atol=1e-9)

    # many changes: the space is fitted again and the graph built from scratch
    _folder(root, 40, seed=6, start=200)
    rebuilt = run_audit(root, checks=["outlier"], out=out, stream=True)
    up = _outlier_graph(rebuilt)["update"]
    assert up["mode"] == "built" and "rows changed" in up["reason"]
    fresh = run_audit(root, checks=["outlier"], out=tmp_path / "fresh", stream=True)
    assert rebuilt.findings.equals(fresh.findings)


def test_a_damaged_or_foreign_stored_graph_is_built_again(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _folder(root, 60, seed=2)
    out = tmp_path / "audit"
    first = run_audit(root, checks=["outlier"], out=out, stream=True)
    (out / "store" / "graphs" / "random-std.npz").write_bytes(b"not an npz")
    again = run_audit(root, checks=["outlier"], out=out, stream=True)
    assert _outlier_graph(again)["update"]["mode"] == "built"
    assert again.findings.equals(first.findings)
    other = run_audit(root, checks=["outlier"], out=out, stream=True, neighbors="approx")  # other settings
    assert _outlier_graph(other)["update"]["mode"] == "built"


def test_an_approximate_graph_is_patched_through_its_stored_index(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _folder(root, 200, seed=3)
    out = tmp_path / "audit"
    first = run_audit(root, checks=["outlier"], out=out, stream=True, neighbors="approx")
    assert _outlier_graph(first)["method"] == "approx"
    assert (out / "store" / "graphs" / "random-std.faiss").is_file()
    _folder(root, 8, seed=7, start=200)
    (root / "0011.png").unlink()
    again = run_audit(root, checks=["outlier"], out=out, stream=True, neighbors="approx")
    g = _outlier_graph(again)
    up = g["update"]
    assert up["mode"] == "patched" and up["n_new"] == 8 and up["n_removed"] == 1 and up["index_rows_removed"] == 1
    assert g["recall"] >= 0.95 and g["n"] == 207  # measured again on the patched graph
    with np.load(out / "store" / "graphs" / "random-std.npz") as z:
        idx, rows, index_rows = z["idx"], z["rows"], z["index_rows"]
    assert len(index_rows) == 208 and len(rows) == 207  # the index only grows; the removed row stays in it
    assert not (idx == np.arange(207)[:, None]).any() and idx.max() < 207
    # the patched lists against exact search in the same space
    z = np.load(next((out / "store" / "features").glob("random-*.npy")))
    feats = dict(zip(z["key"].tolist(), z["f"]))
    with np.load(out / "store" / "graphs" / "random-std.npz") as s:
        smap = gs.SpaceMap(mu=s["mu"], sd=s["sd"])
    x = smap.apply(np.stack([feats[d] for d in exact_keys(np.asarray(again.ds.images)).tolist()]))
    full = build_graph(x, idx.shape[1], "exact")
    recall = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(idx, full.idx)])
    assert recall >= 0.95
    third = run_audit(root, checks=["outlier"], out=out, stream=True, neighbors="approx")  # nothing changed
    assert _outlier_graph(third)["update"]["mode"] == "reused" and third.findings.equals(again.findings)
