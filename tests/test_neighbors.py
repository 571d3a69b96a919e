"""The shared k-NN graph (issue #20 item 3): exact equals scikit-learn, approximate reports its recall, one
graph per run shared by the outlier and label checks."""
from __future__ import annotations

import numpy as np
import pytest

import datacheck
from datacheck.checks import CheckContext, run_checks
from datacheck.errors import UserError
from datacheck.neighbors import build_graph, resolve_method


def test_exact_graph_matches_brute_force_and_excludes_self() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 16)).astype(np.float32)
    x[5] = x[7]  # an exact copy: distance 0, never the row itself
    g = build_graph(x, 8, "exact")
    x64 = x.astype(np.float64)
    d = np.sqrt(((x64[:, None] - x64[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert g.method == "exact" and g.recall is None
    assert not (g.idx == np.arange(600)[:, None]).any()
    assert g.idx[5, 0] == 7 and g.dist[5, 0] == 0
    np.testing.assert_allclose(g.dist, np.sort(d, 1)[:, :8], rtol=1e-6, atol=1e-6)


def test_approximate_graph_measures_its_recall() -> None:
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(2000, 8)) @ rng.normal(size=(8, 32))).astype(np.float32)
    g = build_graph(x, 10, "approx", seed=0)
    assert g.method == "approx" and g.library == "faiss-hnsw"
    assert g.recall is not None and g.recall >= 0.95 and g.n_recall_queries == 500
    assert not (g.idx == np.arange(2000)[:, None]).any()
    assert np.all(np.diff(g.dist, axis=1) >= 0)
    assert resolve_method("auto", 10, threshold=5) == "approx" and resolve_method("auto", 5, threshold=5) == "exact"
    with pytest.raises(UserError, match="--neighbors"):
        resolve_method("fast", 10)


def test_outlier_and_label_checks_share_one_graph() -> None:
    ds = datacheck.load("digits").subset(range(600))
    ctx = CheckContext(ds, neighbors="approx")
    res = run_checks(ds, ["outlier", "label_issue"], params={"label_issue": {"model": "knn"}}, ctx=ctx)
    assert list(ctx.graphs) == ["pixels"]  # tiny images: both use raw pixels, so one graph
    s = res["outlier"].summary["neighbors"]
    assert s["method"] == "approx" and 0.95 <= s["recall"] <= 1
    assert res["label_issue"].summary["neighbors"] == s
    exact = run_checks(ds, ["outlier", "label_issue"], params={"label_issue": {"model": "knn"}},
                       ctx=CheckContext(ds, neighbors="exact"))
    for name in ("outlier", "label_issue"):  # on 600 digits the approximate graph is the exact one
        assert np.array_equal(exact[name].flags, res[name].flags)
