"""End to end: the real DVC stages on the embedded model and corpus, a few dozen rows, in a copy of
the repository (git-initialised, its own DVC cache and MLflow store)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, SHARED, free_port, requires_shared

pytestmark = pytest.mark.e2e

DVC = str(Path(sys.executable).with_name("dvc"))
SMALL = {"train": 40, "dev": 12, "test": 12}


def small_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pipeline"]["tasks"] = ["tweets"]
    for task in params["tasks"].values():
        task["max_rows"] = dict(SMALL)
    params["embed"].update(batch_size=16, max_length=64)
    params["isotropy"]["heatmap_dims"] = 8
    params["finetune"].update(methods=["baseline", "isobn"], seeds=[0])
    params["finetune"]["train"].update(epochs=1, batch_size=8, max_length=32)
    params["probe"]["mlp"].update(hidden_grid=[[32, 32]], l2_grid=[1e-4, 1e-2])
    return params


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def sh(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
    )
    res = subprocess.run(list(args), cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return res


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the project's tracked files, beside a link to ../shared like the real checkout."""
    base = tmp_path_factory.mktemp("e2e")
    dest = base / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file() and not f.startswith(("metrics/", "plots/")) and f != "dvc.lock":
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    if SHARED.is_dir():
        (base / "shared").symlink_to(SHARED.parent)
    write_params(dest, small_params())
    sh(dest, "git", "init", "-q", "-b", "main")
    sh(dest, "git", "-c", "user.name=t", "-c", "user.email=t@example.com", "add", "-A")
    sh(dest, "git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "copy")
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

    from isoprobe.embed import embedding_metadata, load_embeddings

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


def test_second_repro_is_a_no_op(repo):
    out = sh(repo, DVC, "repro").stdout
    assert "Data and pipelines are up to date" in out
    assert "Running stage" not in out


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

    from isoprobe.embed import load_embeddings

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
    assert set(by_name) == {"probe-pretrained", "probe-baseline-0", "probe-isobn-0"}
    a, b = by_name["probe-pretrained"], by_name["probe-isobn-0"]
    assert a.info.status == b.info.status == "FINISHED"
    assert {"probe_linear_test", "probe_mlp_test", "probe_clusters"} <= set(a.data.metrics)
    assert set(a.data.metrics) < set(b.data.metrics) and "probe_cka_to_pretrained" in b.data.metrics
    assert b.data.tags["method"] == "isobn" and b.data.tags["seed"] == "0"
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
    from isoprobe.embed import load_embeddings

    arrays = Path("data/probe/tweets/pretrained.safetensors")
    np.testing.assert_array_equal(
        load_embeddings(copy / arrays, "distances_train"),
        load_embeddings(repo / arrays, "distances_train"),
    )


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
            "data/prepared/tweets",
            "GLUE directory not found: ../nowhere/RTE",
        ),
        (
            "csv without label column",
            "data/prepared/tweets",
            "column 'label' not found in no_label.csv",
        ),
        (
            "label outside the label set",
            "data/prepared/tweets",
            "label 'meh' in column 'label' is not in the label set",
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
