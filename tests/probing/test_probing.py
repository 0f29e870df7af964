"""Probing an encoder layer by layer (isoprobe.probing.layers) and the probe stage's files (probe_outputs)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from isoprobe.core.config import ProbeConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.probing.layers import Reference, Split, probe_encoder, resolve_layers, subsample
from isoprobe.probing.outputs import CSV_COLUMNS, probe_split, report, write_outputs

CFG = ProbeConfig(
    tasks=["t"],
    linear={"c_grid": [0.1, 1.0]},
    mlp={"hidden_grid": [[16, 16]], "l2_grid": [1e-4]},
)


def blobs(n: int, rng, centres: np.ndarray) -> Split:
    """3 layers: 0 = the same vector for every row, 1 = noise, 2 = separable label blobs."""
    y = np.arange(n) % len(centres)
    d = centres.shape[1]
    X = np.stack(
        [
            np.ones((n, d)),
            rng.normal(size=(n, d)),
            centres[y] + 0.3 * rng.normal(size=(n, d)),
        ]
    ).astype(np.float32)
    return Split(X, y)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 4
    return {s: blobs(n, rng, centres) for s, n in (("train", 60), ("dev", 30), ("test", 30))}


def untimed(layers: list[dict]) -> list[dict]:
    out = []
    for layer in layers:
        layer = {k: v for k, v in layer.items() if k != "classifier_seconds"}
        if "directprobe" in layer:
            layer["directprobe"] = {k: v for k, v in layer["directprobe"].items() if k != "seconds"}
        out.append(layer)
    return out


def test_resolve_layers_and_subsample():
    assert resolve_layers(None, 4) == [0, 1, 2, 3]
    assert resolve_layers([-1, 0, 3], 4) == [0, 3]
    with pytest.raises(
        IsoprobeError, match=r"probe\.layers: layer 4 is out of range: the encoder has 4"
    ):
        resolve_layers([4], 4)
    assert subsample(5, None, 0).tolist() == [0, 1, 2, 3, 4]
    a, b = subsample(100, 10, 3), subsample(100, 10, 3)
    assert a.tolist() == b.tolist() and len(set(a)) == 10 and (np.diff(a) > 0).all()
    assert subsample(100, 10, 4).tolist() != a.tolist()


def test_layers_with_known_answers(data):
    result = probe_encoder(data, 3, CFG, progress=False)
    const, noise, sep = result.layers
    # layer 0: every row is the same vector: no information, and DirectProbe has nothing it may cluster
    assert const["directprobe"]["train"]["conflicting_rows"] == 60
    assert const["directprobe"]["train"]["clusters"] == 0
    assert const["directprobe"]["test_accuracy"] is None
    assert const["linear"]["test"] == pytest.approx(1 / 3)  # balanced labels: chance
    # layer 2: separable blobs: one cluster per label, perfect probes, distances > 0
    assert sep["linear"]["test"] == 1.0 and sep["mlp"]["test"] >= 0.95
    assert sep["directprobe"]["train"]["clusters"] == 3
    assert sep["directprobe"]["test_accuracy"] == 1.0
    assert sep["directprobe"]["train"]["min_distance"] > 1.0
    assert len(sep["directprobe"]["train"]["min_distance_by_label"]) == 3
    # noise in 8 dims with 60 points: no structure the test split shares
    assert noise["linear"]["test"] < 0.8
    D = result.arrays["distances_train"]
    assert D.shape == (3, 3, 3) and np.isnan(D[0]).all()
    np.testing.assert_allclose(D[2], D[2].T)
    C = result.arrays["centroids"]
    np.testing.assert_allclose(C[2], [data["train"].X[2][data["train"].y == k].mean(0) for k in range(3)], rtol=1e-5)  # fmt: skip
    again = probe_encoder(data, 3, CFG, progress=False)
    assert untimed(result.layers) == untimed(again.layers)  # deterministic
    np.testing.assert_array_equal(result.arrays["distances_test"], again.arrays["distances_test"])


def test_comparison_with_a_reference(data):
    pre = probe_encoder(data, 3, CFG, progress=False)
    ref = Reference(data["train"].X, pre.arrays["centroids"], pre.arrays["distances_train"])
    same = probe_encoder(data, 3, CFG, ref, progress=False).layers[2]
    assert same["cka_to_pretrained"] == pytest.approx(1.0)
    assert same["similarity_to_pretrained"] == pytest.approx(1.0)
    assert same["centroid_movement"] == pytest.approx([0, 0, 0], abs=1e-6)
    # a rotation and a shift keep the geometry (CKA 1, distances the same) but move the centroids
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    moved = {
        s: Split(np.stack([x @ Q + 2.0 for x in d.X]).astype(np.float32), d.y)
        for s, d in data.items()
    }
    rot = probe_encoder(moved, 3, CFG, ref, progress=False).layers[2]
    assert rot["cka_to_pretrained"] == pytest.approx(1.0, abs=1e-5)
    assert rot["similarity_to_pretrained"] == pytest.approx(1.0, abs=1e-4)
    assert min(rot["centroid_movement"]) > 1.0
    assert rot["directprobe"]["train"]["min_distance"] == pytest.approx(
        same["directprobe"]["train"]["min_distance"], rel=1e-4
    )


def test_layers_subset_and_directprobe_off(data):
    cfg = ProbeConfig.model_validate(
        {**CFG.model_dump(), "layers": [-1], "directprobe": {"enabled": False}}
    )
    result = probe_encoder(data, 3, cfg, progress=False)
    assert [r["layer"] for r in result.layers] == [2] and "directprobe" not in result.layers[0]
    assert np.isnan(result.arrays["centroids"][:2]).all()


def test_probe_split_token_task_drops_cut_words():
    words = np.arange(2 * 5 * 2, dtype=np.float32).reshape(2, 5, 2)
    arrays = {"words": words, "word_valid": np.array([1, 1, 0, 1, 1], dtype=np.uint8)}
    rows = [{"tokens": ["a", "b", "c"], "tags": [0, 1, 2]}, {"tokens": ["d", "e"], "tags": [1, 0]}]
    s = probe_split(arrays, rows, "token", "cls")
    assert s.y.tolist() == [0, 1, 1, 0] and s.X.shape == (2, 4, 2)
    np.testing.assert_array_equal(s.X[1, 2], words[1, 3])
    with pytest.raises(Exception, match="rerun embed"):
        probe_split(arrays, rows[:1], "token", "cls")
    sent = probe_split({"cls": np.zeros((2, 3, 4))}, [{"label": 1}] * 3, "sentence", "cls")
    assert sent.X.shape == (2, 3, 4) and sent.y.tolist() == [1, 1, 1]


def test_outputs(data, tmp_path):
    result = probe_encoder(data, 3, CFG, progress=False)
    rep = report(result, {"task": "t", "encoder": "pretrained"})
    assert rep["layer"] == 2 and rep["linear_test"] == result.layers[-1]["linear"]["test"]
    assert rep["clusters"] == 3 and len(rep["layers"]) == 3
    paths = [tmp_path / "m.json", tmp_path / "a.safetensors", tmp_path / "p.csv"]
    write_outputs(result, rep, *paths, {"task": "t"})
    assert json.loads(paths[0].read_text())["clusters"] == 3
    rows = list(csv.DictReader(paths[2].open()))
    assert tuple(rows[0]) == CSV_COLUMNS and [r["layer"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["directprobe_test"] == "" and float(rows[2]["linear_test"]) == 1.0
    from isoprobe.embed.extract import load_embeddings

    assert load_embeddings(paths[1], "distances_train").shape == (3, 3, 3)
