"""Stage `prepare@<task>`: read the task's source, validate, split, subsample; write
data/prepared/<task>/{train,dev,test}.jsonl and meta.json."""

from isoprobe.core.config import load_params
from isoprobe.core.stage import run_stage, task_arguments
from isoprobe.data.run import run_prepare


def main() -> None:
    args = task_arguments(__doc__)
    meta = run_prepare(load_params(args.params), args.task)
    sizes = ", ".join(f"{s} {c['rows']}" for s, c in meta["counts"].items())
    dropped = ", ".join(f"{k} {v}" for k, v in meta["dropped"].items() if v) or "none"
    print(f"prepare {args.task}: {meta['source']} -> {sizes}; dropped: {dropped}")


if __name__ == "__main__":
    run_stage(main)
