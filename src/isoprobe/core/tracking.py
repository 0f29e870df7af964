"""MLflow tracking: one store per repository, shared by `dvc exp run --queue` copies.

Default store: `sqlite:///<repo root>/mlflow.db`, artifacts in `<repo root>/mlartifacts`, both with
absolute paths; MLFLOW_TRACKING_URI (or `tracking.uri`) overrides, e.g. a team's `mlflow server`
at `http://host:port`. The repo root of a queued experiment (which runs in
`<root>/.dvc/tmp/exps/...`) is the original repository, so every run lands in one store. Experiments
are named `isoprobe/<task>`.

An unusable store stops the stage (IsoprobeError) before it writes outputs, or with
`tracking.required: false` the stage runs untracked after one warning on stderr. A tracking server
(http/https URI) must answer GET `<uri>/health` within PROBE_SECONDS first, so an unreachable one is
reported in seconds, not after MLflow's minutes of HTTP retries (which are bounded too, see
HTTP_RETRY_DEFAULTS).

A logging failure mid-run never stops the stage: it finishes its outputs untracked, and one warning
at the end of the run says what was not logged. The run is marked FAILED (never a half-logged
FINISHED run); when even that fails (the server is gone), the run id is kept in
`<repo root>/.isoprobe/unfinished_runs.jsonl` and marked FAILED by the next stage that opens that
store. Calls that hit a busy SQLite store (parallel stages, queued experiments) are retried with
backoff.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from isoprobe.core.config import TrackingConfig
from isoprobe.core.errors import IsoprobeError, describe_error
from isoprobe.core.repo import find_repo_root, git_commit

T = TypeVar("T")
RETRIES = 10
TRANSIENT = ("database is locked", "database table is locked", "database schema has changed")
PROBE_SECONDS = 5.0
# MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) spend ~4 min on each call to a
# server that is gone; these cost ~10 s (retries after 0, 2 and 4 s). A value the user set is kept.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
INTERRUPTED_TAG = "isoprobe.logging_interrupted"
_disabled: set[str] = set()  # stores found unusable (tracking.required: false): warned once


def tracking_uri(cfg: TrackingConfig, root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or f"sqlite:///{root / 'mlflow.db'}"


def uri_source(cfg: TrackingConfig) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "MLFLOW_TRACKING_URI"
    return "tracking.uri" if cfg.uri else "the default store"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def warn(message: str) -> None:
    print(f"isoprobe: warning: {message}", file=sys.stderr, flush=True)


def _cause(err: BaseException) -> str:
    """`err` quoted in a tracking error or warning (its message cut to 200 characters)."""
    return describe_error(err, limit=200)


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


def bound_http_retries() -> None:
    """Set MLflow's HTTP retry variables the user left unset to HTTP_RETRY_DEFAULTS."""
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def probe_server(uri: str, budget: float = PROBE_SECONDS) -> None:
    """Return once the tracking server at `uri` answers GET `<uri>/health` (any HTTP status below
    500; a TLS handshake problem is left to MLflow's client, which has the TLS settings); raise
    ConnectionError when it does not within `budget` seconds."""
    import ssl
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    deadline = time.monotonic() + budget
    while True:
        try:
            with urllib.request.urlopen(url, timeout=max(deadline - time.monotonic(), 0.5)):
                return
        except urllib.error.HTTPError as err:
            if err.code < 500:
                return
            problem: Exception = err
        except urllib.error.URLError as err:
            if isinstance(err.reason, ssl.SSLError):
                return
            problem = err
        except (OSError, ValueError) as err:  # timeout, reset, a malformed URI
            problem = err
        if time.monotonic() + 0.5 >= deadline:
            raise ConnectionError(f"no answer from {url} within {budget:g} s ({_cause(problem)})")
        time.sleep(0.5)


def pending_file(root: Path) -> Path:
    """Where runs that could not be ended (their server was gone) wait to be marked FAILED."""
    return root / ".isoprobe" / "unfinished_runs.jsonl"


def _pending_lock(path: Path) -> Any:
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_name(f".{path.name}.lock"), timeout=30)


def remember_unfinished(root: Path, uri: str, run_id: str, reason: str) -> bool:
    """Add the run to the pending file (rewritten atomically); False when it cannot be written."""
    from isoprobe.core.io import read_jsonl, write_jsonl

    path = pending_file(root)
    row = {"run_id": run_id, "uri": uri, "reason": reason, "time": time.time()}
    try:
        with _pending_lock(path):
            rows = read_jsonl(path) if path.is_file() else []
            write_jsonl(path, [*rows, row])
    except (OSError, ValueError):
        return False
    return True


