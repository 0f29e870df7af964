"""`python -m isoprobe check [--params FILE]`: validate a params file; `resolve-model NAME`: show where a model loads from."""

from __future__ import annotations

import argparse
import sys

from isoprobe.config import load_params
from isoprobe.errors import IsoprobeError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="isoprobe", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check", help="validate a params file (exit 2 with a message when invalid)"
    )
    check.add_argument("--params", default="params.yaml")
    res = sub.add_parser("resolve-model", help="print where a model.name loads from")
    res.add_argument("name")
    args = p.parse_args(argv)
    try:
        if args.command == "check":
            params = load_params(args.params)
            print(
                f"{args.params}: ok ({len(params.tasks)} tasks defined; pipeline runs {', '.join(params.pipeline.tasks)})"
            )
        else:
            from isoprobe.models import resolve_model

            m = resolve_model(args.name)
            print(f"{m.name}: {m.kind} {m.location}")
    except IsoprobeError as err:
        print(f"isoprobe: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
