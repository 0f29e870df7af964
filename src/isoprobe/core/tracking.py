"""MLflow tracking: one store per repository, shared by `dvc exp run --queue` copies.

Default store: `sqlite:///<repo root>/mlflow.db`, artifacts in `<repo root>/mlartifacts`, both with
absolute paths; MLFLOW_TRACKING_URI (or `tracking.uri`) overrides. The repo root of a queued
experiment (which runs in `<root>/.dvc/tmp/exps/...`) is the original repository, so every run lands
in one store. Experiments are named `isoprobe/<task>`.

An unusable store stops the stage (IsoprobeError) before it writes outputs, or with
`tracking.required: false` the stage runs untracked after one warning on stderr. A logging failure
mid-run marks the run FAILED (never a half-logged FINISHED run). Calls that hit a busy SQLite store
(parallel stages, queued experiments) are retried with backoff.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from isoprobe.core.config import TrackingConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.repo import find_repo_root, git_commit

T = TypeVar("T")
RETRIES = 10
TRANSIENT = ("database is locked", "database table is locked", "database schema has changed")
_disabled: set[str] = set()  # stores found unusable (tracking.required: false): warned once


def tracking_uri(cfg: TrackingConfig, root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or f"sqlite:///{root / 'mlflow.db'}"


def uri_source(cfg: TrackingConfig) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "MLFLOW_TRACKING_URI"
    return "tracking.uri" if cfg.uri else "the default store"


def warn(message: str) -> None:
    print(f"isoprobe: warning: {message}", file=sys.stderr, flush=True)


def _cause(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def retry(fn: Callable[[], T], attempts: int = RETRIES) -> T:
    """`fn()`, retried with jittered exponential backoff (up to ~20 s) while SQLite is busy."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as err:
            if i == attempts - 1 or not any(s in _cause(err) for s in TRANSIENT):
                raise
            time.sleep(min(0.05 * 2**i, 5.0) * (0.5 + random.random()))
    raise AssertionError("unreachable")


class Tracker:
    """One MLflow run, logged through an MlflowClient; every method is a no-op when tracking is
    disabled. A failing call marks the run FAILED, then raises IsoprobeError (`required`) or
    disables tracking for the rest of the stage with a warning."""

    def __init__(
        self,
        client: Any | None = None,
        run: Any | None = None,
        uri: str = "",
        required: bool = True,
    ):
        self._client = client
        self.run = run
        self.uri = uri
        self.required = required

    @property
    def enabled(self) -> bool:
        return self._client is not None

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run is not None else None

    def _call(self, fn: Callable[[Any, str], Any]) -> None:
        if self._client is None:
            return
        try:
            retry(lambda: fn(self._client, self.run_id))
        except Exception as err:
            self._broken(err)

    def _broken(self, err: Exception) -> None:
        client, run_id = self._client, self.run_id
        self._client, self.run = None, None
        try:
            retry(lambda: client.set_terminated(run_id, "FAILED"), attempts=3)
            state = f"run {run_id} is marked FAILED"
        except Exception:
            state = f"run {run_id} could not be marked FAILED either (it stays RUNNING)"
        msg = f"logging to the MLflow store {self.uri} failed mid-run ({_cause(err)}); {state}"
        if self.required:
            raise IsoprobeError(
                f"tracking: {msg}; fix the store, or set tracking.required: false to run untracked"
            ) from None
        warn(f"tracking disabled: {msg}; the rest of the stage runs untracked")

    def end(self, status: str, resumed: bool = False) -> None:
        """End the run with `status` (a resumed run keeps its status unless `status` is FAILED)."""
        if self._client is None or (resumed and status != "FAILED"):
            return
        client, run_id = self._client, self.run_id
        self._client = None
        try:
            retry(lambda: client.set_terminated(run_id, status))
        except Exception as err:
            self._client = client
            self._broken(err)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str("null" if v is None else v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call(lambda c, r, part=items[i : i + 100]: c.log_batch(r, params=part))

    def log_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if v is not None and v == v
        ]
        if points:
            self._call(lambda c, r: c.log_batch(r, metrics=points))

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
        for i in range(0, len(points), 1000):
            self._call(lambda c, r, part=points[i : i + 1000]: c.log_batch(r, metrics=part))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(lambda c, r: c.log_artifact(r, str(path), artifact_path))

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self._call(lambda c, r: c.log_artifacts(r, str(folder), artifact_path))

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            self._call(lambda c, r: c.log_batch(r, tags=items))


