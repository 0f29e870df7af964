"""Stage `report`: report/index.html (one self-contained page: inline CSS, embedded figures) and
report/summary.md (for CI job summaries), built only from DVC-tracked metrics and plot files, with
its figures in report/plots/ (DVC plots); index.html is also logged to an MLflow run `report`."""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from isoprobe.core.config import load_params
from isoprobe.core.stage import run_stage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args()
    params = load_params(args.params)

    from isoprobe.core.io import atomic_dir
    from isoprobe.core.repo import find_repo_root
    from isoprobe.core.tracking import check_store, tracked_run
    from isoprobe.reporting.report import ReportInputs, build

    check_store(params.tracking, "isoprobe/report", root=find_repo_root())  # fail fast
    ft = params.finetune
    inputs = ReportInputs.from_params(params, Path.cwd())
    out = Path("report")
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".report.tmp-", dir=".") as work:
        tmp = Path(work)
        numbers = build(inputs, tmp)
        with tracked_run(
            params.tracking,
            "isoprobe/report",
            "report",
            tags={"stage": "report", "model": params.model.name, "tasks": ",".join(ft.tasks)},
            root=find_repo_root(),
        ) as run:
            run.log_artifact(tmp / "index.html")
            run.log_artifact(tmp / "summary.md")
            run.log_metrics(
                {
                    "failed_runs": numbers["failures"]["runs"],
                    "skipped_stages": numbers["failures"]["skipped"],
                    "dropped_rows": numbers["failures"]["dropped"],
                }
            )
        # publish file by file (report/ also holds DVC's .gitignore), the page last
        with atomic_dir(out / "plots") as plots:
            for png in (tmp / "plots").iterdir():
                shutil.move(png, plots / png.name)
        for name in ("summary.md", "index.html"):
            os.replace(tmp / name, out / name)
    print(
        f"report: report/index.html, report/summary.md ({numbers['failures']['runs']} failed runs)"
    )


if __name__ == "__main__":
    run_stage(main)
