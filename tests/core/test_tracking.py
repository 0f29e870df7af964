"""MLflow helper: one store per repository, tags, run status, disabled tracking."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from isoprobe.core.config import TrackingConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.tracking import (
    INTERRUPTED_TAG,
    _cause,
    check_store,
    find_repo_root,
    tracked_run,
    tracking_uri,
)


def test_repo_root_of_a_queued_experiment_copy_is_the_original(tmp_path):
    (tmp_path / ".dvc").mkdir()
    inner = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123" / "stages"
    inner.mkdir(parents=True)
    (inner.parent / ".dvc").mkdir()
    assert find_repo_root(inner) == tmp_path
    sub = tmp_path / "src" / "x"
    sub.mkdir(parents=True)
    assert find_repo_root(sub) == tmp_path


def test_tracking_quotes_an_error_on_one_line_cut_at_200_characters():
    assert (
        _cause(ConnectionError("refused\n" + "z" * 400)) == "ConnectionError: refused " + "z" * 192
    )


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
    from isoprobe.core.repo import data_path, experiment_copy_root

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


def test_unusable_store_names_uri_source_and_fix(repo, monkeypatch):
    (repo / "a-file").write_text("not a folder")
    for uri in (f"sqlite:///{repo}/a-file/mlflow.db", f"sqlite:///{repo}/a-file", "nosuch://x"):
        cfg = TrackingConfig(uri=uri)
        with pytest.raises(IsoprobeError) as err:
            check_store(cfg, "isoprobe/demo", root=repo)
        msg = str(err.value)
        assert uri in msg and "(from tracking.uri)" in msg
        assert "tracking.required: false" in msg and "tracking.enabled: false" in msg


def test_unusable_store_not_required_runs_untracked_with_one_warning(repo, monkeypatch, capsys):
    (repo / "a-file").write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo}/a-file/mlflow.db")
    cfg = TrackingConfig(required=False)
    assert not check_store(cfg, "isoprobe/demo", root=repo)
    with tracked_run(cfg, "isoprobe/demo", "x", root=repo) as run:
        run.log_metrics({"a": 1.0})
        run.log_artifact(repo / "a-file")
        assert not run.enabled and run.run_id is None
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("isoprobe:")]
    assert len(err) == 1 and err[0].startswith("isoprobe: warning: tracking disabled: ")
    assert "MLFLOW_TRACKING_URI" in err[0]


def break_logging(monkeypatch, terminate_too: bool = False) -> None:
    """The store goes away mid-run: every log call (and, optionally, ending the run) fails."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def fail(*args, **kwargs):
        raise MlflowException("(sqlite3.DatabaseError) disk I/O error")

    monkeypatch.setattr(MlflowClient, "log_batch", fail)
    monkeypatch.setattr(MlflowClient, "log_artifact", fail)
    if terminate_too:
        monkeypatch.setattr(MlflowClient, "set_terminated", fail)


def isoprobe_lines(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if x.startswith("isoprobe:")]


@pytest.mark.parametrize("required", [True, False])
def test_logging_failure_mid_run_finishes_the_stage_untracked(repo, monkeypatch, capsys, required):
    """The stage goes on (whatever tracking.required says), the run ends FAILED, and one warning
    at the end counts what was not logged and says how to log the stage again."""
    done = []
    with tracked_run(TrackingConfig(required=required), "isoprobe/demo", "x", root=repo) as run:
        run.log_metrics({"a": 1.0})
        run_id = run.run_id
        break_logging(monkeypatch)
        run.log_metrics({"b": 2.0})
        assert not run.enabled and run.run_id is None
        run.log_series([{"step": 0, "c": 1.0}])
        run.log_artifact(repo / "x")
        run.set_tags({"status": "ok"})
        run.end("FINISHED")  # the fine-tuning stage ends its run itself
        done.append(True)
    assert done
    monkeypatch.undo()
    (r,) = runs(repo, "isoprobe/demo")
    assert r.info.status == "FAILED" and r.data.metrics == {"a": 1.0}
    assert r.data.tags[INTERRUPTED_TAG].startswith("MlflowException: ")
    (line,) = isoprobe_lines(capsys)
    assert line.startswith("isoprobe: warning: tracking disabled: logging to the MLflow store ")
    assert (
        f"not logged to run {run_id}: metrics (2 calls), artifacts (1 call), tags (1 call), "
        in line
    )
    assert "end status FINISHED" in line and f"run {run_id} is marked FAILED" in line
    assert "disk I/O error" in line and "dvc repro -f -s isotropy@demo" in line
    assert not (repo / ".isoprobe" / "unfinished_runs.jsonl").exists()


def test_stage_error_after_a_logging_failure_still_raises(repo, monkeypatch, capsys):
    with (
        pytest.raises(RuntimeError, match="stage crashed"),
        tracked_run(TrackingConfig(), "isoprobe/demo", "x", root=repo) as run,
    ):
        break_logging(monkeypatch)
        run.log_params({"p": 1})
        raise RuntimeError("stage crashed")
    monkeypatch.undo()
    (r,) = runs(repo, "isoprobe/demo")
    assert r.info.status == "FAILED"
    (line,) = isoprobe_lines(capsys)
    assert ": params (1 call);" in line and "end status" not in line