def _init_lock(uri: str) -> Any:
    """An inter-process lock held while a SQLite store is opened (MLflow creates and migrates the
    tables of a new store; parallel stages doing it at once corrupt it); a no-op for other stores."""
    if not uri.startswith("sqlite:///"):
        return nullcontext()
    import hashlib
    import tempfile

    from filelock import FileLock

    db = os.path.abspath(uri.removeprefix("sqlite:///").partition("?")[0])
    key = hashlib.sha256(db.encode()).hexdigest()[:16]
    return FileLock(os.path.join(tempfile.gettempdir(), f"isoprobe-mlflow-{key}.lock"), timeout=300)


def _experiment_id(client: Any, name: str, artifact_root: Path | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (artifact_root / name.replace("/", "_")).as_uri() if artifact_root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by a parallel stage
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def open_store(
    cfg: TrackingConfig, experiment: str | None = None, root: str | Path | None = None
) -> tuple[Any, str | None] | None:
    """(MlflowClient, experiment id) for a usable store (creating `experiment`), else None after
    one warning when `tracking.required` is false; IsoprobeError when it is true."""
    if not cfg.enabled:
        return None
    root = find_repo_root(root)
    uri = tracking_uri(cfg, root)
    if uri in _disabled:
        return None
    default_store = uri == f"sqlite:///{root / 'mlflow.db'}"
    try:
        from mlflow.tracking import MlflowClient

        with _init_lock(uri):
            client = retry(lambda: MlflowClient(tracking_uri=uri))
            retry(lambda: client.search_experiments(max_results=1))
            exp_id = None
            if experiment is not None:
                art = root / "mlartifacts" if default_store else None
                exp_id = retry(lambda: _experiment_id(client, experiment, art))
    except Exception as err:
        where = f"{uri} (from {uri_source(cfg)})"
        if cfg.required:
            raise IsoprobeError(
                f"tracking: cannot use the MLflow store {where}: {_cause(err)}; fix "
                "MLFLOW_TRACKING_URI / tracking.uri, set tracking.required: false to run untracked, "
                "or tracking.enabled: false"
            ) from None
        _disabled.add(uri)
        warn(f"tracking disabled: cannot use the MLflow store {where}: {_cause(err)}")
        return None
    return client, exp_id


def check_store(
    cfg: TrackingConfig, experiment: str | None = None, root: str | Path | None = None
) -> bool:
    """Whether runs can be tracked; call it before writing outputs (it raises IsoprobeError for an
    unusable store when `tracking.required` is true)."""
    return open_store(cfg, experiment, root) is not None


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
    an existing run is resumed (to add what a later stage measured): its tags and status are left
    alone unless the stage fails.
    """
    store = open_store(cfg, experiment, root)
    if store is None:
        yield Tracker()
        return
    client, exp_id = store
    root = find_repo_root(root)
    uri = tracking_uri(cfg, root)
    try:
        if run_id is not None:
            run = retry(lambda: client.get_run(run_id))
        else:
            from mlflow.tracking.context.registry import resolve_tags

            commit = git_commit(root)
            all_tags = {
                "git_commit": commit,
                "mlflow.source.git.commit": commit,
                "dvc_stage": os.environ.get("DVC_STAGE"),
                "dvc_exp_name": os.environ.get("DVC_EXP_NAME"),
                **(tags or {}),
            }
            clean = {k: str(v) for k, v in all_tags.items() if v is not None}
            run = retry(
                lambda: client.create_run(exp_id, tags=resolve_tags(clean), run_name=run_name)
            )
    except Exception as err:
        if cfg.required:
            raise IsoprobeError(
                f"tracking: cannot start a run in the MLflow store {uri}: {_cause(err)}; fix the "
                "store, or set tracking.required: false to run untracked"
            ) from None
        warn(f"tracking disabled: cannot start a run in the MLflow store {uri}: {_cause(err)}")
        yield Tracker()
        return
    tracker = Tracker(client, run, uri, cfg.required)
    try:
        yield tracker
    except BaseException:
        try:
            tracker.end("FAILED")
        except IsoprobeError as err:  # the stage's own error matters more
            warn(str(err))
        raise
    tracker.end("FINISHED", resumed=run_id is not None)
