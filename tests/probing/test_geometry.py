"""isoprobe.probing.geometry against hand-made answers, invariances and a naive HSIC reference written here
(centring matrix H = I - 11^T/n, K = XX^T, L = YY^T, HSIC = tr(KHLH))."""

from __future__ import annotations

import numpy as np
import pytest

from isoprobe.probing.geometry import (
    centroid_distances,
    centroid_movement,
    label_centroids,
    linear_cka,
    pair_names,
    pair_vector,
    pca_2d,
    relative_centroid_movement,
    spatial_similarity,
)


def ref_cka(X: np.ndarray, Y: np.ndarray) -> float:
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    hsic = np.trace(K @ H @ L @ H)
    return hsic / np.sqrt(np.trace(K @ H @ K @ H) * np.trace(L @ H @ L @ H))


def orthogonal(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# ----------------------------------------------------------------------------- CKA


@pytest.mark.parametrize("shape", [(50, 8, 5), (6, 40, 30)], ids=["features", "gram"])
def test_cka_matches_naive_reference(shape):
    n, d1, d2 = shape
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d1)) + 3.0
    Y = X[:, :d2] @ rng.normal(size=(d2, d2)) + 0.5 * rng.normal(size=(n, d2))
    assert linear_cka(X, Y) == pytest.approx(ref_cka(X, Y), rel=1e-10)
    assert linear_cka(Y, X) == pytest.approx(linear_cka(X, Y), rel=1e-12)
    assert 0.05 < linear_cka(X, Y) < 0.99


def test_cka_identity_and_invariances():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 12)) * rng.uniform(0.1, 5, 12)
    Y = np.tanh(X @ rng.normal(size=(12, 9)))
    base = linear_cka(X, Y)
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, 3 * X @ orthogonal(12, 2) + 7) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X @ orthogonal(12, 3), Y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(X, Y @ orthogonal(9, 4)) == pytest.approx(base, rel=1e-10)
    assert linear_cka(1e-6 * X, 1e6 * Y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(X + rng.normal(size=12) * 100, Y - 5) == pytest.approx(base, rel=1e-9)
    # not invariant to a non-isotropic scaling
    assert abs(linear_cka(X * np.arange(1, 13), Y) - base) > 1e-3


def test_cka_of_independent_data_is_small():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(2000, 10)), rng.normal(size=(2000, 10))
    assert linear_cka(X, Y) < 0.05


def test_cka_constant_and_bad_inputs():
    X = np.random.default_rng(3).normal(size=(10, 4))
    assert np.isnan(linear_cka(X, np.full((10, 3), 0.1)))
    assert np.isnan(linear_cka(np.zeros((10, 4)), X))
    # a constant column is ignored, whatever round-off its mean has
    Xc = np.column_stack([X, np.full(10, 0.1)])
    assert linear_cka(Xc, X) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="same rows"):
        linear_cka(X, X[:5])
    with pytest.raises(ValueError, match="non-finite"):
        linear_cka(np.where(X > 1, np.nan, X), X)


# ----------------------------------------------------------------------------- centroids, pairs


def test_label_centroids():
    X = np.array([[0.0, 0.0], [2.0, 4.0], [10.0, 10.0], [5.0, 5.0]])
    y = np.array(["a", "a", "b", "zzz"])
    C = label_centroids(X, y, labels=["b", "a", "c"])
    assert np.array_equal(C[:2], [[10.0, 10.0], [1.0, 2.0]])
    assert np.isnan(C[2]).all()
    assert np.array_equal(label_centroids(X, [0, 0, 1, 1], [0, 1]), [[1, 2], [7.5, 7.5]])


def test_pairs_order_and_names():
    D = np.array([[0, 1, 2, 3], [1, 0, 4, 5], [2, 4, 0, 6], [3, 5, 6, 0]], dtype=float)
    assert pair_vector(D).tolist() == [1, 2, 3, 4, 5, 6]
    assert pair_names(["w", "x", "y", "z"]) == ["w|x", "w|y", "w|z", "x|y", "x|z", "y|z"]
    assert pair_names([3, 1]) == ["3|1"]
    with pytest.raises(ValueError, match="symmetric"):
        pair_vector(np.triu(D))
    with pytest.raises(ValueError, match="square"):
        pair_vector(D[:3])


def test_centroid_distances():
    C = np.array([[0.0, 0.0], [3.0, 4.0], [np.nan, np.nan]])
    D = centroid_distances(C)
    assert D[0, 1] == D[1, 0] == 5.0 and D[0, 0] == 0.0
    assert np.isnan(D[2]).all() and np.isnan(D[:, 2]).all()


# ----------------------------------------------------------------------------- spatial similarity


def test_spatial_similarity():
    rng = np.random.default_rng(4)
    v = rng.uniform(1, 5, 10)
    assert spatial_similarity(v, v) == pytest.approx(1.0)
    assert spatial_similarity(v, 3 * v + 2) == pytest.approx(1.0)
    assert spatial_similarity(v, -v) == pytest.approx(-1.0)
    w = rng.uniform(1, 5, 10)
    assert spatial_similarity(v, w) == pytest.approx(np.corrcoef(v, w)[0, 1])
    # matrices: the pairs of their upper triangles
    C1, C2 = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    D1, D2 = centroid_distances(C1), centroid_distances(C2)
    expect = np.corrcoef(pair_vector(D1), pair_vector(D2))[0, 1]
    assert spatial_similarity(D1, D2) == pytest.approx(expect)
    assert spatial_similarity(D1, centroid_distances(2 * C1 @ orthogonal(3, 5) + 1)) == (
        pytest.approx(1.0)
    )


