"""The report stage's publishing (`reporting.run.publish_report`): built beside report/, logged to
the MLflow run `report`, then moved in file by file (DVC's report/.gitignore stays), no temporaries
left; on a run with no metrics at all every file is listed missing."""

from __future__ import annotations

import pytest
from e2e_repo import small_params

from isoprobe.core.config import parse_params
from isoprobe.core.layout import AGGREGATE_EXPERIMENT, REPORT_EXPERIMENT
from isoprobe.reporting.run import log_aggregates, publish_report


def test_publish_report_logs_and_moves_the_report(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "report").mkdir()
    (tmp_path / "report/.gitignore").write_text("/index.html\n")
    params = parse_params(small_params(), "params.yaml")
    numbers = publish_report(params, tmp_path)
    out = tmp_path / "report"
    assert sorted(p.name for p in out.iterdir()) == [
        ".gitignore",
        "index.html",
        "plots",
        "summary.md",
    ]
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        f"{kind}_tweets.png" for kind in ("grad_cls", "scores")
    ]
    assert (out / ".gitignore").read_text() == "/index.html\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]
    assert numbers["failures"]["other"] > 0  # every metrics file missing
    assert "fine-tuning metrics missing" in (out / "index.html").read_text(encoding="utf-8")
    mlflow = pytest.importorskip("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = mlflow.search_runs(experiment_names=[REPORT_EXPERIMENT], output_format="list")
    assert run.info.run_name == "report" and run.info.status == "FINISHED"
    assert run.data.metrics == {"failed_runs": 0, "skipped_stages": 0, "dropped_rows": 0}
    artifacts = mlflow.MlflowClient().list_artifacts(run.info.run_id)
    assert sorted(a.path for a in artifacts) == ["index.html", "summary.md"]


def test_log_aggregates_logs_one_run_per_task_and_method(tmp_path, monkeypatch):
    """Each task x method's seed aggregate is a run of its own, named "<task>/<method>", tagged so
    the MLflow UI can group treatments; baseline has no comparison, so no p or interval."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / ".dvc").mkdir()
    params = parse_params(small_params(), "params.yaml")
    summary = {"n": 3, "median": 0.6, "std": 0.1, "mean": 0.61, "min": 0.5, "max": 0.73}
    cmp = {"delta_mean": 0.02, "delta_median": 0.01, "p_value": 0.25, "p_adjusted": 0.5,
           "ci_low": -0.01, "ci_high": 0.05, "family": 2, "significant_adjusted": False}  # fmt: skip
    results = {"tweets": {
        "baseline": summary | {"seeds": {2: 0.5, 0: 0.6, 1: 0.73}, "vs_baseline": None,
                               "degenerate_rate": 1 / 3, "metric": "accuracy"},
        "isobn": summary | {"seeds": {0: 0.62, 1: 0.74, 2: 0.51}, "vs_baseline": cmp,
                            "degenerate_rate": 0.0, "metric": "accuracy"},
    }}  # fmt: skip
    log_aggregates(params, results, tmp_path, "abc123")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=[AGGREGATE_EXPERIMENT], output_format="list")
    by_name = {r.info.run_name: r for r in runs}
    assert sorted(by_name) == ["tweets/baseline", "tweets/isobn"]
    base, iso = by_name["tweets/baseline"], by_name["tweets/isobn"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run, method in ((base, "baseline"), (iso, "isobn")):
        tags = run.data.tags
        assert (tags["task"], tags["method"], tags["kind"]) == ("tweets", method, "seed_aggregate")
        assert tags["metric"] == "accuracy" and tags["report_run_id"] == "abc123"
        assert run.data.params["seeds"] == "0,1,2"
    assert base.data.metrics == {"n_seeds": 3, "median": 0.6, "std": 0.1, "mean": 0.61, "min": 0.5,
                                 "max": 0.73, "degenerate_rate": pytest.approx(1 / 3)}  # fmt: skip
    assert iso.data.metrics["p_adjusted"] == 0.5 and iso.data.metrics["p_value"] == 0.25
    assert iso.data.metrics["significant_adjusted"] == 0.0
    assert iso.data.metrics["degenerate_rate"] == 0.0
    assert (iso.data.metrics["ci_low"], iso.data.metrics["ci_high"]) == (-0.01, 0.05)
    assert iso.data.params["comparisons"] == "2"
