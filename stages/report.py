"""Stage `report`: report/index.html (one self-contained page: inline CSS, embedded figures) and
report/summary.md (for CI job summaries), built only from DVC-tracked metrics and plot files, with
its figures in report/plots/ (DVC plots); index.html is also logged to an MLflow run `report`."""

import argparse

from isoprobe.core.config import load_params
from isoprobe.core.stage import run_stage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args()
    params = load_params(args.params)

    from isoprobe.core.layout import report_dir
    from isoprobe.reporting.run import publish_report

    numbers = publish_report(params)
    out, failed = report_dir(), numbers["failures"]["runs"]
    print(f"report: {out / 'index.html'}, {out / 'summary.md'} ({failed} failed runs)")


if __name__ == "__main__":
    run_stage(main)
