"""Parallel experiments: `dvc exp run --queue` x 4, `dvc queue start -j 2`; every experiment
succeeds and every run of every experiment lands, FINISHED, in the one MLflow store of the repo."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from e2e_repo import DVC, clean_env, copy_repo, sh, small_params

pytestmark = pytest.mark.e2e

# Each experiment changes a param of every tracked stage, so none is restored from DVC's run cache
# (which would skip its MLflow run): isotropy (heatmap_dims), finetune (lr), probe (seed), and the
# stages downstream of them (embed_post, probe_post, report).
EXPERIMENTS = {
    f"q{i}": [
        f"finetune.train.lr={lr}",
        f"probe.seed={i}",
        f"isotropy.heatmap_dims={4 + i}",
    ]
    for i, lr in enumerate(["1e-4", "2e-4", "3e-4", "5e-5"])
}
# MLflow runs of one experiment: (experiment, run name)
RUNS = {
    ("isoprobe/tweets", "isotropy-pretrained"),
    ("isoprobe/tweets", "baseline-s0"),  # finetune; embed_post adds to it
    ("isoprobe/tweets", "probe-pretrained"),
    ("isoprobe/tweets", "probe-baseline-s0"),
    ("isoprobe/report", "report"),
    ("isoprobe/aggregates", "tweets/baseline"),  # the seed aggregate, by the report stage
}
TIMEOUT = 1800  # seconds for the whole queue; about 6-15 min on a 2-core machine


def cheap_params() -> dict:
    """The real pipeline on a few dozen rows: one method, one seed, one epoch, small probes."""
    params = small_params()
    params["tasks"]["tweets"]["max_rows"] = {"train": 24, "dev": 12, "test": 12}
    params["embed"].update(batch_size=32, max_length=32)
    params["finetune"].update(methods=["baseline"], seeds=[0])
    params["probe"]["directprobe"]["enabled"] = False
    params["probe"]["linear"]["c_grid"] = [1.0]
    params["probe"]["mlp"].update(hidden_grid=[[16, 16]], l2_grid=[1e-3])
    params["report"]["n_boot"] = 200
    return params


def queue_status(repo: Path) -> list[str]:
    """`dvc queue status` rows (without the header)."""
    lines = sh(repo, DVC, "queue", "status").stdout.splitlines()
    return [line for line in lines[1:] if line.strip() and not line.startswith("Worker")]


def test_queued_experiments_in_parallel_all_land_in_mlflow(tmp_path):
    repo = copy_repo(tmp_path, cheap_params())
    for name, overrides in EXPERIMENTS.items():
        sets = [arg for o in overrides for arg in ("-S", o)]
        sh(repo, DVC, "exp", "run", "--queue", "-n", name, *sets)
    t0 = time.monotonic()
    # Not through a pipe: the forked worker daemons inherit the caller's stdout/stderr, so a
    # captured `dvc queue start` would only return once the whole queue has run.
    with open(tmp_path / "queue-start.log", "w") as log:
        started = subprocess.run(
            [DVC, "queue", "start", "-j", "2"], cwd=repo, env=clean_env(), stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip
    assert started.returncode == 0, (tmp_path / "queue-start.log").read_text()
    while True:
        rows = queue_status(repo)
        if not any(s in row for row in rows for s in ("Queued", "Running")):
            break
        assert time.monotonic() - t0 < TIMEOUT, "\n".join(rows)
        time.sleep(5)
    seconds = time.monotonic() - t0
    print(f"4 queued experiments, 2 workers: {seconds:.0f} s")

    failed = [row for row in rows if "Success" not in row]
    logs = "".join(
        sh(repo, DVC, "queue", "logs", row.split()[0], check=False).stdout[-3000:] for row in failed
    )
    assert not failed, "\n".join(rows) + "\n" + logs
    shown = json.loads(sh(repo, DVC, "exp", "show", "--json").stdout)
    exps = {
        e["name"]: e
        for commit in shown
        for e in commit.get("experiments") or []
        if e.get("name") in EXPERIMENTS
    }
    assert set(exps) == set(EXPERIMENTS)

    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    experiments = [
        client.get_experiment_by_name(e).experiment_id
        for e in ("isoprobe/tweets", "isoprobe/report", "isoprobe/aggregates")
    ]
    runs = client.search_runs(experiments, max_results=1000)
    found = sorted(
        (
            r.data.tags.get("dvc_exp_name", ""),
            client.get_experiment(r.info.experiment_id).name,
            r.info.run_name,
        )
        for r in runs
    )
    expected = sorted((name, exp, run) for name in EXPERIMENTS for exp, run in RUNS)
    assert found == expected
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        if r.info.run_name == "baseline-s0":  # finetune, with embed_post's isotropy metrics
            assert {"test_accuracy", "iso_isoscore"} <= set(r.data.metrics)
            lr = EXPERIMENTS[r.data.tags["dvc_exp_name"]][0].partition("=")[2]
            assert float(r.data.params["lr"]) == float(lr)
