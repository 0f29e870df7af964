"""DirectProbe and exact hull geometry on hand-made point sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.svm import SVC

from isoprobe.directprobe import DirectProbe
from isoprobe.hulls import hull_distance, separate

SQUARE = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def test_two_separable_blobs_give_two_clusters():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(30, 5)), rng.normal(size=(30, 5)) + 6])
    y = np.repeat(["neg", "pos"], 30)
    probe = DirectProbe().fit(X, y)
    assert probe.n_clusters_ == 2
    assert sorted(len(c) for c in probe.clusters_) == [30, 30]
    assert probe.score(X, y) == 1.0


def test_xor_cannot_be_one_cluster_per_label():
    """XOR: the closer same-label pair merges first (here 'a', ties go to label order); the other
    label's pair would cross it and stays two clusters: 3 clusters for 2 labels."""
    X = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    probe = DirectProbe().fit(X, np.array(["a", "a", "b", "b"]))
    assert probe.n_clusters_ == 3
    assert [c.tolist() for c in probe.clusters_] == [[0, 1], [2], [3]]
    assert probe.stats_.refused >= 1
    # stretched so that b's pair is the closer one: b merges, a is refused
    X2 = X * np.array([1.0, 1.5])
    X2[2:] = [[0.2, 1.0], [0.8, 0.5]]
    probe = DirectProbe().fit(X2, np.array(["a", "a", "b", "b"]))
    assert probe.n_clusters_ == 3 and [c.tolist() for c in probe.clusters_] == [[0], [1], [2, 3]]


def test_squares_a_known_gap_apart():
    X = np.vstack([SQUARE, SQUARE + [2.5, 0.0]])
    y = np.repeat([0, 1], 4)
    probe = DirectProbe().fit(X, y)
    assert probe.n_clusters_ == 2
    dist = probe.label_distances()
    assert dist[0, 1] == pytest.approx(1.5, rel=1e-6) and dist[1, 0] == dist[0, 1]
    assert np.isnan(dist[0, 0])
    # point-to-hull distances and nearest-hull prediction
    query = np.array([[0.5, 0.5], [1.2, 0.5], [5.0, 0.5], [1.0, 3.0]])
    d = probe.transform(query)
    expected = [[0.0, 2.0], [0.2, 1.3], [4.0, 1.5], [2.0, np.hypot(1.5, 2.0)]]
    np.testing.assert_allclose(d, expected, rtol=1e-6, atol=1e-7)
    assert probe.predict(query).tolist() == [0, 0, 1, 0]


def test_nested_labels_force_extra_clusters():
    """a | b | a along a line, b also above: a's two groups cannot merge across b."""
    a_left = np.array([[0.0, 0.0], [0.5, 0.2], [0.2, 0.6]])
    b_mid = np.array([[3.0, 0.0], [3.5, 0.3], [3.2, 0.5]])
    a_right = a_left + [6.0, 0.0]
    X = np.vstack([a_left, b_mid, a_right])
    y = np.array(["a"] * 3 + ["b"] * 3 + ["a"] * 3)
    probe = DirectProbe().fit(X, y)
    assert probe.n_clusters_ == 3
    assert sorted(c.tolist() for c in probe.clusters_) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert sorted(probe.cluster_labels_.tolist()) == [0, 0, 1]
    # a ring of one label around another: the outer label needs several clusters
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    ring = np.c_[np.cos(angles), np.sin(angles)] * 3
    inner = np.array([[0.0, 0.0], [0.3, 0.1], [-0.2, 0.2]])
    probe = DirectProbe().fit(np.vstack([ring, inner]), np.r_[np.zeros(8), np.ones(3)])
    assert probe.n_clusters_ > 2
    assert (probe.cluster_labels_ == 1).sum() == 1  # the inner label stays one cluster


def test_identical_points_with_different_labels_are_reported_and_left_out():
    X = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    y = np.array([0, 1, 0, 1, 0])
    probe = DirectProbe().fit(X, y)
    assert probe.conflicts_ == {"rows": 3, "groups": 1, "indices": [0, 1, 4]}
    assert sorted(np.concatenate(probe.clusters_).tolist()) == [2, 3]
    with pytest.raises(ValueError, match="identical vectors carry different labels"):
        DirectProbe(conflicts="fail").fit(X, y)


def test_deterministic():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 6))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)  # not linearly separable
    a, b = DirectProbe().fit(X, y), DirectProbe().fit(X, y)
    assert a.n_clusters_ == b.n_clusters_ > 2
    assert all(np.array_equal(p, q) for p, q in zip(a.clusters_, b.clusters_, strict=True))
    # every pair of final clusters of different labels is separable (exact check)
    for i, ci in enumerate(a.clusters_):
        for j, cj in enumerate(a.clusters_):
            if a.cluster_labels_[i] < a.cluster_labels_[j]:
                assert separate(X[ci], X[cj]).separable


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("seed", range(6))
def test_lp_separability_agrees_with_hard_margin_svm(seed):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(2, 8))
    n = int(rng.integers(5, 25))
    P = rng.normal(size=(n, d))
    Q = rng.normal(size=(n, d)) + rng.uniform(0, 3) * rng.normal(size=d)
    X, y = np.vstack([P, Q]), np.r_[np.ones(n), -np.ones(n)]
    svm = SVC(kernel="linear", C=1e7, tol=1e-8, max_iter=1_000_000).fit(X, y)
    svm_separates = svm.score(X, y) == 1.0
    result = separate(P, Q)
    assert result.separable == svm_separates
    if result.separable:
        assert (P @ result.w - result.t).min() > 0 > (Q @ result.w - result.t).max()
        margin = 2 / np.linalg.norm(svm.coef_)
        assert hull_distance(P, Q) == pytest.approx(margin, rel=1e-4)
    else:
        ip, iq = result.witness
        assert not separate(P[ip], Q[iq]).separable
        assert hull_distance(P, Q) == 0.0
