"""What every stage script shares: argument parsing, params loading, clean failure."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable

from isoprobe.core.errors import IsoprobeError


def offline_if_local(model_name: str) -> None:
    """Embedded and local models need no hub: keep HF libraries off the network for them."""
    from isoprobe.core.repo import data_path

    if model_name.startswith("embedded:") or data_path(model_name).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def task_arguments(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("task", help="task name (a key under `tasks` in params.yaml)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p.parse_args()


def instance_arguments(description: str, finetune_task: bool = False) -> argparse.Namespace:
    """Arguments of a matrix instance: task, method, seed (finetune, embed_post, probe_post), and
    with `finetune_task` the option --finetune-task (the task the encoder was fine-tuned on)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("task", help="task name (one of finetune.tasks)")
    p.add_argument("method", help="[CLS] treatment (one of finetune.methods)")
    p.add_argument("seed", type=int, help="seed (one of finetune.seeds)")
    if finetune_task:
        p.add_argument(
            "--finetune-task",
            help="the task the encoder was fine-tuned on (default: `task` itself)",
        )
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p.parse_args()


def check_instance(args: argparse.Namespace, finetune) -> None:
    """The (task, method, seed) of a matrix instance must be in the params' grid."""
    ft = finetune
    if args.task not in ft.tasks or args.method not in ft.methods or args.seed not in ft.seeds:
        raise IsoprobeError(
            f"({args.task}, {args.method}, {args.seed}) is not in finetune.tasks {ft.tasks} x "
            f"finetune.methods {ft.methods} x finetune.seeds {ft.seeds}"
        )


FILE_SYSTEM_HINTS = {
    errno.ENOSPC: "the disk is full: free space and rerun",
    errno.EDQUOT: "the disk quota is used up: free space and rerun",
    errno.EROFS: "the file system is read-only: run where the outputs can be written",
    errno.EACCES: "no permission: make the output folders writable",
    errno.EPERM: "no permission: make the output folders writable",
    errno.EEXIST: "a file is where a folder goes: move it away",
    errno.ENOTDIR: "a file is where a folder goes: move it away",
    errno.EISDIR: "a folder is where a file goes: move it away",
}


def file_system_message(err: OSError) -> str:
    """One line for an OSError of the file system: the path, what it said and what to do."""
    paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p)
    what = err.strerror or type(err).__name__
    hint = FILE_SYSTEM_HINTS.get(err.errno, "check the path, free space and permissions")
    return f"{paths or 'file system'}: {what}; {hint}"


def run_stage(main: Callable[[], None]) -> None:
    """Run `main`; an IsoprobeError, or an OSError of the file system (disk full, read-only, a
    file in the way), becomes one message on stderr and exit code 2. Outputs are written
    atomically, so a failed stage leaves the previous version of each output or none."""
    try:
        main()
    except IsoprobeError as err:
        print(f"isoprobe: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except OSError as err:
        print(f"isoprobe: error: {file_system_message(err)}", file=sys.stderr)
        sys.exit(2)