def test_spatial_similarity_nan_handling():
    v = np.array([1.0, 2.0, np.nan, 4.0, 8.0])
    w = np.array([2.0, 4.0, 5.0, np.nan, 16.0])
    assert spatial_similarity(v, w) == pytest.approx(1.0)  # pairs 0, 1, 4 only
    assert np.isnan(spatial_similarity([1.0, np.nan, 3.0], [2.0, 1.0, np.nan]))  # one pair
    assert np.isnan(spatial_similarity([0.3] * 4, [1.0, 2.0, 3.0, 4.0]))  # constant
    assert np.isnan(spatial_similarity([1.0, 2.0, 3.0], [7.1, 7.1, 7.1]))
    C = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [np.nan, np.nan]])
    D = centroid_distances(C)
    assert spatial_similarity(D, D) == pytest.approx(1.0)  # the 3 pairs with the NaN label drop
    with pytest.raises(ValueError):
        spatial_similarity(np.arange(3.0), np.arange(4.0))


# ----------------------------------------------------------------------------- movement


def test_centroid_movement():
    before = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    after = np.array([[3.0, 4.0], [2.0, 0.0], [0.0, 1.0], [np.nan, np.nan]])
    move = centroid_movement(before, after)
    assert move[:3].tolist() == [5.0, 0.0, 1.0] and np.isnan(move[3])
    # spread: mean distance of the before centroids from their mean (1, 0.75)
    centre = before.mean(0)
    spread = np.mean([np.hypot(*(c - centre)) for c in before])
    assert np.allclose(relative_centroid_movement(before, after)[:3], move[:3] / spread)
    norm = np.mean([0.0, 2.0, 2.0, np.sqrt(2)])
    rel = relative_centroid_movement(before, after, reference="norm")
    assert np.allclose(rel[:3], move[:3] / norm)
    # a shift of everything changes "norm" but not "spread"
    assert np.allclose(relative_centroid_movement(before + 10, after + 10)[:3], move[:3] / spread)
    assert np.isnan(relative_centroid_movement(np.ones((3, 2)), np.zeros((3, 2)))).all()
    with pytest.raises(ValueError):
        relative_centroid_movement(before, after, reference="max")
    with pytest.raises(ValueError):
        centroid_movement(before, after[:2])


# ----------------------------------------------------------------------------- PCA


def test_pca_on_a_line():
    direction = np.array([3.0, -4.0, 0.0]) / 5
    t = np.array([-2.0, -1.0, 0.5, 3.0])
    a, b = t[:2, None] * direction + 1, t[2:, None] * direction + 1
    (pa, pb), ratio = pca_2d(a, b)
    assert pa.shape == (2, 2) and pb.shape == (2, 2)
    assert ratio == pytest.approx([1.0, 0.0], abs=1e-12)
    # the largest loading (-4/5 on the second axis) is made positive: coordinate = -t + mean(t)
    coords = np.concatenate([pa, pb])
    assert np.allclose(coords[:, 0], -(t - t.mean()))
    assert np.allclose(coords[:, 1], 0.0, atol=1e-12)


def test_pca_shared_axes_and_sign_rule():
    rng = np.random.default_rng(6)
    A = rng.normal(size=(20, 5)) * [5, 3, 1, 0.5, 0.1]
    B = A + [4, 0, 0, 0, 0]
    (pa, pb), ratio = pca_2d(A, B)
    (pab,), ratio_ab = pca_2d(np.concatenate([A, B]))
    assert np.allclose(np.concatenate([pa, pb]), pab) and np.allclose(ratio, ratio_ab)
    # the same components whatever the sign the solver returns: flipping the data flips coordinates
    (pneg,), _ = pca_2d(-np.concatenate([A, B]))
    assert np.allclose(pneg, -pab)
    # against a reference: the eigenvectors of the covariance, sign-fixed by the largest loading
    S = np.concatenate([A, B])
    Sc = S - S.mean(0)
    val, vec = np.linalg.eigh(Sc.T @ Sc)
    vec = vec[:, ::-1][:, :2]
    vec *= np.sign(vec[np.abs(vec).argmax(0), [0, 1]])
    assert np.allclose(pab, Sc @ vec)
    assert np.allclose(ratio, val[::-1][:2] / val.sum())


def test_pca_nan_rows_and_degenerate_inputs():
    A = np.array([[0.0, 0.0], [2.0, 0.0], [np.nan, np.nan]])
    (pa,), ratio = pca_2d(A)
    assert np.isnan(pa[2]).all() and np.allclose(pa[:2, 0], [-1.0, 1.0])
    assert ratio == pytest.approx([1.0, 0.0])
    (p1,), ratio = pca_2d(np.array([[1.0], [3.0]]))  # d = 1: a zero second axis
    assert np.allclose(p1, [[-1.0, 0.0], [1.0, 0.0]]) and ratio.tolist() == [1.0, 0.0]
    (same,), ratio = pca_2d(np.ones((3, 4)))
    assert np.allclose(same, 0.0) and np.isnan(ratio).all()
