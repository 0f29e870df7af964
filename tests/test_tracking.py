"""MLflow helper: one store per repository, tags, run status, disabled tracking."""

from __future__ import annotations

from pathlib import Path

import pytest

from isoprobe.config import TrackingConfig
from isoprobe.errors import IsoprobeError
from isoprobe.tracking import find_repo_root, tracked_run, tracking_uri


def test_repo_root_of_a_queued_experiment_copy_is_the_original(tmp_path):
    (tmp_path / ".dvc").mkdir()
    inner = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123" / "stages"
    inner.mkdir(parents=True)
    (inner.parent / ".dvc").mkdir()
    assert find_repo_root(inner) == tmp_path
    sub = tmp_path / "src" / "x"
    sub.mkdir(parents=True)
    assert find_repo_root(sub) == tmp_path


def test_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(TrackingConfig(), tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking_uri(TrackingConfig(uri="sqlite:////x.db"), tmp_path) == "sqlite:////x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////y.db")
    assert tracking_uri(TrackingConfig(uri="sqlite:////x.db"), tmp_path) == "sqlite:////y.db"


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / ".dvc").mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_STAGE", "isotropy@demo")
    return tmp_path


def runs(root: Path, experiment: str):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_run_lands_in_the_default_store_with_tags(repo):
    art = repo / "a.txt"
    art.write_text("hello")
    with tracked_run(
        TrackingConfig(), "isoprobe/demo", "isotropy-pretrained", {"task": "demo"}, root=repo
    ) as run:
        run.log_params({"model.name": "m", "revision": None})
        run.log_metrics({"isoscore": 0.5, "undefined": None, "nan": float("nan")}, step=3)
        run.log_artifact(art, "files")
    (r,) = runs(repo, "isoprobe/demo")
    assert r.info.status == "FINISHED" and r.info.run_name == "isotropy-pretrained"
    assert r.data.tags["task"] == "demo" and r.data.tags["dvc_stage"] == "isotropy@demo"
    assert r.data.metrics == {"isoscore": 0.5} and r.data.params["revision"] == "null"
    assert (repo / "mlflow.db").is_file()
    stored = list((repo / "mlartifacts").rglob("a.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "hello"


def test_exception_marks_the_run_failed(repo):
    with (
        pytest.raises(RuntimeError),
        tracked_run(TrackingConfig(), "isoprobe/demo", "boom", root=repo),
    ):
        raise RuntimeError("stage crashed")
    (r,) = runs(repo, "isoprobe/demo")
    assert r.info.status == "FAILED"


def test_disabled_tracking_writes_nothing(repo):
    with tracked_run(TrackingConfig(enabled=False), "isoprobe/demo", "x", root=repo) as run:
        run.log_metrics({"a": 1.0})
        assert not run.enabled and run.run_id is None
    assert not (repo / "mlflow.db").exists()


def test_unusable_store_is_a_clear_error(repo, monkeypatch):
    (repo / "a-file").write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo}/a-file/mlflow.db")
    with (
        pytest.raises(IsoprobeError, match="tracking: cannot use the MLflow store"),
        tracked_run(TrackingConfig(), "isoprobe/demo", "x", root=repo),
    ):
        pass


def test_relative_data_paths_inside_a_queued_experiment_copy(tmp_path, monkeypatch):
    from isoprobe.paths import data_path, experiment_copy_root

    root = tmp_path / "repo"
    (root / ".dvc").mkdir(parents=True)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    copy = root / ".dvc" / "tmp" / "exps" / "tmp123"
    (copy / ".dvc").mkdir(parents=True)
    (copy / "mine.csv").write_text("text,label\n")
    monkeypatch.chdir(copy)
    assert experiment_copy_root() == root
    # Missing in the copy: taken from the original repository.
    assert data_path("../shared/data") == root / "../shared/data"
    assert data_path("../shared/data").is_dir()
    # Present in the copy (the experiment's own version): kept as is.
    assert data_path("mine.csv") == Path("mine.csv")
    monkeypatch.chdir(root)
    assert experiment_copy_root() is None and data_path("../shared/data") == Path("../shared/data")
