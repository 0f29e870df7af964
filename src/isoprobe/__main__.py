"""`python -m isoprobe check [--params FILE]`: validate a params file; `resolve-model NAME`: show where a model loads from;
`set-args PROFILE [--set KEY=VALUE]`: a profile as `dvc exp run -S` arguments; `results`: a run's results as Markdown."""

from __future__ import annotations

import argparse
import sys

from isoprobe.core.config import load_params
from isoprobe.core.errors import IsoprobeError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="isoprobe", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check", help="validate a params file (exit 2 with a message when invalid)"
    )
    check.add_argument("--params", default="params.yaml")
    res = sub.add_parser("resolve-model", help="print where a model.name loads from")
    res.add_argument("name")
    sa = sub.add_parser(
        "set-args",
        help="print a profile of params overrides as `-S key=value` arguments, one per line "
        "(pipe into `xargs -d '\\n' dvc exp run`)",
    )
    sa.add_argument("profile")
    sa.add_argument("--params", default="params.yaml", help="checked with the overrides applied")
    sa.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a value of the profile (or add one), e.g. model.name=embedded:all-MiniLM-L6-v2; repeatable",
    )  # fmt: skip
    rs = sub.add_parser(
        "results",
        help="print the fine-tuning results (median ± std, paired tests against baseline) and the "
        "pre-trained isotropy of a pipeline run as Markdown, from its metrics files",
    )
    rs.add_argument("--params", default="params.yaml")
    rs.add_argument("--root", default=".", help="the repository the metrics files are in")
    args = p.parse_args(argv)
    try:
        if args.command == "check":
            params = load_params(args.params)
            print(
                f"{args.params}: ok ({len(params.tasks)} tasks defined; pipeline runs {', '.join(params.pipeline.tasks)})"
            )
        elif args.command == "set-args":
            from isoprobe.core.profiles import apply_overrides, load_profile, set_args, with_sets

            overrides = with_sets(load_profile(args.profile), args.set)
            load_params(args.params)  # the base must be valid too
            apply_overrides(args.params, overrides)
            print("\n".join(set_args(overrides)))
        elif args.command == "results":
            from pathlib import Path

            from isoprobe.reporting.reading import ReportInputs
            from isoprobe.reporting.results import results_markdown

            params = load_params(args.params)
            print(results_markdown(ReportInputs.from_params(params, Path(args.root))), end="")
        else:
            from isoprobe.core.models import resolve_model

            m = resolve_model(args.name)
            print(f"{m.name}: {m.kind} {m.location}")
    except IsoprobeError as err:
        print(f"isoprobe: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
