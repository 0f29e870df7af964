"""What every stage script shares: argument parsing, params loading, clean failure."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from isoprobe.errors import IsoprobeError


def offline_if_local(model_name: str) -> None:
    """Embedded and local models need no hub: keep HF libraries off the network for them."""
    from isoprobe.paths import data_path

    if model_name.startswith("embedded:") or data_path(model_name).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def task_arguments(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("task", help="task name (a key under `tasks` in params.yaml)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p.parse_args()


def run_stage(main: Callable[[], None]) -> None:
    """Run `main`; an IsoprobeError becomes one message on stderr and exit code 2."""
    try:
        main()
    except IsoprobeError as err:
        print(f"isoprobe: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
