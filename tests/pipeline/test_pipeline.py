"""End to end: the real DVC stages on the embedded model and corpus, a few dozen rows, in a copy of
the repository (git-initialised, its own DVC cache and MLflow store)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pytest
from e2e_repo import DVC, SMALL, clean_env, copy_repo, sh, small_params, write_params

from conftest import free_port, requires_shared

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the project's tracked files, beside a link to ../shared like the real checkout."""
    dest = copy_repo(tmp_path_factory.mktemp("e2e"))
    sh(dest, DVC, "repro")
    return dest


def test_repro_outputs(repo):
    meta = json.loads((repo / "data/prepared/tweets/meta.json").read_text())
    assert meta["label_names"] == ["negative", "neutral", "positive"]
    assert {s: c["rows"] for s, c in meta["counts"].items()} == SMALL
    train = [
        json.loads(line)
        for line in (repo / "data/prepared/tweets/train.jsonl").read_text().splitlines()
    ]
    assert len(train) == 40 and set(train[0]) == {"id", "text_a", "text_b", "label"}

    from isoprobe.embed.extract import embedding_metadata, load_embeddings

    for split, n in SMALL.items():
        path = repo / f"data/embeddings/pretrained/tweets/{split}.safetensors"
        cls = load_embeddings(path, "cls")
        assert cls.shape == (7, n, 384) and np.isfinite(cls).all()
        assert embedding_metadata(path)["model"] == "embedded:all-MiniLM-L6-v2"
    info = json.loads((repo / "data/embeddings/pretrained/tweets/info.json").read_text())
    assert info["device"] == "cpu" and info["splits"]["train"]["rows"] == 40

    m = json.loads((repo / "metrics/isotropy/tweets/pretrained.json").read_text())
    assert m["layer"] == 6 and len(m["layers"]) == 7 and m["n_rows"] == 40
    assert m["layers"][-1]["isoscore"] == m["isoscore"] and 0 <= m["isoscore"] <= 1
    # The embedding-layer [CLS] is the same vector for every input: fully anisotropic.
    assert (
        m["layers"][0]["mean_cosine"] == pytest.approx(1.0) and m["layers"][0]["isoscore"] is None
    )
    for png in ("std_hist", "std_sorted", "corr_heatmap", "abs_mean", "by_layer"):
        assert (repo / f"plots/isotropy/tweets/pretrained/{png}.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(repo.rglob(".*.tmp-*")), "no temporary files left"


def test_report_after_repro(repo):
    """The report stage ran on the real outputs: every section, the real results, DVC plots, and
    its page logged to MLflow."""
    html = (repo / "report/index.html").read_text(encoding="utf-8")
    for anchor in (
        "setup",
        "isotropy",
        "results",
        "gradients",
        "isotropy-after",
        "probing",
        "failures",
    ):
        assert f'<section id="{anchor}">' in html
    assert html.count("data:image/png;base64,") >= 8
    for method in ("baseline", "isobn"):
        ft = json.loads((repo / f"metrics/finetune/tweets/{method}/0.json").read_text())
        assert f"{ft['test']['accuracy']:.4f} ± 0.0000" in html  # one seed: std 0
    md = (repo / "report/summary.md").read_text()
    assert "1 seed:" in md and "too few seeds" in md
    assert sorted(p.name for p in (repo / "report/plots").iterdir()) == [
        "grad_cls_tweets.png", "isoscore_tweets.png", "scores_tweets.png",
    ]  # fmt: skip
    assert (repo / "report/.gitignore").read_text().strip() == "/index.html"  # kept by the stage

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["isoprobe/report"], output_format="list")
    assert runs and runs[0].info.status == "FINISHED"
    artifacts = {f.path for f in mlflow.tracking.MlflowClient().list_artifacts(runs[0].info.run_id)}
    assert {"index.html", "summary.md"} <= artifacts
    aggregates = mlflow.search_runs(experiment_names=["isoprobe/aggregates"], output_format="list")
    by_name = {r.info.run_name: r for r in aggregates}
    assert sorted(by_name) == ["tweets/baseline", "tweets/isobn"]
    assert by_name["tweets/baseline"].data.tags["report_run_id"] == runs[0].info.run_id
    assert by_name["tweets/isobn"].data.metrics["n_seeds"] == 1


def test_second_repro_is_a_no_op(repo):
    out = sh(repo, DVC, "repro").stdout
    assert "Data and pipelines are up to date" in out
    assert "Running stage" not in out


VARYING = ("seconds", "eval_seconds", "examples_per_second", "mlflow_run_id", "classifier_seconds")


