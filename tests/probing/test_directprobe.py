"""DirectProbe and exact hull geometry on hand-made point sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.svm import SVC

from isoprobe.probing import directprobe, hulls
from isoprobe.probing.directprobe import DirectProbe
from isoprobe.probing.hulls import hull_distance, separate

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


# ---------------------------------------------------------------- against plain references


def reference_directprobe(X: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """DirectProbe straight from its definition (slow): the closest pair of same-label clusters
    (squared centroid distance; ties: label order, then the clusters' first members) merges unless
    the merged hull meets the hull of a cluster of another label (an LP against every one of
    them); a refused pair is not taken again while both clusters stay as they are."""
    _, codes = np.unique(y, return_inverse=True)
    clusters = {i: [i] for i in range(len(X))}  # keyed by first member
    refused = set()
    while True:
        keys = sorted(clusters)
        centroids = np.array([X[clusters[k]].mean(0) for k in keys])
        dist = ((centroids[:, None] - centroids[None]) ** 2).sum(-1)
        best = None
        for a in range(len(keys)):
            for b in range(a + 1, len(keys)):
                ka, kb = keys[a], keys[b]
                if codes[ka] != codes[kb] or (tuple(clusters[ka]), tuple(clusters[kb])) in refused:
                    continue
                key = (dist[a, b], codes[ka], ka, kb)
                if best is None or key < best:
                    best = key
        if best is None:
            return [np.array(clusters[k]) for k in sorted(clusters)]
        _, code, ka, kb = best
        merged = sorted(clusters[ka] + clusters[kb])
        others = [k for k in clusters if codes[k] != code]
        if all(separate(X[merged], X[clusters[k]]).separable for k in others):
            clusters[ka] = merged
            del clusters[kb]
        else:
            refused.add((tuple(clusters[ka]), tuple(clusters[kb])))


@pytest.mark.parametrize("seed", range(8))
def test_fit_equals_the_plain_definition_on_random_non_separable_sets(seed):
    rng = np.random.default_rng(seed)
    n, d, n_labels = int(rng.integers(20, 60)), int(rng.integers(2, 5)), int(rng.integers(2, 4))
    X = rng.normal(size=(n, d))
    y = rng.integers(0, n_labels, n)
    probe = DirectProbe().fit(X, y)
    expected = reference_directprobe(X, y)
    assert probe.stats_.refused > 0  # not linearly separable
    assert [c.tolist() for c in probe.clusters_] == [c.tolist() for c in expected]


def test_fit_equals_the_plain_definition_with_a_large_label():
    """More than 64 clusters of one label: the merge order compacts its tables on the way."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(90, 2))
    y = (X[:, 0] * X[:, 1] > 0.3).astype(int)  # label 0 has about 70 points
    assert (y == 0).sum() > 64
    probe = DirectProbe().fit(X, y)
    expected = reference_directprobe(X, y)
    assert [c.tolist() for c in probe.clusters_] == [c.tolist() for c in expected]


@pytest.mark.parametrize("seed", range(4))
def test_refusing_a_merge_at_once_changes_nothing(seed, monkeypatch):
    """A merge refused by a known witness before any plan is made: the same clusters and the
    same counts as planning it (a plan that starts with it stops there), and it does happen."""
    rng = np.random.default_rng(40 + seed)
    X = rng.normal(size=(150, 3))
    y = rng.integers(0, 3, 150)
    at_once = directprobe._Fit.refused_at_once
    fired = []

    def counted(fit):
        fired.append(at_once(fit))
        return fired[-1]

    monkeypatch.setattr(directprobe._Fit, "refused_at_once", counted)
    fast = DirectProbe().fit(X, y)
    assert any(fired)
    monkeypatch.setattr(directprobe._Fit, "refused_at_once", lambda fit: False)
    planned = DirectProbe().fit(X, y)
    assert [c.tolist() for c in fast.clusters_] == [c.tolist() for c in planned.clusters_]
    assert vars(fast.stats_) == vars(planned.stats_)
    assert [c.tolist() for c in fast.clusters_] == [c.tolist() for c in reference_directprobe(X, y)]


def test_fit_is_exact_on_a_larger_random_set():
    """Every final pair of clusters of different labels is separable (checked by the LP alone)."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 5))
    y = (np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] > 0).astype(int) + (X[:, 3] > 1)
    probe = DirectProbe().fit(X, y)
    assert probe.stats_.refused > 0 and probe.n_clusters_ > 3
    for i, ci in enumerate(probe.clusters_):
        for j, cj in enumerate(probe.clusters_):
            if probe.cluster_labels_[i] < probe.cluster_labels_[j]:
                assert _lp_separable(X[ci], X[cj])


def _lp_separable(P: np.ndarray, Q: np.ndarray) -> bool:
    """The HiGHS LP decision alone (no active-set method)."""
    c, s = hulls._frame(P, Q)
    return hulls._separate_lp((P - c) / s, (Q - c) / s, c, s, None).separable


@pytest.mark.parametrize("seed", range(40))
def test_separate_agrees_with_the_lp_and_its_witness_is_small_and_overlapping(seed):
    rng = np.random.default_rng(100 + seed)
    d, n, m = int(rng.integers(1, 9)), int(rng.integers(1, 30)), int(rng.integers(1, 30))
    P = rng.normal(size=(n, d))
    Q = rng.normal(size=(m, d)) + rng.uniform(0, 3) * rng.normal(size=d)
    if seed % 4 == 1:  # duplicates and ties
        P, Q = np.round(P), np.round(Q)
    if seed % 4 == 2 and d > 2:  # both sets in one plane
        B = rng.normal(size=(2, d))
        P, Q = rng.normal(size=(n, 2)) @ B, (rng.normal(size=(m, 2)) + 1) @ B
    result = separate(P, Q, margin=[0.0, 0.5, 1.0][seed % 3])
    assert result.separable == _lp_separable(P, Q)
    if result.separable:
        assert (P @ result.w - result.t).min() > 0 > (Q @ result.w - result.t).max()
    else:
        ip, iq = result.witness
        assert len(ip) + len(iq) <= d + 2
        assert not _lp_separable(P[ip], Q[iq])


@pytest.mark.parametrize("seed", range(12))
def test_partial_pricing_keeps_every_decision_and_distance_exact(seed, monkeypatch):
    """Large sides are priced in full only every few cycles (a working set between): with a
    working set of 3 rows per side, decisions still agree with the LP, distances with the QP,
    and the fit with the plain definition; the partial cycles do happen."""
    monkeypatch.setattr(hulls, "_WORK", 3)
    steps, partial = hulls._steps, {"cycles": 0}

    def counted(corral):
        for x, lo, hi in steps(corral):
            partial["cycles"] += lo is None
            yield x, lo, hi

    monkeypatch.setattr(hulls, "_steps", counted)
    rng = np.random.default_rng(300 + seed)
    d, n, m = int(rng.integers(2, 9)), int(rng.integers(10, 60)), int(rng.integers(10, 60))
    P = rng.normal(size=(n, d))
    Q = rng.normal(size=(m, d)) + rng.uniform(0, 4) * rng.normal(size=d)
    result = separate(P, Q, margin=[0.0, 0.5, 1.0][seed % 3])
    assert result.separable == _lp_separable(P, Q)
    if result.separable:
        assert (P @ result.w - result.t).min() > 0 > (Q @ result.w - result.t).max()
        c, s = hulls._frame(P, Q)
        want = s * hulls._hull_distance_qp((P - c) / s, (Q - c) / s, 1e-10)
        np.testing.assert_allclose(hull_distance(P, Q), want, rtol=1e-6)
    else:
        assert not _lp_separable(P[result.witness[0]], Q[result.witness[1]])
    X = rng.normal(size=(50, 3))
    y = rng.integers(0, 3, 50)
    got = DirectProbe().fit(X, y)
    assert [c.tolist() for c in got.clusters_] == [c.tolist() for c in reference_directprobe(X, y)]
    assert partial["cycles"] > 0


def test_separate_restarts_from_a_basis_to_the_same_decision():
    """A basis from one search (same frame) restarts another on grown or shrunk sets."""
    rng = np.random.default_rng(7)
    frame = (np.zeros(6), 1.0)
    for _ in range(20):
        P, Q = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) + rng.uniform(0, 4)
        first = separate(P[:30], Q[:30], frame=frame)
        basis = first.basis
        keep = rng.random(len(basis.rows)) < 0.8  # some rows gone
        rows = np.where(keep, basis.rows, -1)
        again = separate(
            P, Q, frame=frame, basis=hulls.Basis(basis.side, rows, basis.Q, basis.R, basis.beta)
        )
        assert again.separable == _lp_separable(P, Q)
        if again.separable:
            assert (P @ again.w - again.t).min() > 0 > (Q @ again.w - again.t).max()


def test_point_hull_distances_match_the_qp():
    rng = np.random.default_rng(3)
    for d in (2, 5, 12):
        P = rng.normal(size=(30, d))
        X = np.vstack([rng.normal(size=(8, d)) * 3, P[:3].mean(0, keepdims=True)])  # one inside
        got = hulls.point_hull_distances(X, P)
        c, s = hulls._frame(P, P)
        want = [s * hulls._hull_distance_qp((P - c) / s, ((x - c) / s)[None], 1e-10) for x in X]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
        assert got[-1] == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_pruned_prediction_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    d = 3 + seed
    sets = [rng.normal(size=(int(rng.integers(3, 40)), d)) + rng.normal(size=d) for _ in range(6)]
    X = rng.normal(size=(60, d)) * 1.5
    brute = np.stack([hulls.point_hull_distances(X, P) for P in sets], 1).argmin(1)
    assert (hulls.nearest_hulls(X, sets) == brute).all()
    # ties go to the lowest index, as argmin does
    assert (hulls.nearest_hulls(X, [sets[0], sets[0].copy()]) == 0).all()


@pytest.mark.parametrize("seed", range(3))
def test_point_bounds_bracket_the_distance(seed):
    """The lean point-to-hull solver's bounds hold (the QP's distance between them), meet at the
    optimum, and stop early once the lower bound passes `stop`; a point inside gets 0."""
    rng = np.random.default_rng(seed)
    d, m = 30, 20 + 10 * seed  # high dimension, a simplex-like hull as in [CLS] space
    P = rng.normal(size=(m, d))
    c, s, zp = hulls._own_frame(P)
    for x in rng.normal(size=(5, d)) * 2:
        zx = (x - c) / s
        exact = hulls._hull_distance_qp(zp, zx[None], 1e-10)
        up, low = hulls._point_bounds(zp, zx, np.inf)
        assert low - 1e-9 <= exact <= up + 1e-9
        assert up - low < 1e-6
        up, low = hulls._point_bounds(zp, zx, 0.5 * exact)  # stops once ruled out
        assert low - 1e-9 <= exact <= up + 1e-9 and low > 0.5 * exact
    inside = rng.dirichlet(np.ones(m)) @ zp
    assert hulls._point_bounds(zp, inside, np.inf) == (0.0, 0.0)


def test_point_bounds_in_lock_step_equal_one_at_a_time():
    """Solving many points against one hull together (one matrix product per cycle) gives each
    point the bounds it gets alone, with its own stop; tightening rows together equals tightening
    each row alone."""
    rng = np.random.default_rng(3)
    d = 25
    P = rng.normal(size=(40, d))
    c, s, zp = hulls._own_frame(P)
    ZX = (rng.normal(size=(30, d)) * 2 - c) / s
    ZX[3] = rng.dirichlet(np.ones(len(zp))) @ zp  # one point inside
    stops = np.where(np.arange(30) % 3 == 0, 0.1, np.inf)
    up, low = hulls._points_bounds(zp, np.einsum("ij,ij->i", zp, zp), ZX, stops)
    alone = np.array([hulls._point_bounds(zp, z, t) for z, t in zip(ZX, stops, strict=True)])
    np.testing.assert_allclose(np.c_[up, low], alone, rtol=1e-9, atol=1e-12)
    assert up[3] == low[3] == 0.0
    sets = [rng.normal(size=(int(rng.integers(5, 30)), d)) + rng.normal(size=d) for _ in range(5)]
    frames = [hulls._own_frame(Q) for Q in sets]
    X = rng.normal(size=(20, d))
    upper, lower = hulls._first_bounds(X, sets, frames, hulls._unit_rows(None, d))
    together = upper.copy(), lower.copy()
    hulls._tighten(X, frames, *together, 0.0)
    for i in range(len(X)):
        u, lo = upper[i : i + 1].copy(), lower[i : i + 1].copy()
        hulls._tighten(X[i : i + 1], frames, u, lo, 0.0)
        np.testing.assert_allclose(
            np.r_[u[0], lo[0]], np.r_[together[0][i], together[1][i]], rtol=1e-9
        )


def test_first_bounds_hold_and_directions_make_them_tight():
    """In the plane, 720 directions bound a far hull's distance to within 0.01 %; no bound may
    cross the exact distance."""
    rng = np.random.default_rng(7)
    sets = [rng.normal(size=(12, 2)) + off for off in ([0, 0], [6, 0], [0, 6])]
    X = rng.normal(size=(30, 2)) * 4 + 12
    angles = np.linspace(0, np.pi, 720, endpoint=False)
    W = np.stack([np.cos(angles), np.sin(angles)], 1) * 3.0  # any length: made unit
    exact = np.stack([hulls.point_hull_distances(X, P) for P in sets], 1)
    frames = [hulls._own_frame(P) for P in sets]
    upper, lower = hulls._first_bounds(X, sets, frames, hulls._unit_rows(W, 2))
    assert (lower <= exact + 1e-9).all() and (exact <= upper + 1e-9).all()
    np.testing.assert_allclose(lower, exact, rtol=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_prediction_with_directions_equals_brute_force_in_high_dimension(seed):
    """Many more dimensions than points per hull (the [CLS] regime): every row needs the refined
    bounds, and extra directions (any unit vectors bound a hull) change no answer."""
    rng = np.random.default_rng(10 + seed)
    d = 40
    sets = [
        rng.normal(size=(int(rng.integers(5, 30)), d)) + rng.normal(size=d) * 0.3 for _ in range(5)
    ]
    X = rng.normal(size=(40, d))
    brute = np.stack([hulls.point_hull_distances(X, P) for P in sets], 1).argmin(1)
    assert (hulls.nearest_hulls(X, sets) == brute).all()
    W = rng.normal(size=(50, d))
    assert (hulls.nearest_hulls(X, sets, directions=W) == brute).all()
    # every bound the prediction decides with holds
    exact = np.stack([hulls.point_hull_distances(X, P) for P in sets], 1)
    frames = [hulls._own_frame(P) for P in sets]
    upper, lower = hulls._first_bounds(X, sets, frames, hulls._unit_rows(W, d))
    assert (lower <= exact + 1e-9).all() and (exact <= upper + 1e-9).all()
    hulls._tighten(X, frames, upper, lower, 0.0)
    assert (lower <= exact + 1e-9).all() and (exact <= upper + 1e-9).all()
    best = exact.argmin(1)
    np.testing.assert_allclose(lower[np.arange(len(X)), best], exact.min(1), rtol=1e-6)


def test_predict_is_the_argmin_of_transform():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(120, 4))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    probe = DirectProbe().fit(X, y)
    query = rng.normal(size=(40, 4)) * 1.5
    D = probe.transform(query)
    assert D.shape == (40, probe.n_clusters_)
    assert (probe.predict(query) == probe.labels_[probe.cluster_labels_[D.argmin(1)]]).all()


def test_plan_witness_activation():
    """A witness applies from the first state in which each of its sides lies in one cluster."""
    plan = directprobe._Plan([(0, 1, 2), (1, 4, 5), (0, 1, 3), (1, 4, 6)])
    assert plan.joined(np.array([1])) == 0
    assert plan.joined(np.array([1, 2])) == 1
    assert plan.joined(np.array([2, 3])) == 3
    assert plan.joined(np.array([5, 6])) == 4
    assert plan.joined(np.array([1, 7])) == np.inf
    assert plan.rep(8, 3).tolist() == [0, 1, 1, 1, 4, 4, 6, 7]


@pytest.mark.parametrize("seed", range(6))
def test_witness_activations_at_once_equal_one_at_a_time(seed):
    """_Witnesses.activations (all witnesses in a few array operations) gives, for every witness,
    what _Fit.activation gives for it alone, on random committed clusterings and plans."""
    from types import SimpleNamespace

    rng = np.random.default_rng(seed)
    n = 60
    root = np.arange(n)
    for b in rng.permutation(n)[:30]:  # committed merges: point b's cluster joins another one
        a = int(rng.integers(n))
        if root[a] != root[b]:
            root[root == root[b]] = root[a]
    slots = np.unique(root)
    steps, alive = [], list(slots)
    for _ in range(int(rng.integers(1, 12))):
        a, b = sorted(rng.choice(len(alive), 2, replace=False))
        steps.append((0, int(alive[a]), int(alive[b])))
        alive.pop(b)
    plan = directprobe._Plan(steps)
    store, fit = directprobe._Witnesses(), SimpleNamespace(root=root)
    for _ in range(40):
        _, a, b = steps[int(rng.integers(len(steps)))]
        near = np.flatnonzero(np.isin(root, [a, b]))  # points of one planned merge
        pick = [near if rng.random() < 0.7 else np.arange(n) for _ in (0, 1)]
        sizes = [int(rng.integers(1, 5)), int(rng.integers(0, 5))]
        store.add(
            tuple(
                rng.choice(p, min(k, len(p)), replace=False)
                for p, k in zip(pick, sizes, strict=True)
            )
        )
    expected = [directprobe._Fit.activation(fit, plan, w) for w in store]
    assert store.activations(root, plan) == expected
    assert any(0 < a < np.inf for a in expected) and np.inf in expected
    assert store.refuse(root, *steps[0][1:])  # a witness in one cluster per side refuses all
    spread = directprobe._Witnesses()  # as in a fit: no witness applies to the committed state
    for w, a in zip(store, expected, strict=True):
        if a > 0:
            spread.add(w)
    refused = []  # a merge alone: refused exactly when some witness applies after one step
    for step in steps + [(0, int(a), int(b)) for a, b in rng.choice(slots, (20, 2))]:
        one = directprobe._Plan([step])
        want = min(directprobe._Fit.activation(fit, one, w) for w in spread) <= 1
        refused.append(spread.refuse(root, step[1], step[2]))
        assert refused[-1] == want
    assert any(refused) and not all(refused)


def _lp(P: np.ndarray, Q: np.ndarray) -> hulls.Separation:
    c, s = hulls._frame(P, Q)
    return hulls._separate_lp((P - c) / s, (Q - c) / s, c, s, None)


def test_lp_calls_hulls_within_solver_tolerance_touching():
    """Two segments a gap g apart: the LP proves a clear gap, and calls a gap below HiGHS's
    tolerance touching (not separable, flagged), like an exact contact."""
    P = np.array([[0.0, 0.0], [0.0, 1.0]])
    for gap, separable, touching in ((1e-2, True, False), (1e-7, False, True), (0.0, False, False)):
        out = _lp(P, P + [gap, 0.0])
        assert (out.separable, out.touching, out.undecided) == (separable, touching, False), gap
    assert not _lp(P, np.array([[-0.5, 0.5], [0.5, 0.5]])).separable  # crossing


def _words_at_positions(noise: float, seed: int, d: int = 384) -> tuple[np.ndarray, np.ndarray]:
    """Word vectors plus position vectors, as in a transformer's embedding layer: 450 distinct
    (word, position) pairs of 40 words and 30 positions, split 300 / 150, with a little noise.
    Sums such as (w1 + e1) + (w2 + e2) = (w1 + e2) + (w2 + e1) make the two hulls meet up to
    the noise: a contact that Wolfe's method approaches but rounding keeps it from reaching."""
    rng = np.random.default_rng(seed)
    words, positions = rng.normal(size=(40, d)), 0.05 * rng.normal(size=(30, d))
    pairs = rng.permutation(40 * 30)[:450]
    X = words[pairs // 30] + positions[pairs % 30] + noise * rng.normal(size=(450, d))
    return X[:300], X[300:]


def _l1_distance(A: np.ndarray, B: np.ndarray) -> float:
    """min ||A'lam - B'mu||_1 over convex weights, by its own LP (scipy's linprog)."""
    from scipy.optimize import linprog

    a, b, d = len(A), len(B), A.shape[1]
    M = np.c_[A.T, -B.T]
    A_ub = np.block([[M, -np.eye(d)], [-M, -np.eye(d)]])
    A_eq = np.zeros((2, a + b + d))
    A_eq[0, :a], A_eq[1, a : a + b] = 1.0, 1.0
    cost = np.r_[np.zeros(a + b), np.ones(d)]
    out = linprog(cost, A_ub=A_ub, b_ub=np.zeros(2 * d), A_eq=A_eq, b_eq=[1.0, 1.0])
    assert out.status == 0
    return float(out.fun)


@pytest.mark.parametrize("seed", [1, 2])
def test_hulls_in_contact_are_touching_without_the_lp(seed, monkeypatch):
    """Hulls that meet up to 1e-7 noise: Wolfe's method stalls on rounding at an iterate x (a
    point of hull(P) - hull(Q)) with ||x||_1 below twice the LP tolerance, so the LP's margin is
    below it too and the pair is touching, decided there (no HiGHS fallback), with a witness
    whose hulls meet (own LP)."""
    P, Q = _words_at_positions(1e-7, seed)

    def no_lp(*args, **kwargs):
        raise AssertionError("the LP fallback ran")

    monkeypatch.setattr(hulls, "_separate_lp", no_lp)
    out = separate(P, Q)
    assert not out.separable and out.touching and not out.undecided
    c, s = hulls._frame(P, Q)
    wp, wq = out.witness
    assert 0 < len(wp) + len(wq) <= P.shape[1] + 2
    assert _l1_distance((P[wp] - c) / s, (Q[wq] - c) / s) <= 2 * hulls._LP_TOL


def test_wolfe_stops_a_rounding_loop_after_its_patience(monkeypatch):
    """A rounding loop (each row added is dropped again at once, so ||x|| stays) ends as a
    stall after _PATIENCE cycles without a new minimum, not after 20 (d + 2) cycles."""
    rng = np.random.default_rng(0)
    P, Q = rng.normal(size=(200, 20)), rng.normal(size=(200, 20)) + 0.1
    settle = hulls._Corral.settle
    state = {"cycles": 0, "kept": 0}

    def settle_and_undo(corral):  # the loop: the new rows go again and x is what it was
        state["cycles"] += 1
        if state["cycles"] > 3:
            corral.drop(np.arange(state["kept"], len(corral.rows)))
        settle(corral)
        state["kept"] = len(corral.rows)

    monkeypatch.setattr(hulls._Corral, "settle", settle_and_undo)
    corral = hulls._corral(P, Q, None, None)
    state["cycles"] = 0
    with pytest.raises(hulls._Stall):
        for _ in hulls._steps(corral):
            pass
    assert hulls._PATIENCE <= state["cycles"] <= hulls._PATIENCE + 4


def test_flat_sets_a_hair_apart_are_separable():
    """Sets on one hyperplane, the second shifted off it by a gap far below the LP tolerance:
    strictly separable (the touching rule applies only to a search that has stalled)."""
    for seed in (1, 2):
        P, Q = _words_at_positions(0.0, seed, d=64)
        u = np.random.default_rng(seed).normal(size=64)
        u /= np.linalg.norm(u)
        P, Q = P - np.outer(P @ u, u), Q - np.outer(Q @ u, u)
        for gap in (1e-5, 3e-7):
            out = separate(P, Q + gap * u)
            assert out.separable and not out.touching, (seed, gap)
            assert (P @ out.w - out.t).min() > 0 > ((Q + gap * u) @ out.w - out.t).max()


def test_time_limit_makes_a_pair_undecided_and_directprobe_counts_it(monkeypatch):
    """A HiGHS time limit never hangs the fit and never passes silently: separate() says
    undecided (treated as meeting), and DirectProbe refuses those merges and counts them."""
    rng = np.random.default_rng(3)
    P, Q = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) + 0.5

    def stall(*args, **kwargs):
        raise hulls._Stall()

    monkeypatch.setattr(hulls, "_nearest", stall)  # force the LP path
    assert separate(P, Q).separable == _lp(P, Q).separable  # the LP path alone decides exactly
    monkeypatch.setattr(hulls, "_TIME_LIMIT", 1e-9)
    out = separate(P, Q)
    assert out.undecided and not out.separable and len(out.witness[0]) and len(out.witness[1])

    X = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.4]])
    y = np.array(["a", "a", "b", "b", "b"])
    undecided = hulls.Separation(False, witness=(np.arange(1), np.arange(1)), undecided=True)
    monkeypatch.setattr(directprobe, "separate", lambda P, Q, *a, **k: undecided)
    probe = DirectProbe().fit(X, y)
    assert probe.stats_.undecided >= 1 and probe.stats_.undecided == probe.stats_.lp_calls
    assert probe.n_clusters_ > 2


