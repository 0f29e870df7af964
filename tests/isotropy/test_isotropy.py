"""Tests of isoprobe.isotropy.metrics against closed forms and reference formulas written here.

The references below are independent of the module's helpers: covariance spectra come from an SVD of
the centred data, IsoScore follows the steps of Rudman et al. (2022), mean cosine is a brute-force
mean over pairs and I(W) (Mu & Viswanath 2018) is a plain sum of exponentials.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from isoprobe.isotropy.metrics import (
    Isotropy,
    covariance_eigenvalues,
    effective_rank,
    isoscore,
    isotropy_metrics,
    mean_cosine,
    participation_ratio,
    partition_isotropy,
)

SPREAD_KEYS = ("isoscore", "effective_rank", "participation_ratio")
SCALE_FREE_KEYS = (
    "n_rows",
    "dim",
    "centring_ratio",
    "std_cv",
    "std_max_median",
    "corr_mean_abs",
    "corr_share_above_0.5",
    "constant_dims",
    "var_share_top1",
    "var_share_top5",
    "var_share_top10",
    "l2_share_top1",
    "l2_share_top5",
    "l2_share_top10",
    "mean_cosine",
    "effective_rank",
    "participation_ratio",
    "isoscore",
)


# ----------------------------------------------------------------------------- reference formulas


def ref_eigenvalues(X: np.ndarray) -> np.ndarray:
    """Population covariance eigenvalues (descending) from the singular values of the centred data."""
    Xc = X - X.mean(0)
    s = np.linalg.svd(Xc, compute_uv=False)
    eig = np.zeros(X.shape[1])
    eig[: len(s)] = s**2 / len(X)
    return np.sort(eig)[::-1]


def ref_isoscore(eig: np.ndarray) -> float:
    """IsoScore, steps 3-6 of Rudman et al. (2022), Algorithm 1."""
    n = len(eig)
    normalised = np.sqrt(n) * eig / np.sqrt((eig**2).sum())
    defect = np.sqrt(((normalised - 1.0) ** 2).sum()) / np.sqrt(2.0 * (n - np.sqrt(n)))
    phi = (n - defect**2 * (n - np.sqrt(n))) ** 2 / n**2
    return float((n * phi - 1.0) / (n - 1.0))


def ref_effective_rank(eig: np.ndarray) -> float:
    p = eig / eig.sum()
    entropy = -sum(pi * np.log(pi) for pi in p if pi > 0)
    return float(np.exp(entropy))


def ref_participation_ratio(eig: np.ndarray) -> float:
    return float(eig.sum() ** 2 / (eig**2).sum())


def ref_mean_cosine(X: np.ndarray) -> float:
    n = len(X)
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                total += X[i] @ X[j] / (np.linalg.norm(X[i]) * np.linalg.norm(X[j]))
    return total / (n * (n - 1))


def ref_partition_isotropy(X: np.ndarray) -> float:
    """min_c Z(c) / max_c Z(c), c = +-(right singular vectors of X) = +-(eigenvectors of X^T X)."""
    assert X.shape[0] >= X.shape[1]  # then the H right singular vectors are all the eigenvectors
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    zs = []
    for c in vt:
        zs.append(np.exp(X @ c).sum())
        zs.append(np.exp(-(X @ c)).sum())
    return float(min(zs) / max(zs))


def random_orthogonal(h: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(h, h)))
    return q * np.sign(np.diag(r))


def even_cloud(k: int, h: int, rng: np.random.Generator, scale: float = 2.0) -> np.ndarray:
    """Rows +-scale * e_j (j < k), rotated inside the first k dims: covariance exactly (scale^2 / k) on
    k dims and exactly 0 on the other h - k dims (which stay exactly 0)."""
    block = np.concatenate([np.eye(k), -np.eye(k)]) * scale
    if k > 1:
        block = block @ random_orthogonal(k, rng)
    X = np.zeros((2 * k, h))
    X[:, :k] = block
    return X


def assert_metrics_close(a: dict, b: dict, keys, rtol=1e-9, atol=1e-12) -> None:
    for key in keys:
        assert a[key] == pytest.approx(b[key], rel=rtol, abs=atol, nan_ok=True), key


# ----------------------------------------------------------------------------- API surface


def test_metric_keys_and_wrapper_agree():
    X = np.random.default_rng(0).normal(size=(200, 12))
    est = Isotropy(top_k=(1, 3), corr_threshold=0.25).fit(X)
    expected = {
        "n_rows",
        "dim",
        "centring_ratio",
        "std_mean",
        "std_cv",
        "std_max_median",
        "corr_mean_abs",
        "corr_share_above_0.25",
        "constant_dims",
        "var_share_top1",
        "var_share_top3",
        "l2_share_top1",
        "l2_share_top3",
        "mean_cosine",
        "effective_rank",
        "participation_ratio",
        "isoscore",
        "partition_isotropy",
    }
    assert set(est.metrics_) == expected
    assert all(isinstance(v, float) for v in est.metrics_.values())
    assert est.metrics_["n_rows"] == 200.0
    assert est.metrics_["dim"] == 12.0
    other = isotropy_metrics(X, top_k=(1, 3), corr_threshold=0.25)
    assert other == est.metrics_
    assert "corr_share_above_0.5" in isotropy_metrics(X)


def test_fitted_attributes_match_population_statistics():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 6)) * np.array([1.0, 2.0, 3.0, 0.5, 1.5, 4.0]) + 3.0
    X[:, 5] = 7.25  # a constant dimension
    est = Isotropy().fit(X)
    np.testing.assert_allclose(est.mean_, X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(est.std_, X.std(0, ddof=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(est.eigenvalues_, ref_eigenvalues(X), rtol=1e-9, atol=1e-10)
    assert np.all(np.diff(est.eigenvalues_) <= 0)
    assert np.all(est.eigenvalues_ >= 0)
    live = np.arange(5)
    ref_corr = np.corrcoef(X[:, live].T)
    np.testing.assert_allclose(est.corr_[np.ix_(live, live)], ref_corr, atol=1e-10)
    assert np.isnan(est.corr_[5]).all()
    assert np.isnan(est.corr_[:, 5]).all()
    assert est.metrics_["constant_dims"] == 1.0


# ----------------------------------------------------------------------------- isotropic Gaussian


@pytest.mark.parametrize("h", [16, 32])
def test_isotropic_gaussian(h):
    n = 20000
    X = np.random.default_rng(h).normal(size=(n, h))
    m = isotropy_metrics(X, top_k=(1, 4, 8))
    bound = 3.0 / np.sqrt(n)
    assert m["std_cv"] < bound
    assert m["std_mean"] == pytest.approx(1.0, abs=bound)
    assert m["std_max_median"] == pytest.approx(1.0, abs=0.03)
    assert m["corr_mean_abs"] < bound
    assert m["corr_share_above_0.5"] == 0.0
    assert m["constant_dims"] == 0.0
    assert m["centring_ratio"] < bound
    assert abs(m["mean_cosine"]) < 1e-3
    assert m["isoscore"] == pytest.approx(1.0, abs=0.01)
    assert m["effective_rank"] == pytest.approx(h, rel=0.01)
    assert m["participation_ratio"] == pytest.approx(h, rel=0.01)
    for k in (1, 4, 8):
        assert m[f"var_share_top{k}"] == pytest.approx(k / h, abs=0.02)
        assert (
            m[f"var_share_top{k}"] >= k / h * 0.99
        )  # the top-k are the largest of the h variances
        assert m[f"l2_share_top{k}"] == pytest.approx(k / h, abs=0.02)


def test_spectral_metrics_match_reference_on_anisotropic_cloud():
    rng = np.random.default_rng(2)
    h = 10
    X = (rng.normal(size=(500, h)) * np.linspace(0.2, 3.0, h)) @ random_orthogonal(h, rng) + 1.5
    m = isotropy_metrics(X)
    eig = ref_eigenvalues(X)
    assert m["isoscore"] == pytest.approx(ref_isoscore(eig), rel=1e-9)
    assert m["effective_rank"] == pytest.approx(ref_effective_rank(eig), rel=1e-9)
    assert m["participation_ratio"] == pytest.approx(ref_participation_ratio(eig), rel=1e-9)
    assert 0.0 < m["isoscore"] < 1.0
    assert 1.0 < m["participation_ratio"] < m["effective_rank"] < h


# ----------------------------------------------------------------------------- rank 1 + noise


def test_rank_one_along_coordinate_axis():
    rng = np.random.default_rng(3)
    n, h = 4000, 16
    X = 1e-2 * rng.normal(size=(n, h))
    X[:, 5] += 10.0 * rng.normal(size=n)
    m = isotropy_metrics(X)
    assert m["var_share_top1"] > 0.999
    assert m["l2_share_top1"] > 0.999
    assert m["effective_rank"] == pytest.approx(1.0, abs=0.01)
    assert m["participation_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert m["isoscore"] == pytest.approx(0.0, abs=1e-3)
    assert m["corr_mean_abs"] < 3.0 / np.sqrt(n)  # the noise dims are mutually independent
    assert m["std_max_median"] > 500


def test_rank_one_along_random_direction():
    rng = np.random.default_rng(4)
    n, h = 4000, 16
    u = rng.normal(size=h)
    u /= np.linalg.norm(u)
    X = 10.0 * rng.normal(size=(n, 1)) * u + 1e-3 * rng.normal(size=(n, h))
    m = isotropy_metrics(X)
    # in coordinate space the variance is spread over the dims as u_d^2
    assert m["var_share_top1"] == pytest.approx(np.max(u**2), rel=1e-3)
    assert m["var_share_top1"] < 0.9
    assert m["effective_rank"] == pytest.approx(1.0, abs=1e-3)
    assert m["participation_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert m["isoscore"] == pytest.approx(0.0, abs=1e-4)
    assert m["corr_mean_abs"] > 0.99
    assert m["corr_share_above_0.5"] == 1.0


# ----------------------------------------------------------------------------- k of H dimensions


@pytest.mark.parametrize(("k", "h"), [(1, 8), (2, 8), (3, 8), (5, 12), (8, 8), (7, 20)])
def test_cloud_spread_evenly_over_k_dims(k, h):
    X = even_cloud(k, h, np.random.default_rng(10 * k + h))
    m = isotropy_metrics(X)
    assert m["isoscore"] == pytest.approx((k - 1) / (h - 1), abs=1e-9)
    assert m["constant_dims"] == float(h - k)
    assert m["participation_ratio"] == pytest.approx(k, rel=1e-9)
    assert m["effective_rank"] == pytest.approx(k, rel=1e-9)
    assert m["centring_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert m["var_share_top1"] == pytest.approx(
        np.sort(X.var(0))[::-1][0] / X.var(0).sum(), rel=1e-9
    )
    assert m["var_share_top10"] == pytest.approx(1.0, rel=1e-12)
    std = X.std(0)
    assert m["std_cv"] == pytest.approx(std.std() / std.mean(), rel=1e-9)


def test_isoscore_function_closed_forms():
    h = 9
    assert isoscore(np.ones(h)) == pytest.approx(1.0, abs=1e-12)
    assert isoscore(3.7 * np.ones(h)) == pytest.approx(1.0, abs=1e-12)
    for k in range(1, h + 1):
        eig = np.r_[np.full(k, 0.4), np.zeros(h - k)]
        assert isoscore(eig) == pytest.approx((k - 1) / (h - 1), abs=1e-12), k
        assert effective_rank(eig) == pytest.approx(k, rel=1e-12)
        assert participation_ratio(eig) == pytest.approx(k, rel=1e-12)
    eig = np.array([5.0, 2.0, 1.0, 0.5, 0.1])
    assert isoscore(eig) == pytest.approx(ref_isoscore(eig), rel=1e-12)
    assert effective_rank(eig) == pytest.approx(ref_effective_rank(eig), rel=1e-12)
    assert participation_ratio(eig) == pytest.approx(ref_participation_ratio(eig), rel=1e-12)


def test_covariance_eigenvalues_descending_and_clipped():
    rng = np.random.default_rng(5)
    A = rng.normal(size=(6, 3))
    cov = A @ A.T  # rank 3: three eigenvalues are round-off around 0
    eig = covariance_eigenvalues(cov)
    assert eig.shape == (6,)
    assert np.all(np.diff(eig) <= 0)
    assert np.all(eig >= 0)
    np.testing.assert_allclose(eig[:3], np.sort(np.linalg.svd(A, compute_uv=False) ** 2)[::-1])
    np.testing.assert_allclose(eig[3:], 0.0, atol=1e-12)


# ----------------------------------------------------------------------------- centring, cosine


def test_centring_ratio_of_shifted_cloud():
    rng = np.random.default_rng(6)
    n, h = 3000, 20
    shift = rng.normal(size=h) * 2.0
    X = rng.normal(size=(n, h)) + shift
    m = isotropy_metrics(X)
    expected = np.linalg.norm(X.mean(0)) / np.mean(np.linalg.norm(X, axis=1))
    assert m["centring_ratio"] == pytest.approx(expected, rel=1e-10)
    assert 0.3 < m["centring_ratio"] < 1.0


@pytest.mark.parametrize("shift", [0.0, 0.7, 3.0])
def test_mean_cosine_matches_brute_force(shift):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(50, 8)) + shift
    expected = ref_mean_cosine(X)
    assert isotropy_metrics(X)["mean_cosine"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert mean_cosine(X) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_mean_cosine_of_identical_and_opposite_rows():
    x = np.random.default_rng(8).normal(size=(1, 5))
    assert mean_cosine(np.repeat(x, 10, axis=0)) == pytest.approx(1.0, abs=1e-12)
    # a point and its negative: cos = -1 for every pair i != j
    assert mean_cosine(np.concatenate([x, -x])) == pytest.approx(-1.0, abs=1e-12)
    # 3 copies of x and 3 of -x: (3*2 + 3*2 - 2*9) / 30
    X = np.concatenate([np.repeat(x, 3, axis=0), np.repeat(-x, 3, axis=0)])
    assert mean_cosine(X) == pytest.approx(-6.0 / 30.0, abs=1e-12)


# ----------------------------------------------------------------------------- per-dimension stats


def test_std_cv_and_max_median_on_diagonal_scaled_gaussian():
    rng = np.random.default_rng(9)
    scales = np.array([0.5, 1.0, 1.0, 2.0, 3.0, 8.0])
    X = rng.normal(size=(20000, len(scales))) * scales
    m = isotropy_metrics(X)
    std = X.std(0)  # population std of the sample
    assert m["std_mean"] == pytest.approx(std.mean(), rel=1e-10)
    assert m["std_cv"] == pytest.approx(std.std() / std.mean(), rel=1e-10)
    assert m["std_max_median"] == pytest.approx(std.max() / np.median(std), rel=1e-10)
    # and against the known scales, within sampling error
    assert m["std_cv"] == pytest.approx(scales.std() / scales.mean(), rel=0.02)
    assert m["std_max_median"] == pytest.approx(8.0 / 1.5, rel=0.02)
    var = scales**2
    assert m["var_share_top1"] == pytest.approx(var.max() / var.sum(), rel=0.03)


def test_std_max_median_ignores_constant_dims():
    rng = np.random.default_rng(10)
    X = np.zeros((1000, 6))
    X[:, :3] = rng.normal(size=(1000, 3)) * np.array([1.0, 2.0, 6.0])
    X[:, 4] = -2.5  # constant, non-zero
    m = isotropy_metrics(X)
    std = X[:, :3].std(0)
    assert m["constant_dims"] == 3.0
    assert m["std_max_median"] == pytest.approx(std.max() / np.median(std), rel=1e-9)
    full = X.std(0)
    full[3:] = 0.0
    assert m["std_cv"] == pytest.approx(full.std() / full.mean(), rel=1e-9)


def test_correlation_share_on_correlated_pair():
    rng = np.random.default_rng(11)
    n = 5000
    X = rng.normal(size=(n, 4))
    X[:, 1] = X[:, 0] + 0.1 * rng.normal(size=n)
    m = isotropy_metrics(X)
    assert m["corr_share_above_0.5"] == pytest.approx(2.0 / 12.0, abs=1e-12)
    rho = np.corrcoef(X.T)
    off = np.abs(rho[~np.eye(4, dtype=bool)])
    assert m["corr_mean_abs"] == pytest.approx(off.mean(), rel=1e-9)
    assert m["corr_mean_abs"] == pytest.approx(2 * 0.995 / 12, abs=3 / np.sqrt(n))
    # a threshold above the pair's |rho| counts nothing; one below every |rho| counts everything
    assert isotropy_metrics(X, corr_threshold=0.999)["corr_share_above_0.999"] == 0.0
    assert isotropy_metrics(X, corr_threshold=0.0)["corr_share_above_0"] == 1.0


def test_correlation_excludes_constant_dims():
    rng = np.random.default_rng(12)
    X = np.zeros((2000, 5))
    X[:, 0] = rng.normal(size=2000)
    X[:, 1] = -X[:, 0]  # |rho| = 1
    X[:, 2] = 4.0  # constant: left out of the correlation metrics
    m = isotropy_metrics(X)
    assert m["constant_dims"] == 3.0
    assert m["corr_mean_abs"] == pytest.approx(1.0, abs=1e-12)
    assert m["corr_share_above_0.5"] == 1.0


def test_l2_share_with_outlier_dimension():
    rng = np.random.default_rng(13)
    n, h = 2000, 16
    X = rng.normal(size=(n, h))
    X[:, 3] += 100.0
    m = isotropy_metrics(X)
    mass = (X**2).sum(0)
    assert m["l2_share_top1"] == pytest.approx(mass.max() / mass.sum(), rel=1e-10)
    assert m["l2_share_top1"] > 0.99
    # the offset is not variance: the variance is still spread evenly
    assert m["var_share_top1"] < 0.1
    assert m["centring_ratio"] > 0.99


# ----------------------------------------------------------------------------- partition isotropy


def test_partition_isotropy_near_one_for_small_isotropic_gaussian():
    X = 0.05 * np.random.default_rng(14).normal(size=(20000, 16))
    value = isotropy_metrics(X)["partition_isotropy"]
    assert value > 0.8
    assert value <= 1.0
    assert value == pytest.approx(ref_partition_isotropy(X), rel=1e-8)


def test_partition_isotropy_near_zero_for_shifted_cloud():
    rng = np.random.default_rng(15)
    X = 0.1 * rng.normal(size=(2000, 8))
    X[:, 0] += 10.0
    value = partition_isotropy(X)
    assert value < 1e-6
    assert value == pytest.approx(ref_partition_isotropy(X), rel=1e-6)


@pytest.mark.parametrize("seed", [16, 17, 18])
def test_partition_isotropy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    h = 6
    X = 0.3 * (rng.normal(size=(400, h)) * np.linspace(0.5, 2.0, h)) @ random_orthogonal(h, rng)
    X += 0.2 * rng.normal(size=h)
    assert partition_isotropy(X) == pytest.approx(ref_partition_isotropy(X), rel=1e-9)


def test_partition_isotropy_invariant_to_sign_and_rotation():
    rng = np.random.default_rng(19)
    h = 8
    X = 0.4 * rng.normal(size=(1000, h)) * np.linspace(0.3, 1.5, h) + 0.3 * rng.normal(size=h)
    base = partition_isotropy(X)
    assert base < 0.9  # non-trivial
    assert partition_isotropy(-X) == pytest.approx(base, rel=1e-9)
    Q = random_orthogonal(h, rng)
    assert partition_isotropy(X @ Q) == pytest.approx(base, rel=1e-9)
    assert partition_isotropy(-(X @ Q)) == pytest.approx(base, rel=1e-9)


def test_partition_isotropy_no_overflow_at_large_scale():
    rng = np.random.default_rng(20)
    X = 1000.0 * rng.normal(size=(500, 8)) + 5000.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = partition_isotropy(X)
    assert np.isfinite(value)
    assert 0.0 <= value < 1e-100


# ----------------------------------------------------------------------------- invariances


def test_all_metrics_invariant_under_row_permutation():
    rng = np.random.default_rng(21)
    X = 0.5 * rng.normal(size=(600, 12)) * np.linspace(0.2, 2.0, 12) + 0.3
    X[:, 7] = 1.25
    perm = rng.permutation(len(X))
    a, b = isotropy_metrics(X), isotropy_metrics(X[perm])
    assert set(a) == set(b)
    assert_metrics_close(a, b, a.keys(), rtol=1e-9, atol=1e-12)


def test_spectral_metrics_invariant_under_rotation_of_centred_cloud():
    rng = np.random.default_rng(22)
    h = 12
    X = rng.normal(size=(800, h)) * np.linspace(0.1, 3.0, h)
    X -= X.mean(0)
    Q = random_orthogonal(h, rng)
    a, b = isotropy_metrics(X), isotropy_metrics(X @ Q)
    assert_metrics_close(a, b, ("mean_cosine", *SPREAD_KEYS), rtol=1e-9, atol=1e-12)
    # ...which coordinate-space metrics are not
    assert abs(a["var_share_top1"] - b["var_share_top1"]) > 0.01


def test_mean_cosine_invariant_under_rotation_of_uncentred_cloud():
    rng = np.random.default_rng(23)
    X = rng.normal(size=(300, 7)) + 1.0
    Q = random_orthogonal(7, rng)
    assert mean_cosine(X @ Q) == pytest.approx(mean_cosine(X), rel=1e-9)


@pytest.mark.parametrize("c", [1e-3, 0.37, 12.5, 1e4])
def test_scale_free_metrics_invariant_under_positive_scaling(c):
    rng = np.random.default_rng(24)
    X = rng.normal(size=(500, 12)) * np.linspace(0.2, 2.0, 12) + 0.5
    X[:, 11] = 0.0
    X[:, 0] = 0.8 * X[:, 1] + 0.1 * X[:, 0]
    a, b = isotropy_metrics(X), isotropy_metrics(c * X)
    assert_metrics_close(a, b, SCALE_FREE_KEYS, rtol=1e-8, atol=1e-12)
    assert b["std_mean"] == pytest.approx(c * a["std_mean"], rel=1e-9)


# ----------------------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("n", [2, 3, 64, 500])
def test_identical_rows_do_not_warn_and_give_nan_spread(n):
    """All rows the same (the embedding-layer [CLS]): no variance anywhere, so spread metrics are NaN."""
    cls = np.random.default_rng(25).normal(size=32)
    X = np.tile(cls, (n, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = isotropy_metrics(X)
    assert m["centring_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert m["mean_cosine"] == pytest.approx(1.0, abs=1e-12)
    not_nan = {
        key: m[key]
        for key in (
            "isoscore",
            "std_cv",
            "std_max_median",
            "var_share_top1",
            "corr_mean_abs",
            "corr_share_above_0.5",
            "participation_ratio",
        )
        if not np.isnan(m[key])
    }
    assert not_nan == {}
    assert m["constant_dims"] == 32.0


def test_identical_rows_effective_rank_is_nan_like_participation_ratio():
    """Zero covariance: p = eig / eig.sum() is undefined, as is the participation ratio."""
    X = np.tile(np.array([1.0, -2.0, 0.5, 4.0]), (2, 1))  # mean and variance exactly 0 here
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = isotropy_metrics(X)
    assert np.isnan(m["participation_ratio"])
    assert np.isnan(m["effective_rank"]), m["effective_rank"]


def test_all_zero_rows_no_exception():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = isotropy_metrics(np.zeros((10, 4)))
    assert m["constant_dims"] == 4.0
    assert np.isnan(m["isoscore"])
    assert np.isnan(m["std_cv"])


@pytest.mark.parametrize(
    "X",
    [
        np.ones(5),
        np.ones((1, 5)),
        np.ones((5, 1)),
        np.ones((0, 5)),
        np.ones((3, 4, 2)),
    ],
    ids=["1d", "one-row", "one-dim", "empty", "3d"],
)
def test_bad_shapes_raise(X):
    with pytest.raises(ValueError):
        isotropy_metrics(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_raise(bad):
    X = np.random.default_rng(26).normal(size=(10, 4))
    X[3, 2] = bad
    with pytest.raises(ValueError, match="non-finite"):
        Isotropy().fit(X)
