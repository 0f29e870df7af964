"""The report stage's work (`publish_report`): build the report into a temporary folder beside
report/, log index.html and summary.md with the failure counts to the MLflow run `report` (experiment
`layout.REPORT_EXPERIMENT`) and each task x method's seed aggregate to a run of its own
(`layout.AGGREGATE_EXPERIMENT`), then publish it file by file: report/ also holds DVC's .gitignore, so
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
    run `report`; then the seed aggregate of every task x method (`log_aggregates`)."""
    tags = {"stage": "report", "model": params.model.name, "tasks": ",".join(params.finetune.tasks)}
    with tracked_run(
        params.tracking, layout.REPORT_EXPERIMENT, "report", tags=tags, root=root
    ) as run:
        run.log_artifact(built / "index.html")
        run.log_artifact(built / "summary.md")
        failures = numbers["failures"]
        run.log_metrics({"failed_runs": failures["runs"], "skipped_stages": failures["skipped"],
                         "dropped_rows": failures["dropped"]})  # fmt: skip
    log_aggregates(params, numbers["results"], root, run.run_id)


# the seed aggregate's numbers logged as metrics: (metric name, key in the comparison or None)
AGGREGATE_METRICS = (("n_seeds", "n"), ("median", "median"), ("std", "std"), ("mean", "mean"),
                     ("min", "min"), ("max", "max"), ("degenerate_rate", "degenerate_rate"))  # fmt: skip
COMPARISON_METRICS = ("delta_mean", "delta_median", "p_value", "p_adjusted", "ci_low", "ci_high")


def aggregate_metrics(result: dict) -> dict[str, float | None]:
    """The MLflow metrics of one task x method of `numbers["results"]`: the seed statistics, the
    degenerate rate and, against baseline, the differences, p and adjusted p, the interval and
    whether the difference holds after Holm's correction (1/0)."""
    out = {name: result.get(key) for name, key in AGGREGATE_METRICS}
    cmp = result.get("vs_baseline") or {}
    out |= {k: cmp.get(k) for k in COMPARISON_METRICS}
    if "significant_adjusted" in cmp:
        out["significant_adjusted"] = float(cmp["significant_adjusted"])
    return out


def log_aggregates(params: Params, results: dict, root: Path, report_run: str | None) -> None:
    """One MLflow run per task x method in `layout.AGGREGATE_EXPERIMENT`, named "<task>/<method>",
    holding its seed aggregate (`aggregate_metrics`), tagged task, method, metric and the report
    run, so the MLflow UI lists treatments side by side (filter or group by `tags.task`)."""
    report = params.report
    for task, methods in results.items():
        for method, result in methods.items():
            cmp = result.get("vs_baseline") or {}
            tags = {"stage": "report", "kind": "seed_aggregate", "task": task, "method": method,
                    "metric": result.get("metric"), "model": params.model.name,
                    "report_run_id": report_run}  # fmt: skip
            with tracked_run(params.tracking, layout.AGGREGATE_EXPERIMENT, f"{task}/{method}",
                             tags=tags, root=root) as run:  # fmt: skip
                run.log_params({"seeds": ",".join(map(str, sorted(result["seeds"]))),
                                "alpha": report.alpha, "n_boot": report.n_boot,
                                "comparisons": cmp.get("family")})  # fmt: skip
                run.log_metrics(aggregate_metrics(result))


def publish(built: Path, out: Path) -> None:
    """Move the report in `built` into `out`: plots/ at once, then summary.md, index.html last."""
    with atomic_dir(layout.report_plots_dir(out)) as plots:
        for png in layout.report_plots_dir(built).iterdir():
            shutil.move(png, plots / png.name)
    for name in ("summary.md", "index.html"):
        os.replace(built / name, out / name)
