"""reports.metrics against reference implementations (scipy sqrtm FID, the prdc package, torchmetrics KID)
and against invariants (FID(x, x) = 0, coverage of one distribution ~ 1 - 2^-k, copies are memorized)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist

from datacheck.errors import UserError
from reports import metrics as M


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _sqrtm_fid(r: np.ndarray, f: np.ndarray) -> float:
    """The classic pytorch-fid formula with scipy.linalg.sqrtm, all float64."""
    r, f = r.astype(np.float64), f.astype(np.float64)
    mu1, mu2 = r.mean(0), f.mean(0)
    s1, s2 = np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean[0] if isinstance(covmean, tuple) else covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ------------------------------------------------------------------------------------------------ FID
@pytest.mark.parametrize("n_real,n_fake,d", [(800, 700, 32), (60, 50, 96), (40, 500, 64)])
def test_fid_matches_float64_sqrtm_reference(n_real: int, n_fake: int, d: int) -> None:
    # (800, 700, 32): covariance route; the others have N < D: Gram-matrix route
    rng = _rng(1)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    r = rng.normal(size=(n_real, d)) @ mix
    f = (rng.normal(size=(n_fake, d)) * 1.2 + 0.3) @ mix
    ours = M.frechet_distance(real=r.astype(np.float32), fake=f.astype(np.float32))
    ref = _sqrtm_fid(r.astype(np.float32), f.astype(np.float32))
    assert ours == pytest.approx(ref, rel=1e-6)


def test_fid_from_stats_and_trace_term_agree_with_sqrtm() -> None:
    rng = _rng(2)
    a, b = rng.normal(size=(300, 20)), rng.normal(size=(300, 20)) * 0.7
    mu1, s1 = M.feature_stats(a)
    mu2, s2 = M.feature_stats(b)
    ref_tr = float(np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2))))
    assert M.trace_sqrt_product(s1, s2) == pytest.approx(ref_tr, rel=1e-9)
    assert M.fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(M.frechet_distance(real=a, fake=b), rel=1e-9)


def test_trace_term_of_singular_covariances_uses_the_eigh_route() -> None:
    # 15 samples in 30 dimensions: both covariances are singular, so no Cholesky factor exists
    rng = _rng(9)
    a, b = rng.normal(size=(15, 30)), rng.normal(size=(15, 30)) + 0.2
    _, s1 = M.feature_stats(a)
    _, s2 = M.feature_stats(b)
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(s1)
    ours = M.trace_sqrt_product(s1, s2)
    assert ours == pytest.approx(M._trace_sqrt_gram(a, b), rel=1e-6)  # sqrt of clipped round-off eigenvalues
    assert ours == pytest.approx(float(np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2)))), rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_accepts_torch() -> None:
    torch = pytest.importorskip("torch")
    x = _rng(3).normal(size=(500, 40)).astype(np.float32) * 5 + 2
    assert abs(M.frechet_distance(real=x, fake=x)) < 1e-8
    small = x[:20]  # Gram route
    assert abs(M.frechet_distance(real=small, fake=small)) < 1e-8
    t = torch.from_numpy(x)
    y = x[::-1] + 0.5
    assert M.frechet_distance(real=t, fake=torch.from_numpy(y.copy())) == pytest.approx(
        M.frechet_distance(real=x, fake=y), rel=1e-12)


def test_fid_grows_with_mean_shift_and_rejects_bad_input() -> None:
    rng = _rng(4)
    r = rng.normal(size=(400, 8))
    fids = [M.frechet_distance(real=r, fake=rng.normal(size=(400, 8)) + s) for s in (0.0, 0.5, 1.0)]
    assert fids[0] < fids[1] < fids[2]
    assert fids[2] == pytest.approx(8.0, rel=0.15)  # |mu diff|^2 = 8
    with pytest.raises(UserError, match="same dimension"):
        M.frechet_distance(real=r, fake=r[:, :4])
    with pytest.raises(UserError, match="NaN"):
        M.frechet_distance(real=r, fake=np.full((10, 8), np.nan))


def test_fid_infinity_removes_the_sample_size_bias() -> None:
    rng = _rng(5)
    # true FID = |shift|^2 = 24 * 0.3^2; finite-sample FID is biased up by about c / N_fake + c / N_real and
    # FID-inf removes the first term (the real set is large so the second stays small)
    true = 24 * 0.09
    r = rng.normal(size=(10000, 24))
    f = rng.normal(size=(2000, 24)) + 0.3
    res = M.fid_infinity(real=r, fake=f, seed=0)
    assert res["fids"][0] > res["fids"][-1] > true  # FID falls towards the truth as N grows
    assert res["slope"] > 0
    assert abs(res["fid_infinity"] - true) < 0.5 * (res["fids"][-1] - true)


# ------------------------------------------------------------------------------------------------ KID
def test_kid_equals_torchmetrics_on_identical_subsets() -> None:
    torch = pytest.importorskip("torch")
    from torchmetrics.image.kid import KernelInceptionDistance

    class Identity(torch.nn.Module):  # the "feature extractor": features pass through unchanged
        def forward(self, x):  # noqa: D401
            return x

    rng = _rng(6)
    r = (rng.normal(size=(200, 16)) * 3 + 1).astype(np.float32)
    f = (rng.normal(size=(200, 16)) * 3.3 + 1.2).astype(np.float32)
    # subset_size = N: every subset is the whole set in some order, so both see identical subsets
    tm = KernelInceptionDistance(feature=Identity(), subsets=3, subset_size=200, normalize=False)
    tm.update(torch.from_numpy(r).double(), real=True)
    tm.update(torch.from_numpy(f).double(), real=False)
    ref_mean, _ = tm.compute()
    mean, std = M.kid(real=r, fake=f, subsets=3, subset_size=200)
    assert mean == pytest.approx(float(ref_mean), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_kid_subsets_match_torchmetrics_statistically_and_a_direct_formula() -> None:
    torch = pytest.importorskip("torch")
    from torchmetrics.image.kid import KernelInceptionDistance

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    rng = _rng(7)
    r = rng.normal(size=(600, 8)).astype(np.float32)
    f = (rng.normal(size=(500, 8)) + 0.4).astype(np.float32)
    mean, std = M.kid(real=r, fake=f, subsets=50, subset_size=200, seed=3)
    torch.manual_seed(0)
    tm = KernelInceptionDistance(feature=Identity(), subsets=50, subset_size=200, normalize=False)
    tm.update(torch.from_numpy(r).double(), real=True)
    tm.update(torch.from_numpy(f).double(), real=False)
    ref_mean, ref_std = (float(v) for v in tm.compute())
    assert mean == pytest.approx(ref_mean, abs=4 * ref_std / np.sqrt(50) + 1e-3)
    # the same subsets recomputed directly (the loop path, one subset at a time)
    g = np.random.default_rng(3)
    vals = []
    for _ in range(50):
        x, y = r[g.choice(600, 200, replace=False)].astype(np.float64), f[g.choice(500, 200, replace=False)].astype(np.float64)
        kxx, kyy, kxy = ((x @ x.T) / 8 + 1) ** 3, ((y @ y.T) / 8 + 1) ** 3, ((x @ y.T) / 8 + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (200 * 199) - 2 * kxy.sum() / 200**2)
    assert mean == pytest.approx(np.mean(vals), rel=1e-9)
    assert std == pytest.approx(np.std(vals), rel=1e-6)
    assert M.kid(real=r, fake=f, subsets=50, subset_size=200, seed=3) == (mean, std)  # seeded


def test_kid_near_zero_for_one_distribution_and_capped_subset_size() -> None:
    rng = _rng(8)
    a, b = rng.normal(size=(300, 6)), rng.normal(size=(250, 6))
    mean, std = M.kid(real=a, fake=b, subsets=20, subset_size=1000)  # capped to 250
    assert abs(mean) < 0.05
    far, _ = M.kid(real=a, fake=b + 1.0, subsets=20)
    assert far > 10 * max(abs(mean), 1e-3)


# ------------------------------------------------------------------------------------------------ PRDC
@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_prdc_equals_prdc_package(k: int) -> None:
    from prdc import compute_prdc

    rng = _rng(10 + k)
    r = rng.normal(size=(700, 32)).astype(np.float32)
    f = (rng.normal(size=(600, 32)) * 1.1 + 0.15).astype(np.float32)
    ref = compute_prdc(real_features=r, fake_features=f, nearest_k=k)
    # a tiny memory budget forces many blocks; both boundary rules agree on continuous data
    for budget in (64 * 1024, M.DEFAULT_MAX_MEMORY):
        for boundary in ("closed", "open"):
            ours = M.prdc(real=r, fake=f, k=k, max_memory=budget, boundary=boundary)
            assert ours == {key: float(v) for key, v in ref.items()}


def test_prdc_equals_prdc_package_on_relu_features() -> None:
    from prdc import compute_prdc

    rng = _rng(20)
    # non-negative, non-centred features like a CNN's: the case where float32 cancellation bites
    r = np.maximum(rng.normal(size=(500, 256)) + 0.5, 0).astype(np.float32) * 10
    f = np.maximum(rng.normal(size=(450, 256)) * 1.05 + 0.5, 0).astype(np.float32) * 10
    ref = compute_prdc(real_features=r, fake_features=f, nearest_k=5)
    assert M.prdc(real=r, fake=f, k=5, max_memory=256 * 1024) == {key: float(v) for key, v in ref.items()}


def test_knn_radii_and_nearest_distances_equal_brute_force() -> None:
    rng = _rng(21)
    x = rng.normal(size=(300, 12))
    y = rng.normal(size=(200, 12))
    d = cdist(x, x)
    for k in (1, 4):
        np.testing.assert_allclose(M.knn_radii(x, k=k, max_memory=16 * 1024), np.sort(d, 1)[:, k], rtol=1e-12)
    np.testing.assert_allclose(M.nearest_distances(y, x, max_memory=16 * 1024), cdist(y, x).min(1), rtol=1e-12)


def test_prdc_boundary_rule_with_exact_duplicates() -> None:
    """Each real point appears 3 times, so with k = 2 every radius is exactly 0. Fakes that copy real
    points sit at distance exactly 0: inside closed balls (our default), outside open ones (prdc's <).
    The prdc package's float32 distances for duplicates are round-off noise, so what it reports for
    them is arbitrary; here it is recorded, not matched."""
    from prdc import compute_prdc

    rng = _rng(22)
    base = rng.normal(size=(100, 16)).astype(np.float32)
    real = np.repeat(base, 3, axis=0)
    fake = base[:50].copy()
    np.testing.assert_array_equal(M.knn_radii(real, k=2), 0.0)
    closed = M.prdc(real=real, fake=fake, k=2)
    open_ = M.prdc(real=real, fake=fake, k=2, boundary="open")
    assert closed["precision"] == 1.0 and closed["density"] == 1.5  # 3 zero-radius balls per copy / k
    assert closed["coverage"] == 0.5  # the 150 reals whose point was copied
    assert open_["precision"] == 0.0 and open_["density"] == 0.0 and open_["coverage"] == 0.0
    ref = compute_prdc(real_features=real, fake_features=fake, nearest_k=2)
    assert float(ref["precision"]) <= closed["precision"]


def _prdc_brute(r: np.ndarray, f: np.ndarray, k: int, closed: bool) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """PRDC from full float64 squared-distance matrices; also returns the two 'inside' masks."""
    r64, f64 = r.astype(np.float64), f.astype(np.float64)
    rad_r = np.sort(cdist(r64, r64, "sqeuclidean"), 1)[:, k]
    rad_f = np.sort(cdist(f64, f64, "sqeuclidean"), 1)[:, k]
    d = cdist(r64, f64, "sqeuclidean")
    op = np.less_equal if closed else np.less
    in_r, in_f = op(d, rad_r[:, None]), op(d, rad_f[None, :])
    res = {"precision": float(in_r.any(0).mean()), "recall": float(in_f.any(1).mean()),
           "density": float((1.0 / k) * in_r.sum(0).mean()), "coverage": float(in_r.any(1).mean())}
    return res, in_r, in_f


def test_prdc_equals_brute_force_when_one_set_collapses_and_at_odd_block_sizes() -> None:
    """A collapsed set puts many pairs inside the other set's balls (the mask path of the blocked pass,
    taken when more than 1/8 of a block is inside); tiny budgets give many uneven blocks, and k = n - 1
    keeps every candidate."""
    rng = _rng(25)
    spread = (rng.normal(size=(230, 10)) + 0.3).astype(np.float32)
    collapsed = (rng.normal(size=(170, 10)) * 0.05 + 0.3).astype(np.float32)
    for real, fake, k in ((spread, collapsed, 30), (collapsed, spread, 30), (spread, spread[::-1] * 1.1, 1),
                          (spread[:41], collapsed[:37], 36)):
        for closed in (True, False):
            ref, in_r, in_f = _prdc_brute(real, fake, k, closed)
            for budget in (36 * 1024, 50_000, 16 * 1024 * 1024):
                ours = M.prdc(real=real, fake=fake, k=k, max_memory=budget, boundary="closed" if closed else "open")
                assert ours == ref, (len(real), len(fake), k, budget, closed)
    # the collapsed cases really do put more than 1/8 of the pairs inside (so the mask path is exercised)
    assert _prdc_brute(spread, collapsed, 30, True)[1].mean() > 1 / 8
    assert _prdc_brute(collapsed, spread, 30, True)[2].mean() > 1 / 8


def test_knn_radii_symmetric_blocks_equal_brute_force_float32_with_duplicates() -> None:
    """Each off-diagonal block of the symmetric pass serves its rows and (transposed) its columns."""
    rng = _rng(26)
    x = (rng.normal(size=(157, 9)) * 3 + 5).astype(np.float32)
    x[100:110] = x[:10]  # duplicates: distance exactly 0
    d = np.sort(cdist(x.astype(np.float64), x.astype(np.float64)), 1)
    for k in (1, 2, 7, 156):
        for budget in (36 * 1024, 60_000, M.DEFAULT_MAX_MEMORY):
            np.testing.assert_allclose(M.knn_radii(x, k=k, max_memory=budget), d[:, k], rtol=1e-12, atol=0)


@pytest.mark.parametrize("workers", [1, 3])
def test_blocked_passes_equal_brute_force_with_any_number_of_workers(workers: int, monkeypatch) -> None:
    """The passes split their blocks among worker threads (as many as BLAS threads), each with its own
    k-NN lists and counts, merged at the end; any split must give the brute-force answer."""
    monkeypatch.setattr(M, "_blas_threads", lambda work=0: workers)
    rng = _rng(27)
    x = (rng.normal(size=(211, 9)) * 3 + 5).astype(np.float32)
    x[150:160] = x[:10]  # duplicates: distance exactly 0
    y = (rng.normal(size=(97, 9)) * 3 + 5).astype(np.float32)
    d = np.sort(cdist(x.astype(np.float64), x.astype(np.float64)), 1)
    for budget in (36 * 1024, 100_000, M.DEFAULT_MAX_MEMORY):
        for k in (1, 5, 30):
            np.testing.assert_allclose(M.knn_radii(x, k=k, max_memory=budget), d[:, k], rtol=1e-12, atol=0)
        np.testing.assert_allclose(M.nearest_distances(y, x, max_memory=budget),
                                   cdist(y.astype(np.float64), x.astype(np.float64)).min(1), rtol=1e-12)
        for real, fake in ((x, y), (y, x[:60] * 0.02 + 5)):
            assert M.prdc(real=real, fake=fake, k=5, max_memory=budget) == _prdc_brute(real, fake, 5, True)[0]


def test_prdc_uses_one_worker_per_blas_thread_and_restores_the_blas_setting(monkeypatch) -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    seen: list[int] = []
    real_parallel = M._parallel
    monkeypatch.setattr(M, "_parallel", lambda tasks, work, workers: (seen.append(workers), real_parallel(tasks, work, workers)))
    rng = _rng(28)
    r, f = rng.normal(size=(1500, 64)), rng.normal(size=(1500, 64))
    with threadpool_limits(2, user_api="blas"):
        M.prdc(real=r, fake=f, k=3, max_memory=4 * 2**20)
        assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {2}
        assert seen and set(seen) == {2}
        seen.clear()
        M.prdc(real=r[:300, :16], fake=f[:300, :16], k=3)  # too little work to repay a second thread
        assert seen and set(seen) == {1}


def test_coverage_of_two_samples_of_one_distribution_is_about_1_minus_2_to_the_minus_k() -> None:
    rng = _rng(23)
    for k in (2, 5):
        res = M.prdc(real=rng.normal(size=(3000, 6)), fake=rng.normal(size=(3000, 6)), k=k)
        assert res["coverage"] == pytest.approx(1 - 2.0**-k, abs=0.03)
        assert res["density"] == pytest.approx(1.0, abs=0.1)


def test_prdc_moves_the_right_way_and_validates_k() -> None:
    rng = _rng(24)
    r = rng.normal(size=(500, 8))
    same = M.prdc(real=r, fake=rng.normal(size=(500, 8)))
    narrow = M.prdc(real=r, fake=rng.normal(size=(500, 8)) * 0.3)  # collapsed towards the mode
    assert narrow["recall"] < same["recall"] - 0.3
    assert narrow["coverage"] < same["coverage"] - 0.3
    assert narrow["precision"] >= same["precision"]
    with pytest.raises(UserError, match="k must be"):
        M.prdc(real=r[:5], fake=r[:5], k=5)
    with pytest.raises(UserError, match="boundary"):
        M.prdc(real=r, fake=r, boundary="half-open")


# ------------------------------------------------------------------------------------------------ modes
def test_mode_coverage_collapse_and_balance() -> None:
    real = np.repeat(np.arange(10), 50)
    full = M.mode_coverage(real_labels=real, fake_labels=np.repeat(np.arange(10), 30))
    assert full["modes_covered"] == 10 and full["mode_kl"] == pytest.approx(0.0, abs=1e-3)
    assert full["per_class_recall"] == [1.0] * 10 and full["class_recall"] == pytest.approx(1.0)
    one = M.mode_coverage(real_labels=real, fake_labels=np.full(300, 3), n_classes=10)
    assert one["modes_covered"] == 1
    assert one["mode_kl"] == pytest.approx(np.log(1 / ((50 + 0.5) / (500 + 5))), rel=1e-9)
    assert one["per_class_recall"][3] == 1.0 and one["per_class_recall"][0] == 0.0
    assert one["class_recall"] == pytest.approx(0.1)
    # a few stray samples in a class (classifier errors) do not count as covering it
    stray = np.concatenate([np.full(295, 3), np.arange(5)])
    assert M.mode_coverage(real_labels=real, fake_labels=stray)["modes_covered"] == 1
    probs = np.eye(10)[np.repeat(np.arange(10), 30)] * 0.9 + 0.01
    assert M.mode_coverage(real_labels=real, fake_probs=probs)["modes_covered"] == 10
    with pytest.raises(UserError, match="exactly one"):
        M.mode_coverage(real_labels=real)


# ------------------------------------------------------------------------------------------------ memorization
def test_memorization_flags_copies_not_fresh_samples() -> None:
    rng = _rng(30)
    train = rng.normal(size=(400, 10))
    heldout = rng.normal(size=(400, 10))
    fresh = rng.normal(size=(300, 10))
    copies = train[rng.choice(400, 300)] + rng.normal(size=(300, 10)) * 1e-3
    a = M.memorization(train=train, fake=fresh, heldout=heldout, seed=0)
    b = M.memorization(train=train, fake=copies, heldout=heldout, seed=0)
    assert a["memorization"] < 0.05 and a["memorization_heldout_rate"] < 0.05
    assert b["memorization"] == 1.0
    assert b["ct_score"] < -5 < a["ct_score"] < 5  # C_T << 0 means data copying
    half = np.concatenate([fresh[:150], copies[:150]])
    assert M.memorization(train=train, fake=half, heldout=heldout)["memorization"] == pytest.approx(0.5, abs=0.05)


def test_mann_whitney_z_matches_scipy() -> None:
    from scipy.stats import mannwhitneyu

    rng = _rng(31)
    q, p = rng.normal(size=40), rng.normal(size=60) + 0.3
    u = mannwhitneyu(q, p, alternative="two-sided", use_continuity=False).statistic
    z = (u - 40 * 60 / 2) / np.sqrt(40 * 60 * 101 / 12)
    assert M._mann_whitney_z(q, p) == pytest.approx(z, rel=1e-12)
