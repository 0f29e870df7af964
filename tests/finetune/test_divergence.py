"""Divergence: an absurd learning rate gives a non-finite loss within a few steps; the run stops,
records `status: diverged` with the step, keeps the gradient-norm trace up to it, writes strict JSON,
a CSV with empty cells for non-finite values, a model folder holding only status.json, an MLflow run
FAILED; the stage exits 0 (a warning) unless finetune.fail_fast is true."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch
from test_checkpoint import CFG, SPLITS, build, finish, make_project, stage
from test_finetune import META

from isoprobe.core.io import json_safe
from isoprobe.core.layout import checkpoint_dir
from isoprobe.finetune.checkpoint import MARKER, Checkpointer
from isoprobe.finetune.loop import finetune, gradient_summary
from isoprobe.finetune.outputs import STEP_COLUMNS, write_steps_csv

# AdamW moves every weight by ~lr per step whatever the gradient: 1e6 overflows the tiny BERT at
# once (step 2 without warm-up, step 3 with it; the first warm-up step has rate 0)
ABSURD = {"lr": 1e6, "grad_clip": None, "warmup_ratio": 0.1}


def strict_json(path: Path) -> dict:
    def no_constant(name: str):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=no_constant)


def test_absurd_learning_rate_stops_the_run_at_the_first_non_finite_step(tiny_bert, tmp_path):
    torch.set_num_threads(1)
    model, tokenizer = build(tiny_bert, "isobn")
    cfg = CFG.model_copy(update=ABSURD)
    ckpt = Checkpointer(tmp_path / "ck", {}, every_steps=1)
    result = finetune(model, tokenizer, SPLITS, META, cfg, seed=0, progress=False, checkpoint=ckpt)
    n = result.diverged_at
    assert result.status == "diverged" and n is not None and 2 <= n <= 4
    assert [s["step"] for s in result.steps] == list(range(1, n + 1))  # the diverged step is kept
    last = result.steps[-1]
    assert not (math.isfinite(last["loss"]) and math.isfinite(last["grad_total"]))
    for s in result.steps[:-1]:
        assert all(math.isfinite(s[k]) for k in STEP_COLUMNS[2:]), s
    assert result.best_epoch is None and result.dev == {} and result.test == {}
    assert result.epochs == [] and result.train_examples == n * 16
    g = gradient_summary(result.steps)  # over the finite steps
    assert all(v is not None and math.isfinite(v) for d in g.values() for v in d.values())
    # the last checkpoint is the step before: a rerun would not start from non-finite weights
    assert json.loads((tmp_path / "ck/checkpoint.json").read_text())["step"] == n - 1
    ckpt.finish("diverged", n)
    assert [p.name for p in (tmp_path / "ck").iterdir()] == [MARKER]


def test_steps_csv_writes_non_finite_values_as_empty_cells(tmp_path):
    """Non-finite values: empty CSV cells (DVC plots skip them), null in the JSON (json_safe)."""
    steps = [
        {"step": 1, "epoch": 1, "loss": 0.5, "lr": 1.0, "grad_cls": 2.0, "grad_head": 3.0,
         "grad_total": 4.0},
        {"step": 2, "epoch": 1, "loss": math.nan, "lr": 1.0, "grad_cls": math.inf,
         "grad_head": 3.0, "grad_total": -math.inf},
    ]  # fmt: skip
    write_steps_csv(tmp_path / "s.csv", steps)
    rows = list(csv.reader((tmp_path / "s.csv").open()))
    assert rows == [list(STEP_COLUMNS), ["1", "1", "0.5", "1", "2", "3", "4"], ["2", "1", "", "1", "", "3", ""]]  # fmt: skip
    assert json_safe({"a": [math.nan, 1.0, {"b": math.inf}], "c": None}) == {
        "a": [None, 1.0, {"b": None}],
        "c": None,
    }


def test_diverged_stage_records_it_and_exits_0(tiny_bert, tmp_path):
    project = make_project(tmp_path / "p", tiny_bert, train=ABSURD)
    code, out, err = finish(stage(project))
    assert code == 0, err
    m = strict_json(project / "metrics/finetune/tweets/isobn/0.json")
    n = m["diverged_at_step"]
    assert m["status"] == "diverged" and isinstance(n, int) and n >= 2
    assert m["best_epoch"] is None and m["dev"] == {} and m["test"] == {} and m["steps"] == n
    assert m["grad"]["grad_total"]["max"] is not None  # the summary of the finite steps
    warnings = [x for x in err.splitlines() if x.startswith("isoprobe: warning:")]
    assert len(warnings) == 1 and f"diverged at step {n}" in warnings[0], err
    assert "isobn-s0: diverged" in out
    # the CSV keeps every step up to and including the diverged one
    rows = list(csv.DictReader((project / "plots/finetune/tweets/isobn/0.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, n + 1))
    assert all(r["loss"] != "" for r in rows[:-1]) and "" in rows[-1].values()
    # the model folder: only status.json (no weights)
    folder = project / "models/tweets/isobn/0"
    assert [p.name for p in folder.iterdir()] == ["status.json"]
    assert strict_json(folder / "status.json") == {
        "status": "diverged", "diverged_at_step": n, "task": "tweets", "method": "isobn", "seed": 0,
    }  # fmt: skip
    marker = strict_json(project / checkpoint_dir("tweets", "isobn", 0) / MARKER)
    assert marker["status"] == "diverged" and marker["step"] == n
    assert [p.name for p in (project / checkpoint_dir("tweets", "isobn", 0)).iterdir()] == [MARKER]
    # the MLflow run: FAILED, tagged, the finite per-step points and the metrics JSON as artifact
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("isoprobe/tweets")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED" and run.info.run_id == m["mlflow_run_id"]
    assert run.data.tags["status"] == "diverged" and run.data.tags["diverged_at_step"] == str(n)
    history = client.get_metric_history(run.info.run_id, "grad_head")
    assert sorted(p.step for p in history)[: n - 1] == list(range(1, n))
    assert all(math.isfinite(p.value) for p in history)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "metrics")] == ["metrics/0.json"]


def test_diverged_stage_with_fail_fast_fails(tiny_bert, tmp_path):
    project = make_project(tmp_path / "p", tiny_bert, train=ABSURD, fail_fast=True)
    code, out, err = finish(stage(project))
    assert code == 2, err
    assert "isoprobe: error:" in err and "finetune.fail_fast" in err and "diverged at step" in err
    m = strict_json(project / "metrics/finetune/tweets/isobn/0.json")  # the evidence is written
    assert m["status"] == "diverged" and m["test"] == {}


def test_absurd_learning_rate_is_valid_params():
    from isoprobe.core.config import TrainConfig

    assert TrainConfig(lr=1e6).lr == 1e6  # no upper bound: a large rate diverges and is recorded
