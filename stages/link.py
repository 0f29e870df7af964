"""Stage `link@<task>`: point data/sources/<task> at the file or folder the task's source reads, so
that DVC hashes the source data itself (an uncached output that `prepare@<task>` depends on)."""

from isoprobe.core.config import load_params
from isoprobe.core.stage import run_stage, task_arguments
from isoprobe.data.link import link_source


def main() -> None:
    args = task_arguments(__doc__)
    params = load_params(args.params)
    link = link_source(args.task, params.task(args.task))
    target = link.resolve() if link.is_symlink() else "a pin of the hub dataset"
    print(f"link {args.task}: {link} -> {target}")


if __name__ == "__main__":
    run_stage(main)