def test_run_that_cannot_be_ended_is_marked_failed_by_the_next_stage(repo, monkeypatch, capsys):
    """Ending the run fails too: it is left in the pending file, and the next open of the store
    marks it FAILED and forgets it."""
    from isoprobe.core.io import read_jsonl

    with tracked_run(TrackingConfig(), "isoprobe/demo", "x", root=repo) as run:
        run.log_metrics({"a": 1.0})
        run_id, uri = run.run_id, run.uri
        break_logging(monkeypatch, terminate_too=True)
    monkeypatch.undo()
    (r,) = runs(repo, "isoprobe/demo")
    assert r.info.status == "RUNNING"  # never FINISHED
    pending = repo / ".isoprobe" / "unfinished_runs.jsonl"
    (row,) = read_jsonl(pending)
    assert row["run_id"] == run_id and row["uri"] == uri and "disk I/O error" in row["reason"]
    (line,) = isoprobe_lines(capsys)
    assert "end status FINISHED" in line and "could not be marked FAILED either" in line
    assert str(pending) in line

    assert check_store(TrackingConfig(), "isoprobe/demo", root=repo)
    (r,) = runs(repo, "isoprobe/demo")
    assert r.info.status == "FAILED" and "disk I/O error" in r.data.tags[INTERRUPTED_TAG]
    assert not pending.exists()
    (line,) = isoprobe_lines(capsys)
    assert line.startswith(f"isoprobe: MLflow run {run_id} in {uri}, left RUNNING")


def test_pending_runs_of_another_store_are_kept(repo, capsys):
    from isoprobe.core.io import read_jsonl
    from isoprobe.core.tracking import pending_file, remember_unfinished

    assert remember_unfinished(repo, "http://elsewhere:5000", "abc", "gone")
    assert check_store(TrackingConfig(), "isoprobe/demo", root=repo)
    assert [r["run_id"] for r in read_jsonl(pending_file(repo))] == ["abc"]


def test_http_retry_budget_is_bounded_unless_set(monkeypatch):
    from isoprobe.core.tracking import HTTP_RETRY_DEFAULTS, bound_http_retries

    for name in HTTP_RETRY_DEFAULTS:
        monkeypatch.setenv(name, "sentinel")
        monkeypatch.delenv(name)  # unset now, restored as before after the test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    bound_http_retries()

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"


def test_resumed_run_keeps_its_status(repo):
    with tracked_run(TrackingConfig(), "isoprobe/demo", "first", root=repo) as run:
        run_id = run.run_id
    with tracked_run(TrackingConfig(), "isoprobe/demo", "", root=repo, run_id=run_id) as run:
        run.log_metrics({"later": 1.0})
    (r,) = runs(repo, "isoprobe/demo")
    assert r.info.status == "FINISHED" and r.data.metrics == {"later": 1.0}


def _log_in_parallel(root: str, i: int, barrier) -> None:
    import mlflow.tracking  # noqa: F401  (imported before the start: all begin at once)

    barrier.wait()
    with tracked_run(
        TrackingConfig(), "isoprobe/race", f"run-{i}", {"worker": i}, root=root
    ) as run:
        run.log_params({f"p{k}": k for k in range(20)})
        for step in range(40):
            run.log_metrics({f"m{k}": i + k + step for k in range(10)}, step=step)
        run.log_series([{"step": s, "loss": s / 100} for s in range(200)], keys=["loss"])


def test_parallel_processes_share_one_sqlite_store(repo):
    """Six processes create the same experiment in a fresh store and log (600 values each, in 40
    calls) at the same time: every run is there, FINISHED, with every value."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    n = 6
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_log_in_parallel, args=(str(repo), i, barrier)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * n
    found = runs(repo, "isoprobe/race")
    assert sorted(r.data.tags["worker"] for r in found) == [str(i) for i in range(n)]
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for r in found:
        assert r.info.status == "FINISHED" and len(r.data.params) == 20
        assert len(r.data.metrics) == 11
        assert len(client.get_metric_history(r.info.run_id, "m3")) == 40
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 200


def test_busy_store_calls_are_retried(repo, monkeypatch):
    """ "database is locked" (a parallel writer held the store too long) is retried with backoff."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    import isoprobe.core.tracking as tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    real, calls = MlflowClient.log_batch, []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) % 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(self, *args, **kwargs)

    with tracked_run(TrackingConfig(), "isoprobe/demo", "x", root=repo) as run:
        monkeypatch.setattr(MlflowClient, "log_batch", flaky)
        run.log_metrics({"a": 1.0})
        run.log_series([{"step": s, "b": s} for s in range(5)])
    monkeypatch.undo()
    (r,) = runs(repo, "isoprobe/demo")
    assert r.info.status == "FINISHED" and r.data.metrics == {"a": 1.0, "b": 4.0}
    assert len(calls) == 6


@pytest.mark.parametrize("stage", ["isotropy", "probe", "report"])
def test_stage_with_an_unusable_store_fails_before_writing(stage, tmp_path):
    """Exit code 2 with the store's message, checked before the stage reads or writes anything."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / ".dvc").mkdir()
    (tmp_path / "afile").write_text("x")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/afile/mlflow.db"}
    args = ([] if stage == "report" else ["tweets"]) + ["--params", str(REPO / "params.yaml")]
    res = subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{stage}.py"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("isoprobe: error: tracking: cannot use the MLflow store sqlite:")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dvc", "afile"]