# ---------------------------------------------------------------- maximality (independent check)


def _hulls_meet(P: np.ndarray, Q: np.ndarray) -> bool:
    """Do hull(P) and hull(Q) share a point? Feasibility of P'lam = Q'mu with lam, mu >= 0 each
    summing to 1, by scipy's linprog (independent of isoprobe's own LP and active-set code)."""
    from scipy.optimize import linprog

    n, m = len(P), len(Q)
    A_eq = np.vstack(
        [
            np.hstack([P.T, -Q.T]),
            np.r_[np.ones(n), np.zeros(m)][None],
            np.r_[np.zeros(n), np.ones(m)][None],
        ]
    )
    b_eq = np.r_[np.zeros(P.shape[1]), 1.0, 1.0]
    res = linprog(np.zeros(n + m), A_eq=A_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    assert res.status in (0, 2), res.message  # 0: a common point, 2: infeasible (disjoint)
    return res.status == 0


@pytest.mark.parametrize("seed", range(3))
def test_final_clustering_is_separable_and_maximal(seed):
    """The definition's end state, checked by brute force on a non-separable set: the clusters
    partition the rows, each has one label, every two clusters of different labels have disjoint
    hulls, and no two clusters of one label can merge without their merged hull meeting the hull
    of a cluster of another label."""
    rng = np.random.default_rng(20 + seed)
    X = rng.normal(size=(70, 3))
    y = ((X[:, 0] * X[:, 1] > 0).astype(int) + (X[:, 2] > 0.8)) % 3
    probe = DirectProbe().fit(X, y)
    clusters, labels = probe.clusters_, probe.cluster_labels_
    assert probe.stats_.refused > 0 and probe.n_clusters_ > len(np.unique(y))  # not separable
    assert sorted(np.concatenate(clusters).tolist()) == list(range(len(X)))
    codes = np.unique(y, return_inverse=True)[1]
    assert all((codes[c] == lab).all() for c, lab in zip(clusters, labels, strict=True))
    k = len(clusters)
    for i in range(k):
        for j in range(i + 1, k):
            if labels[i] != labels[j]:
                assert not _hulls_meet(X[clusters[i]], X[clusters[j]]), (i, j)
            else:
                merged = X[np.r_[clusters[i], clusters[j]]]
                others = [c for c, lab in zip(clusters, labels, strict=True) if lab != labels[i]]
                assert any(_hulls_meet(merged, X[c]) for c in others), f"{i} and {j} could merge"


def test_maximality_check_catches_an_unfinished_clustering():
    """The brute-force check itself: splitting a final cluster in two leaves a mergeable pair."""
    X = np.vstack([SQUARE, SQUARE + [3.0, 0.0]])
    y = np.repeat([0, 1], 4)
    parts = [X[:2], X[2:4]]  # label 0 split in two
    assert not _hulls_meet(np.vstack(parts), X[4:])  # so they could merge: not maximal
    assert _hulls_meet(X[[0, 3]], X[[1, 2]])  # the square's diagonals cross
    assert DirectProbe().fit(X, y).n_clusters_ == 2
