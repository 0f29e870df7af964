"""LinearProbe and MLPProbe on synthetic tasks with known answers: separable blobs, XOR (which no
linear probe can learn), dev-based selection, determinism, label handling, degenerate inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isoprobe.probing.classifiers import LinearProbe, MLPProbe, encode_labels


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny fits on a shared machine: with more threads each small op can wait for a descheduled
    thread (tens of times slower); the probes themselves use whatever torch is set to."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


FAST_MLP = {"hidden_grid": ((32, 32), (16, 16)), "l2_grid": (1e-4, 1e-2), "epochs": 60}
PROBES = [LinearProbe, lambda **kw: MLPProbe(**{**FAST_MLP, **kw})]
IDS = ["linear", "mlp"]


def blobs(n: int, seed: int, k: int = 3, d: int = 20, spread: float = 4.0):
    """k Gaussian blobs in d dims around fixed well-separated centres."""
    centres = np.random.default_rng(99).normal(size=(k, d)) * spread
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return centres[y] + rng.normal(size=(n, d)), y


def xor(n: int, seed: int, d: int = 20):
    """Label = sign(x0) xor sign(x1) on four clusters at (+-2, +-2), plus d-2 noise dimensions."""
    rng = np.random.default_rng(seed)
    s = rng.choice([-1.0, 1.0], size=(n, 2))
    X = rng.normal(size=(n, d)) * 0.5
    X[:, :2] += 2 * s
    return X, (s[:, 0] != s[:, 1]).astype(int)


@pytest.mark.parametrize("make", [LinearProbe, MLPProbe], ids=IDS)  # default grids
def test_separable_blobs(make):
    X, y = blobs(300, 0)
    Xd, yd = blobs(90, 1)
    Xt, yt = blobs(300, 2)
    probe = make().fit(X, y, Xd, yd)
    assert probe.score(Xt, yt) >= 0.95
    assert list(probe.classes_) == [0, 1, 2]
    proba = probe.predict_proba(Xt)
    assert proba.shape == (300, 3) and np.allclose(proba.sum(1), 1.0)
    assert np.array_equal(probe.classes_[proba.argmax(1)], probe.predict(Xt))


def test_xor_needs_the_mlp():
    X, y = xor(600, 0)
    Xd, yd = xor(200, 1)
    Xt, yt = xor(600, 2)
    linear = LinearProbe().fit(X, y, Xd, yd).score(Xt, yt)
    mlp = MLPProbe().fit(X, y, Xd, yd).score(Xt, yt)
    assert abs(linear - 0.5) < 0.1
    assert mlp >= 0.95


@pytest.mark.parametrize("make", PROBES, ids=IDS)
def test_selection_is_the_best_dev_score(make):
    X, y = blobs(120, 0, spread=0.4)  # overlapping: the configurations score differently on dev
    Xd, yd = blobs(120, 1, spread=0.4)
    probe = make().fit(X, y, Xd, yd)
    scores = [s["dev_accuracy"] for s in probe.dev_scores_]
    assert len(scores) == 4
    assert probe.best_params_ == probe.dev_scores_[int(np.argmax(scores))]["params"]
    # the kept model is the one trained on train: its dev accuracy is the one reported
    assert probe.score(Xd, yd) == pytest.approx(max(scores))
    assert len(set(scores)) > 1, "degenerate check: all configurations tie"


def test_linear_grid_order_and_default():
    X, y = blobs(60, 0)
    probe = LinearProbe(c_grid=(10.0, 0.01, 1.0)).fit(X, y, *blobs(30, 1))
    assert [s["params"]["C"] for s in probe.dev_scores_] == [0.01, 1.0, 10.0]
    # separable: every C is perfect on dev, the tie goes to the strongest regularization
    assert probe.best_params_ == {"C": 0.01}
    probe = LinearProbe().fit(X, y)
    assert probe.best_params_ == {"C": 1.0} and probe.dev_scores_ == []


def test_mlp_batched_grid_matches_training_alone():
    """The stacked networks are independent: the first grid member trains exactly as when fitted
    alone (same seed: same start, same batches), whatever else is in the grid."""
    X, y = blobs(100, 0, spread=0.5)
    Xd, yd = blobs(50, 1, spread=0.5)
    kw = {"epochs": 8, "patience": 100, "seed": 3}
    alone = MLPProbe(hidden_grid=((16, 16),), l2_grid=(0.3,), **kw).fit(X, y, Xd, yd)
    # the others are hopeless (a huge L2, a 1-unit bottleneck): the first member is picked
    grid = MLPProbe(hidden_grid=((16, 16), (1, 1)), l2_grid=(0.3, 30.0), **kw).fit(X, y, Xd, yd)
    assert grid.dev_scores_[0]["curve"] == alone.dev_scores_[0]["curve"]
    assert grid.best_params_ == alone.best_params_ == {"hidden": (16, 16), "l2": 0.3}
    assert np.allclose(grid.predict_proba(X), alone.predict_proba(X), atol=1e-5)


def test_mlp_early_stopping_rule():
    """From the dev curves: each network's kept epoch is its first best one, a stack runs until
    each of its networks has had `patience` epochs without a gain over `tol`, the fit until all do;
    with a larger tol the same curves stop earlier."""
    X, y = blobs(200, 0, spread=0.3)
    Xd, yd = blobs(100, 1, spread=0.3)
    patience, fits = 3, {}
    for tol in (0.0, 0.025):
        probe = MLPProbe(**{**FAST_MLP, "patience": patience, "tol": tol}).fit(X, y, Xd, yd)
        runs = {}
        for s in probe.dev_scores_:
            curve = s["curve"]
            assert s["dev_accuracy"] == max(curve)
            assert s["best_epoch"] == 1 + int(np.argmax(curve))
            mark, mark_epoch = -np.inf, 0
            for epoch, acc in enumerate(curve, 1):
                if acc > mark + tol:
                    mark, mark_epoch = acc, epoch
            stop = min(mark_epoch + patience, probe.epochs)
            runs.setdefault(s["params"]["hidden"], []).append((len(curve), stop))
        for pairs in runs.values():
            assert {n for n, _ in pairs} == {max(stop for _, stop in pairs)}
        assert probe.epochs_run_ == max(n for p in runs.values() for n, _ in p) < probe.epochs
        fits[tol] = probe
    short, long = fits[0.025], fits[0.0]
    assert short.epochs_run_ < long.epochs_run_
    for a, b in zip(short.dev_scores_, long.dev_scores_, strict=True):
        assert a["curve"] == b["curve"][: len(a["curve"])]


def test_mlp_keeps_the_best_epoch():
    """Random labels: dev accuracy wanders, the kept weights are those of the luckiest epoch."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(150, 10)), rng.integers(0, 3, 150)
    Xd, yd = rng.normal(size=(100, 10)), rng.integers(0, 3, 100)
    probe = MLPProbe(hidden_grid=((16, 16),), l2_grid=(1e-4,), epochs=25, patience=25)
    probe.fit(X, y, Xd, yd)
    assert probe.epochs_run_ == 25 and probe.dev_scores_[0]["best_epoch"] < 25
    assert probe.score(Xd, yd) == probe.dev_scores_[0]["dev_accuracy"]