def _mark_failed(client: Any, run_id: str, reason: str) -> bool:
    """Tag a run INTERRUPTED_TAG=`reason` and end it FAILED unless it has ended; True when done
    (or the run is gone), False when the store did not take it."""
    try:
        run = retry(lambda: client.get_run(run_id))
        if run.info.lifecycle_stage == "active":
            retry(lambda: client.set_tag(run_id, INTERRUPTED_TAG, reason))
            if run.info.status == "RUNNING":
                retry(lambda: client.set_terminated(run_id, "FAILED"))
    except Exception as err:
        return getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"
    return True


def finish_unfinished(client: Any, uri: str, root: Path) -> None:
    """Mark FAILED the runs of store `uri` in the pending file, and drop them from it."""
    from isoprobe.core.io import read_jsonl, write_jsonl

    path = pending_file(root)
    if not path.is_file():
        return
    try:
        with _pending_lock(path):
            rows = read_jsonl(path)
            done = [
                r
                for r in rows
                if r.get("uri") == uri
                and _mark_failed(client, str(r.get("run_id")), str(r.get("reason", "")))
            ]
            left = [r for r in rows if r not in done]
            if not left:
                path.unlink()
            elif done:
                write_jsonl(path, left)
    except (OSError, ValueError):
        return
    for r in done:
        print(
            f"isoprobe: MLflow run {r['run_id']} in {uri}, left RUNNING when logging failed "
            f"({r.get('reason')}), is now marked FAILED",
            file=sys.stderr,
            flush=True,
        )


class Tracker:
    """One MLflow run, logged through an MlflowClient; every method is a no-op when tracking is
    disabled. A failing call disables tracking for the rest of the stage: later calls are counted
    (`lost`, by kind), the run is marked FAILED when it ends (or left in the pending file) and
    `report_lost` says what was not logged."""

    def __init__(
        self,
        client: Any | None = None,
        run: Any | None = None,
        uri: str = "",
        root: Path | None = None,
    ):
        self._client = client
        self.run = run
        self.uri = uri
        self.root = root
        self.lost: Counter[str] = Counter()  # calls not logged after the failure, by kind
        self._failure: tuple[Any, str, str] | None = None  # (client, run id, cause)
        self._unlogged_status: str | None = None
        self._end_state: str | None = None

    @property
    def enabled(self) -> bool:
        return self._client is not None

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run is not None else None

    def _call(self, kind: str, fn: Callable[[Any, str], Any]) -> None:
        if self._client is None:
            self._skipped(kind)
            return
        try:
            retry(lambda: fn(self._client, self.run_id))
        except Exception as err:
            self._broken(err)
            self._skipped(kind)

    def _skipped(self, kind: str) -> None:
        if self._failure is not None:
            self.lost[kind] += 1

    def _broken(self, err: Exception) -> None:
        """Logging failed: the rest of the stage runs untracked; `end` deals with the run."""
        self._failure = (self._client, self.run_id, _cause(err))
        self._client, self.run = None, None

    def end(self, status: str, resumed: bool = False) -> None:
        """End the run with `status` (a resumed run keeps its status unless `status` is FAILED).
        After a logging failure the run is marked FAILED instead, whatever `status` says."""
        if self._failure is None:
            if self._client is None or (resumed and status != "FAILED"):
                return
            client, run_id = self._client, self.run_id
            self._client = None
            try:
                retry(lambda: client.set_terminated(run_id, status))
                return
            except Exception as err:
                self._client = client
                self._broken(err)
        self._give_up(status)

    def _give_up(self, status: str) -> None:
        """Mark the run of a failed logging call FAILED, or leave it in the pending file."""
        if self._failure is None or self._end_state is not None:
            return
        client, run_id, cause = self._failure
        if _mark_failed(client, run_id, cause):
            self._end_state = f"run {run_id} is marked FAILED"
            self._unlogged_status = None if status == "FAILED" else status
            return
        self._unlogged_status = status
        if self.root is not None and remember_unfinished(self.root, self.uri, run_id, cause):
            self._end_state = (
                f"run {run_id} could not be marked FAILED either: it is listed in "
                f"{pending_file(self.root)} and marked FAILED by the next stage that opens "
                "this store"
            )
        else:
            self._end_state = f"run {run_id} could not be marked FAILED either (it stays RUNNING)"

    def report_lost(self) -> None:
        """One warning on stderr when logging failed mid-run: what was not logged, the run's
        state, and how to log the stage again."""
        if self._failure is None:
            return
        _, run_id, cause = self._failure
        lost = [f"{kind} ({n} call{'s' * (n > 1)})" for kind, n in self.lost.items()]
        if self._unlogged_status is not None:
            lost.append(f"end status {self._unlogged_status}")
        stage = os.environ.get("DVC_STAGE") or "<stage>"
        warn(
            f"tracking disabled: logging to the MLflow store {self.uri} failed mid-run ({cause}); "
            f"not logged to run {run_id}: {', '.join(lost) or 'nothing'}; "
            f"{self._end_state or f'run {run_id} is not ended'}; the stage itself went on "
            f"untracked; to log it, fix the store and rerun the stage: dvc repro -f -s {stage}"
        )

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str("null" if v is None else v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call("params", lambda c, r, part=items[i : i + 100]: c.log_batch(r, params=part))

    def log_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if v is not None and v == v
        ]
        if points:
            self._call("metrics", lambda c, r: c.log_batch(r, metrics=points))

    def log_series(
        self, rows: list[dict], step_key: str = "step", keys: list[str] | None = None
    ) -> None:
        """Per-step values as metric histories (one batched call per 1000 points)."""
        if not rows:
            return
        if not self.enabled:
            self._skipped("metrics")
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
            part = points[i : i + 1000]
            self._call("metrics", lambda c, r, part=part: c.log_batch(r, metrics=part))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("artifacts", lambda c, r: c.log_artifact(r, str(path), artifact_path))

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self._call("artifacts", lambda c, r: c.log_artifacts(r, str(folder), artifact_path))

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            self._call("tags", lambda c, r: c.log_batch(r, tags=items))


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


