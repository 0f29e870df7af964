"""The prepare stage's work: check the source link, read the source, prepare and write the splits."""

from __future__ import annotations

from isoprobe.core.config import Params
from isoprobe.core.io import atomic_dir
from isoprobe.core.layout import prepared_dir
from isoprobe.core.stage import offline_if_local
from isoprobe.data.link import check_link
from isoprobe.data.prepare import prepare_task, write_prepared
from isoprobe.data.sources import read_source


def run_prepare(params: Params, name: str) -> dict:
    """Prepare task `name` into data/prepared/<name>/ (atomically); returns its meta.json."""
    task = params.task(name)
    check_link(name, task)  # what DVC hashed is what is read
    if task.scheme == "hf":
        offline_if_local(task.argument.partition(":")[0])  # a local folder needs no hub
    prepared = prepare_task(read_source(task, f"tasks.{name}"), task, name)
    with atomic_dir(prepared_dir(name)) as tmp:
        write_prepared(prepared, tmp)
    return prepared.meta