def test_mlp_matches_a_plain_torch_reference():
    """Without dev data: the first grid configuration trained for `epochs` epochs equals a plain
    torch network (nn.Linear layers, Adam with weight decay on the weight matrices only, the mean
    cross-entropy) from the same start, on the same standardized rows in the same batch order."""
    from isoprobe.probing.classifiers import _Stack

    X, y = blobs(50, 0, k=3, d=7, spread=0.5)
    seed, l2, hidden, epochs, bs = 4, 0.3, (8, 6), 3, 16
    probe = MLPProbe(hidden_grid=(hidden,), l2_grid=(l2,), epochs=epochs, batch_size=bs, seed=seed)
    probe.fit(X, y)
    start = _Stack(7, hidden, 3, [l2], torch.Generator().manual_seed(seed)).params
    layers = [torch.nn.Linear(7, 8), torch.nn.Linear(8, 6), torch.nn.Linear(6, 3)]
    with torch.no_grad():
        for layer, w, b in zip(layers, start[::2], start[1::2], strict=True):
            layer.weight.copy_(w.reshape(layer.weight.T.shape).T)
            layer.bias.copy_(b.reshape(-1))
    net = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), layers[2])
    opt = torch.optim.Adam(
        [
            {"params": [m.weight for m in layers], "weight_decay": l2},
            {"params": [m.bias for m in layers], "weight_decay": 0.0},
        ],
        lr=1e-3,
    )
    x = torch.tensor((X - X.mean(0)) / X.std(0), dtype=torch.float32)
    t = torch.tensor(y)
    order = torch.Generator().manual_seed(seed + 1)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), bs):
            idx = perm[i : i + bs]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        ref = torch.softmax(net(x).double(), -1).numpy()
    assert np.allclose(probe.predict_proba(X), ref, atol=1e-5)
    assert not np.allclose(ref, ref.mean(0), atol=1e-3), "degenerate check: constant output"