def _connect(
    uri: str, experiment: str | None, artifact_root: Path | None
) -> tuple[Any, str | None]:
    """(MlflowClient, experiment id) once the store answers; a tracking server is probed first."""
    if is_server(uri):
        probe_server(uri)
        bound_http_retries()
    from mlflow.tracking import MlflowClient

    with _init_lock(uri):
        client = retry(lambda: MlflowClient(tracking_uri=uri))
        retry(lambda: client.search_experiments(max_results=1))
        exp_id = None
        if experiment is not None:
            exp_id = retry(lambda: _experiment_id(client, experiment, artifact_root))
    return client, exp_id


def open_store(
    cfg: TrackingConfig, experiment: str | None = None, root: str | Path | None = None
) -> tuple[Any, str | None] | None:
    """(MlflowClient, experiment id) for a usable store (creating `experiment`), else None after
    one warning when `tracking.required` is false; IsoprobeError when it is true. Runs an earlier
    stage left RUNNING in this store (pending file) are marked FAILED."""
    if not cfg.enabled:
        return None
    root = find_repo_root(root)
    uri = tracking_uri(cfg, root)
    if uri in _disabled:
        return None
    default_store = uri == f"sqlite:///{root / 'mlflow.db'}"
    try:
        client, exp_id = _connect(uri, experiment, root / "mlartifacts" if default_store else None)
    except Exception as err:
        where = f"{uri} (from {uri_source(cfg)})"
        start = "start the tracking server, " if is_server(uri) else ""
        if cfg.required:
            raise IsoprobeError(
                f"tracking: cannot use the MLflow store {where}: {_cause(err)}; {start}fix "
                "MLFLOW_TRACKING_URI / tracking.uri, set tracking.required: false to run untracked, "
                "or tracking.enabled: false"
            ) from None
        _disabled.add(uri)
        warn(f"tracking disabled: cannot use the MLflow store {where}: {_cause(err)}")
        return None
    finish_unfinished(client, uri, root)
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
    """Start an MLflow run in experiment `experiment`; it ends FINISHED, or FAILED on an exception
    or after a logging failure (then one warning says what was not logged).

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
    tracker = Tracker(client, run, uri, root)
    try:
        yield tracker
    except BaseException:
        tracker.end("FAILED")
        raise
    else:
        tracker.end("FINISHED", resumed=run_id is not None)
    finally:
        tracker.report_lost()
