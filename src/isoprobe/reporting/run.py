"""The report stage's work (`publish_report`): build the report into a temporary folder beside
report/, log index.html and summary.md with the failure counts to the MLflow run `report` (experiment
`layout.REPORT_EXPERIMENT`), then publish it file by file: report/ also holds DVC's .gitignore, so
the folder is never replaced whole; plots/ is swapped in atomically, index.html goes last."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from isoprobe.core import layout
from isoprobe.core.config import Params
from isoprobe.core.io import atomic_dir
from isoprobe.core.repo import find_repo_root
from isoprobe.core.tracking import check_store, tracked_run
from isoprobe.reporting.reading import ReportInputs
from isoprobe.reporting.report import build


def publish_report(params: Params, workdir: Path | None = None) -> dict:
    """The report of the run in `workdir` (default: the working directory, the repository root
    under DVC) into its report/; returns the numbers shown. The MLflow store is checked before
    anything is read or written."""
    workdir = Path.cwd() if workdir is None else Path(workdir)
    root = find_repo_root(workdir)
    check_store(params.tracking, layout.REPORT_EXPERIMENT, root=root)  # fail fast
    out = workdir / layout.report_dir()
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".report.tmp-", dir=workdir) as work:
        tmp = Path(work)
        numbers = build(ReportInputs.from_params(params, workdir), tmp)
        log_report(params, tmp, numbers, root)
        publish(tmp, out)
    return numbers


def log_report(params: Params, built: Path, numbers: dict, root: Path) -> None:
    """index.html and summary.md of the report in `built`, and its failure counts, as the MLflow
    run `report`."""
    tags = {"stage": "report", "model": params.model.name, "tasks": ",".join(params.finetune.tasks)}
    with tracked_run(
        params.tracking, layout.REPORT_EXPERIMENT, "report", tags=tags, root=root
    ) as run:
        run.log_artifact(built / "index.html")
        run.log_artifact(built / "summary.md")
        failures = numbers["failures"]
        run.log_metrics({"failed_runs": failures["runs"], "skipped_stages": failures["skipped"],
                         "dropped_rows": failures["dropped"]})  # fmt: skip


def publish(built: Path, out: Path) -> None:
    """Move the report in `built` into `out`: plots/ at once, then summary.md, index.html last."""
    with atomic_dir(layout.report_plots_dir(out)) as plots:
        for png in layout.report_plots_dir(built).iterdir():
            shutil.move(png, plots / png.name)
    for name in ("summary.md", "index.html"):
        os.replace(built / name, out / name)
