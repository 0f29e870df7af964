"""The isotropy stage's work in the library (isoprobe.isotropy.run), without DVC or MLflow."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from e2e_repo import small_params
from safetensors import safe_open

from isoprobe.core import layout
from isoprobe.core.config import parse_params
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.io import write_safetensors
from isoprobe.isotropy.metrics import Isotropy
from isoprobe.isotropy.run import run_isotropy

TASK = "tweets"


@pytest.fixture
def params():
    p = small_params()
    p["tracking"] = {"enabled": False}
    return parse_params(p, "params.yaml")


def test_run_isotropy_writes_every_output(tmp_path, monkeypatch, params, capsys):
    monkeypatch.chdir(tmp_path)
    cls = np.random.default_rng(0).normal(size=(3, 30, 12)).astype(np.float32)
    cls[0] = 1.0  # the embedding-layer [CLS]: one vector for every row, spread undefined
    emb = layout.embeddings_dir(TASK) / "train.safetensors"
    write_safetensors(emb, {"cls": cls}, {"max_length": "64", "dtype": "float32"})
    report = run_isotropy(params, TASK)

    path = layout.isotropy_metrics_file(TASK)
    assert json.loads(path.read_text()) == report
    assert list(report)[:5] == ["task", "encoder", "model", "split", "layer"]
    assert list(report)[-2:] == ["layers", "mlflow_run_id"] and report["mlflow_run_id"] is None
    assert report["layer"] == 2 and [r["layer"] for r in report["layers"]] == [0, 1, 2]
    assert report["layers"][0]["std_cv"] is None  # NaN -> null
    expected = Isotropy(params.isotropy.top_k, params.isotropy.corr_threshold).fit(cls[2]).metrics_
    assert {k: report[k] for k in expected} == expected
    with safe_open(str(layout.isotropy_arrays_file(TASK)), framework="numpy") as f:
        assert {k: f.get_tensor(k).shape for k in f.keys()} == {  # noqa: SIM118
            "mean": (3, 12), "std": (3, 12), "eigenvalues": (3, 12),
        }  # fmt: skip
        assert f.metadata() == {"task": TASK, "encoder": "pretrained", "model": params.model.name,
                                "split": "train"}  # fmt: skip
    plots = layout.isotropy_plots_dir(TASK)
    assert sorted(p.name for p in plots.iterdir()) == [
        "abs_mean.png", "by_layer.png", "corr_heatmap.png", "std_hist.png", "std_sorted.png",
    ]  # fmt: skip
    with open(Path(f"{plots}_by_layer.csv"), newline="") as f:
        assert [r[0] for r in csv.reader(f)] == ["layer", "0", "1", "2"]
    assert capsys.readouterr().out.startswith(f"isotropy {TASK}: layer 2: isoscore ")


def test_run_isotropy_fails_before_any_output(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IsoprobeError, match="task 'nope' is not defined under tasks"):
        run_isotropy(params, "nope")
    with pytest.raises(IsoprobeError, match="embedding file not found"):
        run_isotropy(params, TASK)
    assert not any(tmp_path.rglob("*"))


def test_top_k_wider_than_the_vectors_is_refused_before_any_output(tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    cls = np.random.default_rng(0).normal(size=(2, 30, 8)).astype(np.float32)  # top_k has 10
    write_safetensors(layout.embeddings_dir(TASK) / "train.safetensors", {"cls": cls}, {})
    with pytest.raises(IsoprobeError, match=r"isotropy.top_k: \[10\] more than the 8 dimensions"):
        run_isotropy(params, TASK)
    assert not Path("metrics").exists() and not Path("plots").exists()
