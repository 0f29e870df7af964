"""Tracking against a real `mlflow server` (the team setup): an unreachable server fails fast, a
stage's run reads back through the server, and a server that stops mid-run costs the stage nothing
but the logging (the run is marked FAILED once the server is back)."""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from e2e_repo import clean_env, small_params, write_params

from conftest import REPO, free_port
from isoprobe.core import layout
from isoprobe.core.config import TrackingConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.io import read_json, read_jsonl, write_safetensors
from isoprobe.core.tracking import (
    HTTP_RETRY_DEFAULTS,
    INTERRUPTED_TAG,
    check_store,
    pending_file,
    probe_server,
    tracked_run,
)

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
START_SECONDS = 300  # a cold `mlflow server` takes ~50 s on a busy 2-core machine


class MlflowServer:
    """`mlflow server` on a free loopback port with a SQLite store and proxied artifacts in
    `folder`; it can be stopped and started again with the same port and store."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [
            MLFLOW, "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination", str(self.folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        with open(self.folder / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True
            )
        deadline = time.monotonic() + START_SECONDS
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_tail = (self.folder / "server.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"mlflow server did not come up:\n{log_tail}")
            time.sleep(0.5)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as res:
                return res.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to the server's process group, then SIGKILL to whatever is left of it."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(20)
        self._signal_group(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A repository root (`.dvc`), no MLflow variables, MLflow's HTTP settings restored after."""
    (tmp_path / ".dvc").mkdir()
    for name in (*HTTP_RETRY_DEFAULTS, "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)  # unset, and restored as it was after the test
    monkeypatch.setenv("DVC_STAGE", "isotropy@demo")
    return tmp_path


def isoprobe_lines(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if x.startswith("isoprobe:")]


def test_unreachable_server_fails_fast_with_the_uri_and_its_source(project, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    def run_a_stage():
        with tracked_run(TrackingConfig(), "isoprobe/demo", "x", root=project):
            pytest.fail("the run must not start")

    for attempt in (
        lambda: check_store(TrackingConfig(), "isoprobe/demo", root=project),
        run_a_stage,
    ):
        start = time.monotonic()
        with pytest.raises(IsoprobeError) as err:
            attempt()
        assert time.monotonic() - start < 15
        msg = str(err.value)
        assert msg.startswith(
            f"tracking: cannot use the MLflow store {uri} (from MLFLOW_TRACKING_URI)"
        )
        assert f"no answer from {uri}/health" in msg and "start the tracking server" in msg
        assert "tracking.required: false" in msg and "tracking.enabled: false" in msg


def test_unreachable_server_not_required_runs_untracked(project, monkeypatch, capsys):
    import isoprobe.core.tracking as tracking

    monkeypatch.setattr(tracking, "_disabled", set())
    uri = f"http://127.0.0.1:{free_port()}"
    cfg = TrackingConfig(uri=uri, required=False)
    start = time.monotonic()
    assert not check_store(cfg, "isoprobe/demo", root=project)
    with tracked_run(cfg, "isoprobe/demo", "x", root=project) as run:
        run.log_metrics({"a": 1.0})
        assert not run.enabled and run.run_id is None
    assert time.monotonic() - start < 15
    (line,) = isoprobe_lines(capsys)
    assert line.startswith(
        f"isoprobe: warning: tracking disabled: cannot use the MLflow store {uri}"
    )
    assert "(from tracking.uri)" in line


class Answer(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (the http.server name)
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "reachable"), [(200, True), (404, True), (503, False)])
def test_probe_counts_any_answer_below_500(status, reachable):
    handler = type("Handler", (Answer,), {"status": status})
    httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        if reachable:
            probe_server(uri, budget=2)
        else:
            with pytest.raises(ConnectionError, match="HTTP Error 503"):
                probe_server(uri, budget=2)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_team_setup_stage_logs_through_the_server(server, tmp_path):
    """`stages/isotropy.py` run the way a team runs it (MLFLOW_TRACKING_URI=http://...): params,
    per-layer metrics, tags and artifacts read back through the server."""
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    (tmp_path / ".dvc").mkdir()
    write_params(tmp_path, small_params())
    cls = np.random.default_rng(0).normal(size=(3, 30, 12)).astype(np.float32)
    emb = tmp_path / layout.embeddings_dir("tweets") / "train.safetensors"
    write_safetensors(emb, {"cls": cls}, {"max_length": "64", "dtype": "float32"})
    env = {**clean_env(), "MLFLOW_TRACKING_URI": server.uri, "DVC_STAGE": "isotropy@tweets"}
    res = subprocess.run(
        [sys.executable, str(REPO / "stages" / "isotropy.py"), "tweets", "--params", "params.yaml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = read_json(tmp_path / layout.isotropy_metrics_file("tweets"))

    client = MlflowClient(tracking_uri=server.uri)
    exp = client.get_experiment_by_name("isoprobe/tweets")
    (run,) = client.search_runs([exp.experiment_id], "tags.stage = 'isotropy'")
    assert run.info.run_id == report["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.params["n_rows"] == "30" and run.data.params["layers"] == "3"
    assert run.data.params["task"] == "tweets" and run.data.params["embed.dtype"] == "float32"
    assert run.data.metrics["isoscore"] == pytest.approx(report["isoscore"])
    history = client.get_metric_history(run.info.run_id, "isoscore")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert run.data.tags["dvc_stage"] == "isotropy@tweets" and run.data.tags["task"] == "tweets"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"metrics", "plots"}
    got = download_artifacts(
        run_id=run.info.run_id,
        artifact_path="metrics/pretrained.json",
        dst_path=str(tmp_path / "downloaded"),
        tracking_uri=server.uri,
    )
    assert read_json(got) == report
    stored = list((server.folder / "artifacts").rglob("pretrained.json"))
    assert len(stored) == 1  # uploaded through the server into --artifacts-destination


def test_server_stopped_mid_run(server, project, capsys):
    """The stage keeps going when the server goes away; the run it could not end is marked FAILED
    by the next open of the store once the server is back."""
    from mlflow.tracking import MlflowClient

    (project / "x.txt").write_text("x")
    cfg = TrackingConfig(uri=server.uri)
    with tracked_run(cfg, "isoprobe/demo", "interrupted", root=project) as run:
        run.log_params({"p": 1})
        run.log_metrics({"before": 1.0})
        run_id = run.run_id
        server.stop()
        start = time.monotonic()
        run.log_metrics({"after": 2.0})
        run.log_artifact(project / "x.txt")
        run.set_tags({"status": "ok"})
        assert not run.enabled
    assert time.monotonic() - start < 60
    (line,) = isoprobe_lines(capsys)
    assert f"logging to the MLflow store {server.uri} failed mid-run" in line
    not_logged = "metrics (1 call), artifacts (1 call), tags (1 call), end status FINISHED"
    assert f"not logged to run {run_id}: {not_logged};" in line
    assert "could not be marked FAILED either" in line and "dvc repro -f -s isotropy@demo" in line
    pending = pending_file(project)
    assert [(r["run_id"], r["uri"]) for r in read_jsonl(pending)] == [(run_id, server.uri)]

    server.start()
    assert check_store(cfg, root=project)
    got = MlflowClient(tracking_uri=server.uri).get_run(run_id)
    assert got.info.status == "FAILED" and got.data.metrics == {"before": 1.0}
    assert got.data.params == {"p": "1"} and INTERRUPTED_TAG in got.data.tags
    assert not pending.exists()
    assert isoprobe_lines(capsys) == [
        f"isoprobe: MLflow run {run_id} in {server.uri}, left RUNNING when logging failed "
        f"({got.data.tags[INTERRUPTED_TAG]}), is now marked FAILED"
    ]


def run_ids(db: Path) -> dict[str, str]:
    """{run id: status} of every run in the server's SQLite backend, read directly (read-only)."""
    import sqlite3

    if not db.is_file():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return dict(con.execute("SELECT run_uuid, status FROM runs"))
    except sqlite3.OperationalError:  # the tables are not there yet, or busy past the timeout
        return {}
    finally:
        con.close()


STAGE_LAYERS = 500  # one logging call per layer: the run stays open for seconds, not milliseconds


def test_server_stopped_while_a_stage_runs(server, project):
    """`stages/isotropy.py` as a subprocess against the server, which is stopped as soon as the
    stage's run appears RUNNING in its backend (the stage is then logging one layer at a time): the
    stage exits 0 with all its DVC outputs, one warning names what was not logged, and the same
    stage run again once the server is back marks the interrupted run FAILED."""
    from mlflow.tracking import MlflowClient

    write_params(project, small_params())
    n_rows, dim = 30, 12
    cls = np.random.default_rng(1).normal(size=(STAGE_LAYERS, n_rows, dim)).astype(np.float32)
    emb = project / layout.embeddings_dir("tweets") / "train.safetensors"
    write_safetensors(emb, {"cls": cls}, {"max_length": "64", "dtype": "float32"})
    env = {**clean_env(), "MLFLOW_TRACKING_URI": server.uri, "DVC_STAGE": "isotropy@tweets"}
    cmd = [
        sys.executable,
        str(REPO / "stages" / "isotropy.py"),
        "tweets",
        "--params",
        "params.yaml",
    ]
    db = server.folder / "mlflow.db"
    before = set(run_ids(db))

    # no HTTP retries once the server is gone (a user setting; the bounded default retries cost
    # ~12 s here and are covered by test_server_stopped_mid_run)
    first_env = {**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    stage = subprocess.Popen(
        cmd, cwd=project, env=first_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        new: dict[str, str] = {}
        while not new and stage.poll() is None and time.monotonic() < deadline:
            new = {k: v for k, v in run_ids(db).items() if k not in before}
            time.sleep(0.02)
        assert new, f"the stage's run never appeared (stage exit {stage.poll()})"
        ((run_id, status),) = new.items()
        assert status == "RUNNING", f"the stage ended its run ({status}) before the server stopped"
        server.stop()
        out, err = stage.communicate(timeout=120)
    finally:
        if stage.poll() is None:
            stage.kill()
            stage.wait()
        if server.proc is None:
            server.start()  # for the tests after this one, whatever happened here
    assert stage.returncode == 0, err[-3000:]

    # every DVC output of isotropy@tweets, complete
    report = read_json(project / layout.isotropy_metrics_file("tweets"))
    assert len(report["layers"]) == STAGE_LAYERS and report["layer"] == STAGE_LAYERS - 1
    assert report["mlflow_run_id"] is None  # the run holds only part of it: no link to it
    assert (project / layout.isotropy_arrays_file("tweets")).stat().st_size > 0
    plots = project / layout.isotropy_plots_dir("tweets")
    assert {p.name for p in plots.iterdir()} == {
        "std_hist.png", "std_sorted.png", "corr_heatmap.png", "abs_mean.png", "by_layer.png",
    }  # fmt: skip
    by_layer = project / layout.isotropy_plot_csv("tweets", "pretrained", "by_layer")
    assert len(by_layer.read_text().splitlines()) == STAGE_LAYERS + 1
    assert f"isotropy tweets: layer {STAGE_LAYERS - 1}: isoscore" in out

    # one warning: what was not logged (the layers after the failing call, the plots and the
    # metrics JSON, the FINISHED status), and where the run waits to be marked FAILED
    (line,) = [x for x in err.splitlines() if x.startswith("isoprobe:")]
    assert line.startswith(
        f"isoprobe: warning: tracking disabled: logging to the MLflow store {server.uri} failed "
        "mid-run ("
    )
    lost = re.search(
        rf"; not logged to run {run_id}: (params \(1 call\), )?metrics \((\d+) calls?\), "
        r"artifacts \(2 calls\), end status FINISHED; ",
        line,
    )
    assert lost, line
    calls = int(lost.group(2))  # from the failing call (counted) to the last layer
    assert calls == STAGE_LAYERS if lost.group(1) else 0 < calls <= STAGE_LAYERS, line
    assert "could not be marked FAILED either" in line
    assert line.endswith("dvc repro -f -s isotropy@tweets")
    pending = pending_file(project)
    assert [r["run_id"] for r in read_jsonl(pending)] == [run_id]

    # the server is back (started in `finally`): the next stage (here the same one, on 3 layers to
    # be quick) marks the run FAILED, then logs its own run
    write_safetensors(emb, {"cls": cls[-3:]}, {"max_length": "64", "dtype": "float32"})
    again = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [x for x in again.stderr.splitlines() if x.startswith("isoprobe:")] == [
        f"isoprobe: MLflow run {run_id} in {server.uri}, left RUNNING when logging failed "
        f"({warning_cause(line)}), is now marked FAILED"
    ]
    assert not pending.exists()
    client = MlflowClient(tracking_uri=server.uri)
    got = client.get_run(run_id)
    assert got.info.status == "FAILED" and INTERRUPTED_TAG in got.data.tags
    assert len(client.get_metric_history(run_id, "isoscore")) == STAGE_LAYERS - calls
    rerun = read_json(project / layout.isotropy_metrics_file("tweets"))["mlflow_run_id"]
    assert rerun not in (None, run_id) and client.get_run(rerun).info.status == "FINISHED"


def warning_cause(warning: str) -> str:
    """The cause quoted in the mid-run warning: `failed mid-run (<cause>); not logged ...`."""
    return warning.split("failed mid-run (", 1)[1].split("); not logged to run", 1)[0]
