"""MLflow tracking: one store per repository, shared by `dvc exp run --queue` copies.

Default store: `sqlite:///<repo root>/mlflow.db`, artifacts in `<repo root>/mlartifacts`, both with
absolute paths; MLFLOW_TRACKING_URI (or `tracking.uri`) overrides. The repo root of a queued
experiment (which runs in `<root>/.dvc/tmp/exps/...`) is the original repository, so every run lands
in one store. Experiments are named `isoprobe/<task>`.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from isoprobe.config import TrackingConfig
from isoprobe.errors import IsoprobeError
from isoprobe.paths import find_repo_root


def tracking_uri(cfg: TrackingConfig, root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or f"sqlite:///{root / 'mlflow.db'}"


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Tracker:
    """Thin wrapper over an active MLflow run; every method is a no-op when tracking is disabled."""

    def __init__(self, mlflow_module: Any | None, run: Any | None):
        self._mlflow = mlflow_module
        self.run = run

    @property
    def enabled(self) -> bool:
        return self._mlflow is not None

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run is not None else None

    def log_params(self, params: dict[str, Any]) -> None:
        if self.enabled:
            self._mlflow.log_params({k: ("null" if v is None else v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        if self.enabled:
            clean = {k: float(v) for k, v in metrics.items() if v is not None and v == v}
            self._mlflow.log_metrics(clean, step=step)

    def log_series(
        self, rows: list[dict], step_key: str = "step", keys: list[str] | None = None
    ) -> None:
        """Per-step values as metric histories (one batched call per 1000 points)."""
        if not self.enabled or not rows:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        keys = keys or [k for k in rows[0] if k != step_key]
        points = [
            Metric(k, float(r[k]), now, int(r[step_key]))
            for r in rows
            for k in keys
            if r.get(k) is not None and r[k] == r[k]
        ]
        client = self._mlflow.tracking.MlflowClient()
        for i in range(0, len(points), 1000):
            client.log_batch(self.run_id, metrics=points[i : i + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._mlflow.log_artifact(str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._mlflow.log_artifacts(str(folder), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items() if v is not None})


def _experiment_id(mlflow, name: str, artifact_root: Path | None) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (artifact_root / name.replace("/", "_")).as_uri() if artifact_root else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by a parallel stage
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextmanager
def tracked_run(
    cfg: TrackingConfig,
    experiment: str,
    run_name: str,
    tags: dict[str, Any] | None = None,
    root: str | Path | None = None,
    run_id: str | None = None,
) -> Iterator[Tracker]:
    """Start an MLflow run in experiment `experiment`; it ends FINISHED, or FAILED on an exception.

    Standard tags: git commit, DVC stage (DVC_STAGE), DVC experiment (DVC_EXP_NAME). With `run_id`,
    an existing run is resumed (to add what a later stage measured) and its tags are left alone.
    """
    if not cfg.enabled:
        yield Tracker(None, None)
        return
    root = find_repo_root(root)
    uri = tracking_uri(cfg, root)
    import mlflow

    default_store = uri.startswith("sqlite:///") and uri == f"sqlite:///{root / 'mlflow.db'}"
    try:
        mlflow.set_tracking_uri(uri)
        exp_id = _experiment_id(mlflow, experiment, root / "mlartifacts" if default_store else None)
    except Exception as err:
        raise IsoprobeError(
            f"tracking: cannot use the MLflow store {uri} ({type(err).__name__}: {str(err)[:200]}); "
            "fix MLFLOW_TRACKING_URI / tracking.uri, or set tracking.enabled: false"
        ) from None
    commit = git_commit(root)
    all_tags = {
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "dvc_stage": os.environ.get("DVC_STAGE"),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME"),
        **(tags or {}),
    }
    if run_id is not None:
        with mlflow.start_run(run_id=run_id) as run:
            yield Tracker(mlflow, run)
        return
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        tracker = Tracker(mlflow, run)
        tracker.set_tags(all_tags)
        yield tracker