def metrics_snapshot(root: Path) -> dict:
    """Every metrics JSON under root/metrics, without wall-clock times and MLflow run ids."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in VARYING}
        return [strip(v) for v in x] if isinstance(x, list) else x

    return {
        str(f.relative_to(root)): strip(json.loads(f.read_text()))
        for f in sorted((root / "metrics").rglob("*.json"))
    }


def repro_killed_at(root: Path, stage: str, ready, log: Path) -> str:
    """Start `dvc repro` and SIGKILL its whole process group (DVC and the stage process) once DVC
    runs `stage` and `ready(root)` holds; returns the output. Fails if the run ends before that."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [DVC, "repro"], cwd=root, env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 900
        while f"Running stage '{stage}'" not in log.read_text() or not ready(root):
            assert proc.poll() is None, (
                f"dvc repro ended before {stage}:\n{log.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return log.read_text()


def after(seconds: float):
    start: list[float] = []

    def ready(_root: Path) -> bool:
        start.append(start[0] if start else time.monotonic())
        return time.monotonic() - start[0] >= seconds

    return ready


def checkpoint_at(step: int):
    def ready(root: Path) -> bool:
        path = root / "checkpoints/tweets/isobn/0/checkpoint.json"
        try:
            return json.loads(path.read_text())["step"] >= step
        except (OSError, ValueError, KeyError):
            return False

    return ready


def test_killed_repro_resumes_with_the_same_metrics(repo, tmp_path):
    """SIGKILL `dvc repro` (DVC and the stage process) in the middle of several stages; each next
    `dvc repro` carries on (fine-tuning from its checkpoint), and the end result equals the
    uninterrupted run's metrics."""
    sh(repo, DVC, "repro")
    reference = metrics_snapshot(repo)
    assert len(reference) >= 8
    params = small_params()
    params["finetune"]["checkpoint"] = {"enabled": True, "every_steps": 2}
    crashed = copy_repo(tmp_path, params)
    points = [
        ("embed@tweets", after(3.0)),  # encoder loaded, embedding
        ("finetune@tweets-isobn-0", checkpoint_at(2)),  # training, after a mid-epoch checkpoint
        ("probe@tweets", after(4.0)),  # probes and DirectProbe
        ("report", after(1.0)),
    ]
    for i, (stage, ready) in enumerate(points):
        out = repro_killed_at(crashed, stage, ready, tmp_path / f"repro-{i}.log")
        status = sh(crashed, DVC, "status").stdout
        assert stage in status, f"killed {stage} counts as done:\n{status}\n{out[-2000:]}"
    out = sh(crashed, DVC, "repro").stdout
    assert "resuming fine-tuning" not in out  # the killed run resumed in the earlier repro
    logs = "".join((tmp_path / f"repro-{i}.log").read_text() for i in range(len(points)))
    assert "resuming fine-tuning from the checkpoint at step 2" in logs + out
    assert "Data and pipelines are up to date" in sh(crashed, DVC, "status").stdout
    assert metrics_snapshot(crashed) == reference
    leftovers = [
        p
        for d in ("data", "models", "metrics", "plots", "report", "checkpoints")
        for p in (crashed / d).rglob(".*tmp-*")
    ]
    assert not leftovers, leftovers


def test_metrics_and_plots_show(repo, tmp_path):
    shown = sh(repo, DVC, "metrics", "show").stdout
    assert "metrics/isotropy/tweets/pretrained.json" in shown and "isoscore" in shown
    sh(repo, DVC, "plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "corr_heatmap.png" in html and "by_layer.png" in html  # image plots
    assert (
        "IsoScore (1 = isotropic)" in html and "dimension rank" in html
    )  # data plots (axis titles)


def test_mlflow_store_holds_the_isotropy_run(repo):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    runs = mlflow.search_runs(
        experiment_names=["isoprobe/tweets"],
        filter_string="tags.stage = 'isotropy'",
        output_format="list",
    )
    assert len(runs) == 1, "one isotropy run"
    r = runs[0]
    assert r.info.status == "FINISHED" and r.info.run_name == "isotropy-pretrained"
    assert r.data.tags["dvc_stage"] == "isotropy@tweets" and r.data.tags["task"] == "tweets"
    assert len(r.data.tags["git_commit"]) == 40
    m = json.loads((repo / "metrics/isotropy/tweets/pretrained.json").read_text())
    assert r.data.metrics["isoscore"] == pytest.approx(m["isoscore"])
    assert m["mlflow_run_id"] == r.info.run_id
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(r.info.run_id, "mean_cosine")
    assert sorted(h.step for h in history) == list(range(7))


def test_finetune_outputs_and_runs(repo):
    for method in ("baseline", "isobn"):
        m = json.loads((repo / f"metrics/finetune/tweets/{method}/0.json").read_text())
        assert m["status"] == "ok" and m["best_epoch"] == 1 and 0 <= m["test"]["accuracy"] <= 1
        assert set(m["grad"]) == {"grad_cls", "grad_head", "grad_total"}
        folder = repo / f"models/tweets/{method}/0"
        assert (folder / "model.safetensors").is_file() and (folder / "head.safetensors").is_file()
        steps = (repo / f"plots/finetune/tweets/{method}/0.csv").read_text().splitlines()
        assert steps[0].startswith("step,epoch,loss") and len(steps) == m["steps"] + 1
        post = json.loads((repo / f"metrics/isotropy/tweets/{method}/0.json").read_text())
        assert len(post["layers"]) == 7 and "isoscore" in post["head_input"]

    from isoprobe.embed.extract import load_embeddings

    head_input = load_embeddings(
        repo / "data/embeddings/finetuned/isobn/0/tweets/test.safetensors", "head_input"
    )
    assert head_input.shape == (SMALL["test"], 384)

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    runs = mlflow.search_runs(
        experiment_names=["isoprobe/tweets"],
        filter_string="tags.stage = 'finetune'",
        output_format="list",
    )
    by_name = {r.info.run_name: r for r in runs}
    assert {"baseline-s0", "isobn-s0"} <= set(by_name)
    a, b = by_name["baseline-s0"], by_name["isobn-s0"]
    assert set(a.data.params) == set(b.data.params) and {"task", "method", "seed", "lr"} <= set(
        a.data.params
    )
    assert {"test_accuracy", "dev_accuracy", "grad_cls_max", "iso_isoscore"} <= set(a.data.metrics)
    assert set(a.data.metrics) == set(b.data.metrics)
    assert a.data.tags["method"] == "baseline" and a.info.status == "FINISHED"
    # the UI's value of dev_accuracy is the best epoch's (as in the metrics JSON), per-epoch values
    # are epoch_dev_*, and the schedule's rate is a metric of its own name (lr is the param)
    ft = json.loads((repo / "metrics/finetune/tweets/baseline/0.json").read_text())
    assert a.data.metrics["dev_accuracy"] == pytest.approx(ft["dev"]["accuracy"])
    assert "epoch_dev_accuracy" in a.data.metrics and "learning_rate" in a.data.metrics
    assert "lr" not in a.data.metrics


def test_finetune_stage_under_accelerate_launch(repo, tmp_path):
    """Two CPU processes (gloo DDP): one set of outputs and one MLflow run, same schedule and data."""
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    one = json.loads((copy / "metrics/finetune/tweets/isobn/0.json").read_text())
    res = sh(
        copy, str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "stages/finetune.py", "tweets", "isobn", "0", "--no-progress",
    )  # fmt: skip
    assert res.stdout.count("finetune tweets/isobn-s0: ok") == 1, res.stdout
    two = json.loads((copy / "metrics/finetune/tweets/isobn/0.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    for key in ("status", "steps", "train_examples_seen", "best_epoch"):
        assert two[key] == one[key], key
    assert 0 <= two["test"]["accuracy"] <= 1 and two["mlflow_run_id"] != one["mlflow_run_id"]
    assert (copy / "models/tweets/isobn/0/head.safetensors").is_file()
    assert not list(copy.rglob(".*.tmp-*")), "no temporary files left"

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{copy}/mlflow.db")
    runs = mlflow.search_runs(
        experiment_names=["isoprobe/tweets"],
        filter_string="tags.stage = 'finetune' and tags.processes = '2'",
        output_format="list",
    )
    assert [r.info.run_id for r in runs] == [two["mlflow_run_id"]]
    assert runs[0].info.status == "FINISHED" and runs[0].info.run_name == "isobn-s0"


def test_probe_outputs_runs_and_plots(repo, tmp_path):
    pre = json.loads((repo / "metrics/probe/tweets/pretrained.json").read_text())
    assert pre["labels"] == ["negative", "neutral", "positive"] and pre["features"] == "cls"
    assert pre["rows"] == SMALL and [r["layer"] for r in pre["layers"]] == list(range(7))
    assert pre["layer"] == 6 and 0 <= pre["linear_test"] <= 1 and 0 <= pre["mlp_test"] <= 1
    # the embedding-layer [CLS] is one vector for every input: DirectProbe can cluster nothing
    assert pre["layers"][0]["directprobe"]["train"]["conflicting_rows"] == SMALL["train"]
    assert pre["clusters"] >= 3  # 40 points in 384 dimensions: separable, one cluster per label
    for method in ("baseline", "isobn"):
        post = json.loads((repo / f"metrics/probe/tweets/{method}/0.json").read_text())
        assert post["method"] == method and post["finetune_task"] == "tweets"
        assert -1 <= post["cka_to_pretrained"] <= 1 and "similarity_to_pretrained" in post
        assert len(post["layers"][-1]["centroid_movement"]) == 3
        # layer 0 is the embedding layer: fine-tuning moves it little
        assert (
            post["layers"][0]["cka_to_pretrained"] is None
            or post["layers"][0]["cka_to_pretrained"] > 0.5
        )
        csv_rows = (repo / f"plots/probe/tweets/{method}_0_by_layer.csv").read_text().splitlines()
        assert csv_rows[0].startswith("layer,linear_train,linear_test") and len(csv_rows) == 8
    for png in ("accuracy", "clusters", "distance", "similarity", "centroids_pca"):
        assert (repo / f"plots/probe_summary/tweets/{png}.png").read_bytes()[:4] == b"\x89PNG"

    shown = sh(repo, DVC, "metrics", "show").stdout
    assert "metrics/probe/tweets/pretrained.json" in shown and "linear_test" in shown
    sh(repo, DVC, "plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "accuracy.png" in html and "centroids_pca.png" in html

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    runs = mlflow.search_runs(
        experiment_names=["isoprobe/tweets"], filter_string="tags.stage = 'probe'",
        output_format="list",
    )  # fmt: skip
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"probe-pretrained", "probe-baseline-s0", "probe-isobn-s0"}
    a, b = by_name["probe-pretrained"], by_name["probe-isobn-s0"]
    assert a.info.status == b.info.status == "FINISHED"
    assert {"probe_linear_test", "probe_mlp_test", "probe_clusters"} <= set(a.data.metrics)
    assert set(a.data.metrics) < set(b.data.metrics) and "probe_cka_to_pretrained" in b.data.metrics
    assert b.data.tags["method"] == "isobn" and b.data.tags["seed"] == "0"
    assert b.data.params["method"] == "isobn" and b.data.params["seed"] == "0"
    assert b.data.metrics["probe_linear_test"] == pytest.approx(
        json.loads((repo / "metrics/probe/tweets/isobn/0.json").read_text())["linear_test"]
    )
    history = mlflow.tracking.MlflowClient().get_metric_history(a.info.run_id, "probe_linear_test")
    assert sorted(h.step for h in history) == list(range(7))


def test_probe_is_deterministic(repo, tmp_path):
    """Running the probe stage again gives the same clusters, distances and accuracies."""
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    sh(copy, sys.executable, "stages/probe.py", "tweets", "--no-progress")

    def strip(path: Path) -> dict:
        m = json.loads(path.read_text())
        for layer in m["layers"]:
            layer.pop("classifier_seconds")
            layer.get("directprobe", {}).pop("seconds", None)
        return {k: v for k, v in m.items() if k not in ("mlflow_run_id", "seconds")}

    path = Path("metrics/probe/tweets/pretrained.json")
    assert strip(copy / path) == strip(repo / path)
    from isoprobe.embed.extract import load_embeddings

    arrays = Path("data/probe/tweets/pretrained.safetensors")
    np.testing.assert_array_equal(
        load_embeddings(copy / arrays, "distances_train"),
        load_embeddings(repo / arrays, "distances_train"),
    )


def test_editing_source_data_in_place_makes_prepare_stale(repo):
    rows = "".join(f"sentence number {i},{('neg', 'pos', 'mid')[i % 3]}\n" for i in range(60))
    data = repo / "mine.csv"
    data.write_text("text,label\n" + rows)
    params = small_params()
    params["pipeline"]["tasks"] = ["tweets", "mine"]
    params["finetune"]["tasks"] = ["tweets"]
    params["tasks"]["mine"] = {"source": "csv:mine.csv", "seed": 0}
    write_params(repo, params)
    try:
        sh(repo, DVC, "repro", "prepare@mine")
        assert "up to date" in sh(repo, DVC, "status", "prepare@mine").stdout
        with data.open("a") as f:
            f.write("one more sentence,pos\n")
        status = sh(repo, DVC, "status", "prepare@mine").stdout
        assert "prepare@mine" in status and "modified:           data/sources/mine" in status
        assert "tweets" not in status
        # the embedded corpus is hashed by content: no install path in dvc.lock
        lock = (repo / "dvc.lock").read_text()
        assert "data/sources/tweets" in lock and "site-packages" not in lock
    finally:
        write_params(repo, small_params())
        data.unlink()


def test_only_affected_stages_rerun(repo):
    params = small_params()
    params["finetune"]["seeds"] = [0, 1]
    write_params(repo, params)
    try:
        out = sh(repo, DVC, "repro").stdout
        assert "Running stage 'finetune@tweets-baseline-1'" in out
        assert "Running stage 'finetune@tweets-baseline-0'" not in out
        assert "Running stage 'embed@tweets'" not in out
        assert "Running stage 'probe_post@tweets-isobn-1'" in out
        assert "Running stage 'probe_post@tweets-isobn-0'" not in out
        assert "Running stage 'probe@tweets'" not in out
    finally:
        write_params(repo, small_params())


def test_diverging_grid_completes_and_is_reported(repo, tmp_path):
    """An absurd learning rate makes every fine-tuning run diverge: `dvc repro` still completes
    (fail_fast false), each run is recorded with its step and its MLflow run FAILED, the downstream
    instances are skipped, and the report lists them all.

    Runs in a copy sharing the module repo's DVC cache (data and pre-trained stages come from the
    run cache): the module repo's MLflow store and fine-tuned outputs stay those of the normal run,
    which later tests read (fine-tuning has persistent checkpoint outputs, so DVC would retrain it
    rather than restore it from the run cache)."""
    import mlflow

    sh(repo, DVC, "repro")  # fills the shared cache, whatever ran before
    params = small_params()
    params["finetune"]["train"].update(lr=1e6, grad_clip=None, warmup_ratio=0.0)
    copy = copy_repo(tmp_path, params)
    sh(copy, DVC, "cache", "dir", str(repo / ".dvc" / "cache"))
    res = sh(copy, DVC, "repro")
    assert "Running stage 'embed@tweets'" not in res.stdout  # restored from the run cache
    assert res.stderr.count("diverged at step") >= 2, res.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{copy}/mlflow.db")
    for method in ("baseline", "isobn"):
        m = json.loads((copy / f"metrics/finetune/tweets/{method}/0.json").read_text())
        assert m["status"] == "diverged" and m["diverged_at_step"] >= 1
        assert m["test"] == {} and m["best_epoch"] is None
        trace = (copy / f"plots/finetune/tweets/{method}/0.csv").read_text().splitlines()
        assert len(trace) == 1 + m["diverged_at_step"]  # header + every step up to divergence
        assert sorted(p.name for p in (copy / f"models/tweets/{method}/0").iterdir()) == [
            "status.json"
        ]
        run = mlflow.get_run(m["mlflow_run_id"])
        assert run.info.status == "FAILED" and run.data.tags["status"] == "diverged"
        for out in (
            f"metrics/isotropy/tweets/{method}/0.json",
            f"metrics/probe/tweets/{method}/0.json",
        ):
            assert json.loads((copy / out).read_text())["status"] == "skipped"
    summary = (copy / "report/summary.md").read_text()
    assert "fine-tuning runs diverged: 2" in summary
    assert "tweets/isobn/seed 0: diverged at step" in summary
    assert "downstream stages skipped: 4" in summary
    assert "Data and pipelines are up to date" in sh(repo, DVC, "status").stdout


def csv_file(repo: Path, name: str, text: str) -> str:
    (repo / name).write_text(text)
    return f"csv:{name}"


ROWS = "".join(
    f"text number {i} is {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}\n"
    for i in range(40)
)


@pytest.mark.parametrize(
    ("case", "stage_out", "expected"),
    [
        (
            "unknown model",
            "data/embeddings/pretrained/tweets",
            "model.name: cannot load 'no-such-org/no-such-model'",
        ),
        (
            "missing data directory",
            "data/sources/tweets",
            "tasks.tweets.source: data file or directory not found: ../nowhere/RTE",  # link@tweets
        ),
        (
            "csv without label column",
            "data/prepared/tweets",
            "column 'label' not found in no_label.csv",
        ),
        (
            "label outside the label set",
            "data/prepared/tweets",
            "label 'meh' in column 'label' is not in the label set ['neg', 'pos']",
        ),
        ("empty split", "data/prepared/tweets", "the dev split is empty"),
        (
            "unknown source scheme",
            "data/prepared/tweets",
            "tasks.tweets.source: unknown source scheme 'ftp'",
        ),
    ],
)
def test_bad_input_stops_cleanly(repo, case, stage_out, expected):
    params = small_params()
    task = params["tasks"]["tweets"]
    if case == "unknown model":
        params["model"]["name"] = "no-such-org/no-such-model"
    elif case == "missing data directory":
        task["source"] = "glue_tsv:../nowhere/RTE"
    elif case == "csv without label column":
        task.update(
            source=csv_file(repo, "no_label.csv", "text,sentiment\n" + ROWS),
            label_column=None,
            text_columns=None,
        )
    elif case == "label outside the label set":
        task.update(
            source=csv_file(repo, "extra_label.csv", "text,label\n" + ROWS + "odd one,meh\n"),
            labels=["neg", "pos"],
            invalid_rows={"default": "drop", "unknown_label": "fail"},
        )
    elif case == "empty split":
        task.update(
            source=csv_file(repo, "tiny.csv", "text,label\n" + ROWS[:200]),
            max_rows={"train": None, "dev": None, "test": None},
        )
        task["split"] = {"dev": 0.05, "test": 0.2}
    elif case == "unknown source scheme":
        task["source"] = "ftp:example/data.csv"
    write_params(repo, params)
    try:
        res = sh(repo, DVC, "repro", check=False)
        assert res.returncode != 0
        errors = [line for line in res.stderr.splitlines() if line.startswith("isoprobe: error:")]
        assert len(errors) == 1, res.stderr[-2000:]
        assert expected in errors[0]
        assert not (repo / stage_out).exists(), "a failed stage left its output"
        assert not list((repo / "data").rglob(".*.tmp-*")), "temporary files left"
        assert "Traceback" not in res.stderr
    finally:
        write_params(repo, small_params())


@requires_shared
def test_pos_probed_through_the_finetuned_encoders(repo):
    """A token task (UD PUD POS) through the pre-trained encoder and the tweets-fine-tuned ones."""
    params = small_params()
    params["pipeline"]["tasks"] = ["tweets", "pos"]
    params["probe"]["token_tasks"] = ["pos"]
    write_params(repo, params)
    try:
        out = sh(repo, DVC, "repro").stdout
        assert "Running stage 'probe_cross@pos-tweets-isobn-0'" in out
        assert "Running stage 'finetune@tweets-isobn-0'" not in out
        pre = json.loads((repo / "metrics/probe/pos/pretrained.json").read_text())
        post = json.loads((repo / "metrics/probe/pos/tweets/isobn/0.json").read_text())
        assert pre["features"] == post["features"] == "words" and len(pre["labels"]) == 17
        assert pre["rows"] == post["rows"] and pre["rows"]["train"] > 5 * SMALL["train"]  # words
        assert post["finetune_task"] == "tweets" and post["method"] == "isobn"
        assert 0 < post["cka_to_pretrained"] <= 1 and post["clusters"] >= 1
        first = pre["layers"][0]["directprobe"]["train"]  # embedding layer: the hard case
        assert first["clusters"] >= first["labels_present"] and first["undecided_pairs"] == 0
        for png in ("accuracy", "similarity", "centroids_pca"):
            assert (repo / f"plots/probe_summary/pos/{png}.png").is_file()
    finally:
        write_params(repo, small_params())


@requires_shared
def test_exp_run_switches_task_source_and_task(repo):
    sh(repo, DVC, "exp", "run", "-S", "tasks.tweets.source=glue_tsv:../shared/data/glue/RTE")
    meta = json.loads((repo / "data/prepared/tweets/meta.json").read_text())
    assert meta["pair"] is True and meta["label_names"] == ["entailment", "not_entailment"]
    assert meta["counts"]["test"]["rows"] == SMALL["test"]
    iso = json.loads((repo / "metrics/isotropy/tweets/pretrained.json").read_text())
    assert iso["n_rows"] == 40
    ft = json.loads((repo / "metrics/finetune/tweets/isobn/0.json").read_text())
    assert ft["metric"] == "accuracy" and ft["status"] == "ok"

    sh(
        repo, DVC, "exp", "run", "-S", "pipeline.tasks=[trec]", "-S", "finetune.tasks=[trec]",
        "-S", "probe.tasks=[trec]",
    )  # fmt: skip
    meta = json.loads((repo / "data/prepared/trec/meta.json").read_text())
    assert meta["label_names"] == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert (repo / "metrics/isotropy/trec/pretrained.json").is_file()
    assert (repo / "metrics/finetune/trec/baseline/0.json").is_file()
    probe = json.loads((repo / "metrics/probe/trec/isobn/0.json").read_text())
    assert len(probe["labels"]) == 6 and probe["rows"]["train"] == SMALL["train"]
    write_params(repo, small_params())
    sh(repo, DVC, "repro")  # back to the tweets outputs for the tests after this one


def _browser_missing() -> str | None:
    """Why the browser test cannot run here, or None (Debian's Chromium, chromedriver, Selenium)."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (it is in the test extra: pip install -e '.[test]')"
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not found on PATH; install Debian's chromium and "
            "chromium-driver (apt-get install chromium chromium-driver), as .ci/run does"
        )
    return None


BROWSER_MISSING = _browser_missing()
requires_browser = pytest.mark.skipif(BROWSER_MISSING is not None, reason=BROWSER_MISSING or "")


@contextmanager
def mlflow_ui(repo: Path, log: Path) -> Iterator[str]:
    """`mlflow ui` on the repository's store, on a free loopback port; stopped on exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    cmd = [
        str(Path(sys.executable).with_name("mlflow")), "ui",
        "--backend-store-uri", f"sqlite:///{repo / 'mlflow.db'}",
        "--default-artifact-root", (repo / "mlartifacts").as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow ui exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with opener.open(f"{url}/health", timeout=5) as res:
                    if res.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow ui did not answer on {url} in 90 s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


# The rows of one section of the compare page (the elements after its "Show diff only" switch): plain
# table rows [[name, value per run]] and the cells of its virtualized tables (react-virtualized, only
# the rows in view are in the page), each scrolled to (top, left): [[grid, top, left, text]].
SECTION_JS = """
const [label, top, left] = arguments;
const switches = [...document.querySelectorAll('button[role=switch]')]
  .filter(s => (s.getAttribute('aria-label') || '').endsWith('Show diff only'));
const mine = el => {
  const before = switches.filter(s => s.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING);
  return before.length > 0 && before[before.length - 1].getAttribute('aria-label').startsWith(label);
};
const rows = [...document.querySelectorAll('tr')].filter(tr => tr.querySelector('th') && mine(tr))
  .map(tr => [...tr.querySelectorAll('th, td')].map(c => c.textContent.trim()));
const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')].filter(mine);
const cells = [];
grids.forEach((g, i) => {
  g.scrollTop = top;
  g.scrollLeft = left;
  g.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer > div').forEach(c =>
    cells.push([i, parseFloat(c.style.top) || 0, parseFloat(c.style.left) || 0, c.textContent.trim()]));
});
const extent = grids.map(g => [g.scrollHeight - g.clientHeight, g.scrollWidth - g.clientWidth]);
return [rows, cells, Math.max(0, ...extent.map(e => e[0])), Math.max(0, ...extent.map(e => e[1]))];
"""


def compare_section(driver, section: str) -> dict[str, list[str]]:
    """Rows {name: [value per run column]} of a compare-page section, scrolled through in full."""
    cells: dict[tuple[float, int, float], str] = {}
    top = left = 0
    while True:
        driver.execute_script(SECTION_JS, section, top, left)
        time.sleep(0.4)  # let the virtualized tables render the rows scrolled into view
        rows, found, max_top, max_left = driver.execute_script(SECTION_JS, section, top, left)
        for grid, y, x, text in found:
            cells[(y, grid, x)] = text
        if left < max_left:
            left = min(left + 200, max_left)
        elif top < max_top:
            top, left = min(top + 150, max_top), 0
        else:
            break
    by_top: dict[float, list[str]] = {}
    for key in sorted(cells):
        by_top.setdefault(key[0], []).append(cells[key])
    return {row[0]: row[1:] for row in [*rows, *by_top.values()] if row}


@requires_browser
def test_mlflow_ui_compares_methods_in_a_browser(repo, tmp_path):
    """`mlflow ui` (README) in headless Chromium: a task's fine-tuning runs, then methods compared."""
    import mlflow
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    experiment = mlflow.get_experiment_by_name("isoprobe/tweets")
    finetune = mlflow.search_runs(
        experiment_ids=[experiment.experiment_id],
        filter_string="tags.task = 'tweets' and tags.stage = 'finetune'",
        output_format="list",
    )
    others = mlflow.search_runs(
        experiment_ids=[experiment.experiment_id],
        filter_string="tags.stage != 'finetune'",
        output_format="list",
    )
    assert finetune and {"isotropy-pretrained", "probe-pretrained"} <= {
        r.info.run_name for r in others
    }
    # What the UI shows to pick and compare runs: consistent names, tags, params and metrics.
    for r in finetune:
        tags, params = r.data.tags, r.data.params
        assert r.info.run_name == f"{tags['method']}-s{tags['seed']}", r.info.run_name
        assert (params["method"], params["seed"], params["task"]) == (
            tags["method"], tags["seed"], tags["task"],
        )  # fmt: skip
        assert len(tags["git_commit"]) == 40 and tags["dvc_stage"].startswith("finetune@tweets-")
        assert set(params) == set(finetune[0].data.params)
        assert {"dev_accuracy", "test_accuracy"} <= set(r.data.metrics)
    # Compare the runs the current pipeline outputs point to (one per method and seed).
    current = {
        json.loads(p.read_text())["mlflow_run_id"]
        for p in sorted((repo / "metrics/finetune/tweets").glob("*/*.json"))
    }
    compared = [r for r in finetune if r.info.run_id in current]
    assert {r.data.tags["method"] for r in compared} == {"baseline", "isobn"}

    shots = tmp_path / "screenshots"
    shots.mkdir()
    options = Options()
    options.binary_location = shutil.which("chromium")
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-dev-shm-usage", "--window-size=1600,2700",
    ):  # fmt: skip
        options.add_argument(arg)
    # An explicit chromedriver: Selenium Manager never looks for (or downloads) a driver.
    service = Service(executable_path=shutil.which("chromedriver"))

    with mlflow_ui(repo, tmp_path / "mlflow-ui.log") as url:
        driver = webdriver.Chrome(service=service, options=options)
        try:

            def wait_for(texts: list[str], shot: str) -> str:
                """The page text once every one of `texts` shows (60 s; CI is slow)."""
                body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
                try:
                    WebDriverWait(driver, 60, poll_frequency=1).until(
                        lambda d: all(t in body(d) for t in texts)
                    )
                except TimeoutException:
                    driver.save_screenshot(str(shots / f"{shot}-timeout.png"))
                    text = body(driver)
                    pytest.fail(
                        f"{driver.current_url} never showed {[t for t in texts if t not in text]} "
                        f"(screenshot in {shots}); the page shows:\n{text[:3000]}"
                    )
                return body(driver)

            # The experiment's runs table (the "Model training" view): every run, then filtered
            # as in the README.
            page = f"{url}/#/experiments/{experiment.experiment_id}/runs"
            driver.get(f"{page}?workflowType=machine_learning")
            wait_for(sorted({r.info.run_name for r in [*finetune, *others]}), "experiment-all")
            query = urllib.parse.urlencode(
                {
                    "workflowType": "machine_learning",
                    "searchFilter": "tags.task = 'tweets' and tags.stage = 'finetune'",
                },
                quote_via=urllib.parse.quote,
            )
            driver.get(f"{page}?{query}")
            names = sorted({r.info.run_name for r in finetune})
            wait_for(["isoprobe/tweets", *names], "experiment")
            time.sleep(2)  # the table settles
            driver.save_screenshot(str(shots / "experiment.png"))
            shown = set(wait_for(names, "experiment").split())
            assert not {r.info.run_name for r in others} & shown, "the filter keeps fine-tuning"

            # The compare-runs page of the current runs: one column per run.
            ids = [r.info.run_id for r in compared]
            query = urllib.parse.urlencode(
                {
                    "runs": json.dumps(ids),
                    "experiments": json.dumps([experiment.experiment_id]),
                    "workflowType": "machine_learning",
                },
                quote_via=urllib.parse.quote,
            )
            driver.get(f"{url}/#/compare-runs?{query}")
            text = wait_for(
                [f"Comparing {len(ids)} Runs", *ids, *(r.info.run_name for r in compared)],
                "compare",
            )
            wait_for(["dev_accuracy"], "compare")  # the metrics table is drawn
            time.sleep(2)  # and the plot
            driver.save_screenshot(str(shots / "compare.png"))
            # Columns follow the "Run ID" row.
            id_line = next(line for line in text.splitlines() if line.startswith("Run ID"))
            order = sorted(compared, key=lambda r: id_line.index(r.info.run_id))
            params = compare_section(driver, "Parameters")
            metrics = WebDriverWait(driver, 60, poll_frequency=1).until(
                lambda d: (m := compare_section(d, "Metrics")).get("test_accuracy") and m
            )
        finally:
            driver.quit()
    with pytest.raises(OSError):  # the server is stopped
        socket.create_connection(("127.0.0.1", urllib.parse.urlsplit(url).port), timeout=5).close()

    for key in ("method", "seed", "task", "lr"):
        assert params.get(key) == [r.data.params[key] for r in order], (key, params)
    for key in ("dev_accuracy", "test_accuracy"):
        assert [float(v) for v in metrics[key]] == pytest.approx(
            [r.data.metrics[key] for r in order], abs=1e-3
        ), (key, metrics[key])
    assert set(metrics) >= {"grad_cls_max", "iso_isoscore"} and set(params) == set(
        compared[0].data.params
    )

    for name in ("experiment.png", "compare.png"):
        png = (shots / name).read_bytes()
        assert png[:4] == b"\x89PNG" and len(png) > 10_000, name
    if os.environ.get("ISOPROBE_SCREENSHOTS"):
        dest = Path(os.environ["ISOPROBE_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("experiment.png", "compare.png"):
            shutil.copy2(shots / name, dest / name)
