"""The probe stages' work in the library (isoprobe.probing.run), without DVC or MLflow: the pre-trained
probe, a fine-tuned encoder against it, a skipped (diverged) one, the summary, and bad instances
failing before any output."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from e2e_repo import small_params
from safetensors import safe_open

from conftest import REPO
from isoprobe.core import layout
from isoprobe.core.config import parse_params
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.io import write_json, write_jsonl, write_safetensors
from isoprobe.core.skipped import skipped_record
from isoprobe.probing.outputs import CSV_COLUMNS
from isoprobe.probing.run import probe_run_name, run_probe, run_probe_post, run_probe_summary

ROWS = {"train": 24, "dev": 12, "test": 12}
TASK = "tweets"


def make_params(**probe):
    p = small_params()
    p["finetune"].update(tasks=[TASK], methods=["baseline", "isobn"], seeds=[0])
    p["probe"].update({"tasks": [TASK], "token_tasks": [], **probe})
    p["tracking"] = {"enabled": False}
    return parse_params(p, "params.yaml")


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A prepared 2-label task with [CLS] vectors [3, N, 6] (label on dimension 0) of the pre-trained
    encoder and of baseline/0, whose fine-tuning finished; isobn/0 diverged."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    prepared = layout.prepared_dir(TASK)
    meta = {"task": TASK, "kind": "sentence", "label_type": "classification",
            "label_names": ["neg", "pos"]}  # fmt: skip
    write_json(prepared / "meta.json", meta)
    fine = layout.embeddings_dir(TASK, layout.finetuned_encoder("baseline", 0))
    for split, n in ROWS.items():
        y = np.arange(n) % 2
        write_jsonl(prepared / f"{split}.jsonl", [{"text": f"r{i}", "label": int(v)} for i, v in enumerate(y)])  # fmt: skip
        X = rng.normal(size=(3, n, 6)).astype(np.float32)
        X[:, :, 0] += 4 * y
        write_safetensors(layout.embeddings_dir(TASK) / f"{split}.safetensors", {"cls": X})
        write_safetensors(fine / f"{split}.safetensors", {"cls": 1.5 * X + 0.1})
    write_json(fine / "info.json", {"task": TASK})
    write_json(layout.finetune_metrics_file(TASK, "baseline", 0), {"status": "ok", "mlflow_run_id": "ft"})  # fmt: skip
    write_json(layout.finetune_metrics_file(TASK, "isobn", 0), {"status": "diverged", "diverged_at_step": 5})  # fmt: skip
    return tmp_path


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def as_json(obj):
    return json.loads(json.dumps(obj))  # tuples become lists


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_probe_run_name():
    assert probe_run_name("pretrained") == "probe-pretrained"
    assert probe_run_name("isobn/3") == "probe-isobn-s3"
    assert probe_run_name("sst2/isobn/3") == "probe-sst2-isobn-s3"


def test_pretrained_finetuned_skipped_and_summary(project, capsys):
    params = make_params()
    pre = run_probe(params, TASK, progress=False)
    assert json.loads(layout.probe_metrics_file(TASK).read_text()) == as_json(pre)
    assert list(pre)[:9] == ["task", "encoder", "model", "features", "labels", "rows",
                             "words_cut_by_max_length", "seconds", "threads"]  # fmt: skip
    assert list(pre)[-2:] == ["layers", "mlflow_run_id"] and pre["mlflow_run_id"] is None
    assert pre["rows"] == ROWS and pre["linear_test"] >= 0.9 and pre["clusters"] == 2
    assert csv_rows(layout.probe_plot_file(TASK))[0] == list(CSV_COLUMNS)
    with safe_open(str(layout.probe_arrays_file(TASK)), framework="numpy") as f:
        assert set(f.keys()) == {"centroids", "distances_train", "distances_test"}
    assert "probe tweets/pretrained: layer 2: linear " in capsys.readouterr().out

    post = run_probe_post(params, TASK, "baseline", 0, progress=False)
    assert json.loads(layout.probe_metrics_file(TASK, "baseline/0").read_text()) == as_json(post)
    assert list(post)[2:8] == ["model", "base_model", "finetune_task", "method", "seed", "finetune_status"]  # fmt: skip
    assert post["model"] == "models/tweets/baseline/0" and post["finetune_status"] == "ok"
    assert post["cka_to_pretrained"] == pytest.approx(1.0, abs=0.05)
    assert len(csv_rows(layout.probe_plot_file(TASK, "baseline/0"))) == 1 + 3

    reason = "fine-tuning diverged at step 5"
    skipped = run_probe_post(params, TASK, "isobn", 0, progress=False)
    assert skipped == skipped_record(
        "probe_post", TASK, "isobn/0", reason, model="models/tweets/isobn/0",
        base_model=params.model.name, finetune_task=TASK, method="isobn", seed=0,
        finetune_status="diverged",
    )  # fmt: skip
    assert json.loads(layout.probe_metrics_file(TASK, "isobn/0").read_text()) == skipped
    assert csv_rows(layout.probe_plot_file(TASK, "isobn/0")) == [list(CSV_COLUMNS)]
    with safe_open(str(layout.probe_arrays_file(TASK, "isobn/0")), framework="numpy") as f:
        assert not list(f.keys()) and f.metadata()["status"] == "skipped"
    err = capsys.readouterr().err
    assert err.strip() == f"isoprobe: warning: probe_post tweets/isobn/0 skipped: {reason}"

    assert run_probe_summary(params) == {TASK: (5, ["isobn/0"])}
    assert sorted(p.name for p in (layout.probe_summary_dir() / TASK).iterdir()) == [
        "accuracy.png", "centroids_pca.png", "clusters.png", "distance.png", "similarity.png",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("seed not in the grid", "(tweets, baseline, 7) is not in finetune.tasks"),
        ("not a token task", "'pos' must be one of probe.token_tasks []"),
        ("not probed", "'tweets' is not one of probe.tasks []"),
        ("no fine-tuning metrics", "fine-tuning metrics not found: metrics/finetune/tweets/baseline/0.json"),
        ("no pre-trained vectors", "embedding file not found"),
    ],
)  # fmt: skip
def test_bad_instances_fail_before_any_output(project, case, expected):
    params, args = make_params(), (TASK, "baseline", 0)
    if case == "seed not in the grid":
        args = (TASK, "baseline", 7)
    elif case == "not a token task":
        args = ("pos", "baseline", 0, TASK)
    elif case == "not probed":
        params = make_params(tasks=[])
    elif case == "no fine-tuning metrics":
        layout.finetune_metrics_file(TASK, "baseline", 0).unlink()
    else:
        (layout.embeddings_dir(TASK) / "train.safetensors").unlink()
    before = files_under(project)
    with pytest.raises(IsoprobeError, match=re.escape(expected)):
        run_probe_post(params, *args, progress=False)
    assert files_under(project) == before


def test_unknown_or_unprobed_task_fails_before_any_output(project):
    before = files_under(project)
    with pytest.raises(IsoprobeError, match="task 'nope' is not defined under tasks"):
        run_probe(make_params(), "nope", progress=False)
    with pytest.raises(IsoprobeError, match="in neither probe.tasks"):
        run_probe(make_params(tasks=[]), TASK, progress=False)
    with pytest.raises(IsoprobeError, match="probe metrics not found"):
        run_probe_summary(make_params())
    assert files_under(project) == before


def test_importing_the_stage_functions_is_light():
    """The stages import them before the inputs are checked: no heavy library may come with them."""
    code = (
        "import sys, isoprobe.probing.run, isoprobe.isotropy.run; "
        "print(sorted(m for m in ('numpy', 'torch', 'sklearn', 'scipy', 'matplotlib', 'mlflow', "
        "'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
