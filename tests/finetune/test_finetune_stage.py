"""The finetune and embed_post stages' work in-process (`finetune.run`, `finetune.embed_post`), no DVC
and no subprocess: the files each writes and their JSON key order, the skipped outputs of a diverged
run, and validation before any output is written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_checkpoint import make_project

from isoprobe.core import layout
from isoprobe.core.config import load_params
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.io import read_json, write_json
from isoprobe.embed.extract import load_embeddings
from isoprobe.finetune.embed_post import run_embed_post
from isoprobe.finetune.run import run_finetune

METRICS_KEYS = [
    "task", "method", "seed", "status", "diverged_at_step", "metric", "best_epoch", "dev", "test",
    "dev_by_epoch", "grad", "steps", "train_examples_seen", "seconds", "eval_seconds",
    "examples_per_second", "device", "threads", "processes", "mlflow_run_id",
]  # fmt: skip
ENCODER = layout.finetuned_encoder("isobn", 0)


@pytest.fixture
def project(tiny_bert, tmp_path, monkeypatch):
    """The params of a small project (one epoch of 6 steps, tracking off), as the working folder."""
    base = make_project(tmp_path / "p", tiny_bert)
    params = yaml.safe_load((base / "params.yaml").read_text())
    params["tracking"] = {"enabled": False}
    params["embed"].update(device="cpu", num_threads=1)
    params["finetune"]["train"]["epochs"] = 1
    (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(base)
    return load_params(base / "params.yaml")


def test_finetune_then_embed_post_write_every_output(project, capsys):
    result = run_finetune(project, "tweets", "isobn", 0, progress=False)
    assert result.status == "ok" and result.best_epoch == 1 and len(result.steps) == 6
    metrics = read_json(layout.finetune_metrics_file("tweets", "isobn", 0))
    assert list(metrics) == METRICS_KEYS
    assert metrics["test"] == result.test and metrics["mlflow_run_id"] is None
    rows = list(csv.DictReader(layout.finetune_plot_file("tweets", "isobn", 0).open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    folder = layout.model_dir("tweets", "isobn", 0)
    head = json.loads((folder / "head.json").read_text())
    assert head["method"] == "isobn" and head["best_epoch"] == 1 and head["pooling"] == "cls"
    assert "finetune tweets/isobn-s0: ok, best epoch 1, test: accuracy" in capsys.readouterr().out

    report = run_embed_post(project, "tweets", "isobn", 0, progress=False)
    assert read_json(layout.isotropy_metrics_file("tweets", ENCODER)) == report
    assert list(report)[:7] == ["task", "encoder", "method", "seed", "model", "split", "layer"]
    assert list(report)[-2:] == ["layers", "head_input"] and report["head_input"]["isoscore"] > 0
    emb = layout.embeddings_dir("tweets", ENCODER)
    assert sorted(p.name for p in emb.iterdir()) == [
        "dev.safetensors", "info.json", "test.safetensors", "train.safetensors",
    ]  # fmt: skip
    info = read_json(emb / "info.json")
    assert list(info) == ["model", "task", "encoder", "pooling", "splits"]
    assert info["model"] == str(folder) and list(info["splits"]) == list(layout.SPLITS)
    head_input = load_embeddings(emb / "train.safetensors", "head_input")
    assert head_input.shape == (96, 32) and np.isfinite(head_input).all()
    by_layer = list(csv.DictReader(layout.isotropy_plots_dir("tweets", ENCODER).with_name(
        "finetuned_isobn_0_by_layer.csv").open()))  # fmt: skip
    assert [int(r["layer"]) for r in by_layer] == [0, 1, 2]
    assert "embed_post tweets/isobn-s0: [CLS] layer 2 isoscore" in capsys.readouterr().out


def test_embed_post_of_a_diverged_run_writes_skipped_outputs(project, capsys):
    folder = layout.model_dir("tweets", "isobn", 0)
    write_json(folder / "status.json", {"status": "diverged", "diverged_at_step": 3})
    report = run_embed_post(project, "tweets", "isobn", 0, progress=False)
    context = [
        ("status", "skipped"), ("reason", "fine-tuning diverged at step 3"),
        ("stage", "embed_post"), ("task", "tweets"), ("encoder", ENCODER), ("method", "isobn"),
        ("seed", 0),
    ]  # fmt: skip
    expected = [*context, ("model", project.model.name), ("split", "train")]
    assert list(read_json(layout.isotropy_metrics_file("tweets", ENCODER)).items()) == expected
    assert list(report.items()) == expected
    info = read_json(layout.embeddings_dir("tweets", ENCODER) / "info.json")
    assert list(info.items()) == [*context, ("model", str(folder))]
    assert sorted(p.name for p in layout.embeddings_dir("tweets", ENCODER).iterdir()) == [
        "info.json"
    ]
    plot_dir = layout.isotropy_plots_dir("tweets", ENCODER)
    assert plot_dir.with_name(plot_dir.name + "_by_layer.csv").read_text() == "layer,isoscore\n"
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "isoprobe: warning: embed_post tweets/isobn/0 skipped: fine-tuning diverged at step 3\n"
    )


def test_an_instance_outside_the_grid_fails_before_writing(project):
    with pytest.raises(IsoprobeError, match=r"\(tweets, isobn, 7\) is not in"):
        run_embed_post(project, "tweets", "isobn", 7)
    with pytest.raises(IsoprobeError, match=r"\(tweets, nope, 0\) is not in"):
        run_finetune(project, "tweets", "nope", 0)
    assert not [p for p in ("models", "metrics", "plots", "data/embeddings") if Path(p).exists()]
    assert [p.name for p in Path("checkpoints").iterdir()] == [".gitignore"]
