"""Stage `prepare@<task>`: read the task's source, validate, split, subsample; write
data/prepared/<task>/{train,dev,test}.jsonl and meta.json."""

from isoprobe.core.config import load_params
from isoprobe.core.io import atomic_dir
from isoprobe.core.layout import prepared_dir
from isoprobe.core.stage import offline_if_local, run_stage, task_arguments
from isoprobe.data.link import check_link
from isoprobe.data.prepare import prepare_task, write_prepared
from isoprobe.data.sources import read_source


def main() -> None:
    args = task_arguments(__doc__)
    params = load_params(args.params)
    task = params.task(args.task)
    check_link(args.task, task)  # what DVC hashed is what is read
    if task.scheme == "hf":
        offline_if_local(task.argument.partition(":")[0])  # a local folder needs no hub
    prepared = prepare_task(read_source(task, f"tasks.{args.task}"), task, args.task)
    with atomic_dir(prepared_dir(args.task)) as tmp:
        write_prepared(prepared, tmp)
    m = prepared.meta
    sizes = ", ".join(f"{s} {c['rows']}" for s, c in m["counts"].items())
    dropped = ", ".join(f"{k} {v}" for k, v in m["dropped"].items() if v) or "none"
    print(f"prepare {args.task}: {m['source']} -> {sizes}; dropped: {dropped}")


if __name__ == "__main__":
    run_stage(main)
