"""The report stage's publishing (`reporting.run.publish_report`): built beside report/, logged to
the MLflow run `report`, then moved in file by file (DVC's report/.gitignore stays), no temporaries
left; on a run with no metrics at all every file is listed missing."""

from __future__ import annotations

import pytest
from e2e_repo import small_params

from isoprobe.core.config import parse_params
from isoprobe.core.layout import REPORT_EXPERIMENT
from isoprobe.reporting.run import publish_report


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
