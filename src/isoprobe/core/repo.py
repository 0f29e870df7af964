"""The repository a stage runs in: its root (also from inside a `dvc exp run --queue` copy), where a
user-given path resolves, and its git commit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def find_repo_root(start: str | Path | None = None) -> Path:
    """The folder holding `.dvc` (or `.git`) above `start`; for a DVC experiment copy under
    `<root>/.dvc/tmp/exps/`, the original `<root>`."""
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for d in (here, *here.parents):
        if (d / ".dvc").is_dir() or (d / ".git").exists():
            return d
    return here


def experiment_copy_root(start: str | Path | None = None) -> Path | None:
    """The original repository when running inside a `dvc exp run --queue/--temp` copy, else None."""
    here = Path(start or os.getcwd()).resolve()
    root = find_repo_root(here)
    return root if ".dvc" in here.relative_to(root).parts[:1] else None


def data_path(arg: str | Path) -> Path:
    """A user-given path (data source, local model). Relative paths are relative to the working
    directory (the repository root under DVC); inside a queued DVC experiment copy, a relative path
    that is missing there (such as `../shared/...`) is taken relative to the original repository."""
    path = Path(arg).expanduser()
    if path.is_absolute() or path.exists():
        return path
    original = experiment_copy_root()
    if original is not None and (original / path).exists():
        return original / path
    return path


def git(root: Path, *args: str) -> str | None:
    """`git ARGS` in `root`: its stripped stdout, or None where git is missing or fails."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(root: Path) -> str | None:
    """The commit checked out in `root` (None outside git)."""
    return git(root, "rev-parse", "HEAD") or None


INSTALLED = "<site-packages>"


def portable_path(path: str | Path) -> str:
    """`path` as outputs record it, the same on every machine for the same file: a file of an
    installed package as `<site-packages>/<package>/...`, a file in the repository (or, from a
    `dvc exp run --queue` copy, in the original one) relative to its root, anything else as given.
    Outputs that held install locations hashed differently on every clone."""
    path = Path(path)
    parts = path.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("site-packages", "dist-packages"):
            return "/".join((INSTALLED, *parts[i + 1 :]))
    if path.is_absolute():
        for root in (experiment_copy_root(), find_repo_root()):
            if root is not None and path.is_relative_to(root.resolve()):
                return path.relative_to(root.resolve()).as_posix()
    return str(path)