@pytest.mark.parametrize("make", PROBES, ids=IDS)
def test_standardized_features(make):
    """Rescaling and shifting columns (scales 1e-3 .. 1e3) changes nothing after standardization."""
    X, y = blobs(150, 0, spread=1.0)
    Xd, yd = blobs(60, 1, spread=1.0)
    rng = np.random.default_rng(1)
    scale, shift = 10.0 ** rng.uniform(-3, 3, X.shape[1]), rng.normal(size=X.shape[1]) * 1e3
    a = make().fit(X, y, Xd, yd)
    b = make().fit(X * scale + shift, y, Xd * scale + shift, yd)
    assert a.best_params_ == b.best_params_
    assert np.allclose(a.predict_proba(Xd), b.predict_proba(Xd * scale + shift), atol=1e-3)


@pytest.mark.parametrize("make", PROBES, ids=IDS)
def test_deterministic_for_a_seed(make):
    X, y = xor(200, 0)
    Xd, yd = xor(100, 1)
    state = torch.random.get_rng_state()
    a = make(seed=5).fit(X, y, Xd, yd).predict_proba(Xd)
    b = make(seed=5).fit(X, y, Xd, yd).predict_proba(Xd)
    assert np.array_equal(a, b)
    assert torch.equal(state, torch.random.get_rng_state()), "the global torch RNG was used"


def test_mlp_leaves_the_thread_count_alone():
    X, y = blobs(30, 0)
    torch.set_num_threads(2)
    MLPProbe(epochs=2).fit(X, y, X, y)
    assert torch.get_num_threads() == 2


def test_mlp_seed_matters():
    X, y = xor(200, 0)
    Xd, yd = xor(100, 1)
    a = MLPProbe(**FAST_MLP, seed=0).fit(X, y, Xd, yd).predict_proba(Xd)
    b = MLPProbe(**FAST_MLP, seed=1).fit(X, y, Xd, yd).predict_proba(Xd)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("make", PROBES, ids=IDS)
def test_string_labels_and_unseen_labels(make):
    X, y = blobs(150, 0)
    names = np.array(["neg", "neu", "pos"])
    Xd, yd = blobs(60, 1)
    yd = names[yd].astype(object)
    yd[:12] = "other"  # a dev label never seen in training: 12 sure errors
    probe = make().fit(X, names[y], Xd, yd)
    assert list(probe.classes_) == ["neg", "neu", "pos"]
    Xt, yt = blobs(60, 2)
    assert probe.score(Xt, names[yt]) >= 0.95
    assert set(probe.predict(Xt)) <= set(names)
    assert max(s["dev_accuracy"] for s in probe.dev_scores_) == pytest.approx(48 / 60)
    # integer labels are a different set: none is among the string classes
    assert probe.score(Xt, yt) == 0.0
    # a test label never seen in training counts as an error
    yt_new = names[yt].astype(object)
    yt_new[:30] = "other"
    assert probe.score(Xt, yt_new) == pytest.approx(probe.score(Xt[30:], names[yt[30:]]) / 2)


@pytest.mark.parametrize("make", PROBES, ids=IDS)
def test_single_class_is_an_error(make):
    X = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(ValueError, match="at least 2 classes"):
        make().fit(X, ["a"] * 10)


@pytest.mark.parametrize("make", PROBES, ids=IDS)
def test_constant_dimensions(make):
    X, y = blobs(150, 0)
    X[:, 3] = 7.25
    X[:, 5] = 0.0
    probe = make().fit(X, y, *blobs(60, 1))
    Xt, yt = blobs(60, 2)
    Xt[:, 3] = 7.25
    proba = probe.predict_proba(Xt)
    assert np.isfinite(proba).all()
    assert probe.score(Xt, yt) >= 0.95


@pytest.mark.parametrize("make", PROBES, ids=IDS)
def test_tiny_inputs(make):
    X = np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9]])
    y = np.array(["x", "y", "x"])
    probe = make().fit(X, y, X[:2], y[:2])
    assert probe.predict(X).shape == (3,)
    assert make().fit(X[:2], y[:2]).predict(X[:1]).shape == (1,)


def test_bad_inputs():
    X, y = blobs(30, 0)
    with pytest.raises(ValueError, match="y must be"):
        LinearProbe().fit(X, y[:-1])
    with pytest.raises(ValueError, match="both"):
        MLPProbe().fit(X, y, X_dev=X)
    with pytest.raises(ValueError, match="X_dev must be"):
        MLPProbe().fit(X, y, X[:, :3], y)
    with pytest.raises(ValueError, match="non-finite"):
        LinearProbe().fit(np.full((4, 2), np.nan), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="batch_size"):
        MLPProbe(batch_size=0).fit(X, y)
    assert MLPProbe(epochs=1).fit(X, y).batch_size_ == 64


def test_encode_labels():
    assert encode_labels(np.array(["a", "b"]), ["b", "c", "a"]).tolist() == [1, -1, 0]
    assert encode_labels(np.array([3, 7]), np.array([7, 3, 5])).tolist() == [1, 0, -1]
