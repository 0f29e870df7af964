"""Helpers for end-to-end tests: a git-initialised copy of the project with small params, and
commands run in it with a clean environment (offline HF, no inherited MLflow/DVC variables)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, SHARED

DVC = str(Path(sys.executable).with_name("dvc"))
SMALL = {"train": 40, "dev": 12, "test": 12}


def small_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pipeline"]["tasks"] = ["tweets"]
    for task in params["tasks"].values():
        task["max_rows"] = dict(SMALL)
    params["embed"].update(batch_size=16, max_length=64)
    params["isotropy"]["heatmap_dims"] = 8
    params["finetune"].update(methods=["baseline", "isobn"], seeds=[0])
    params["finetune"]["train"].update(epochs=1, batch_size=8, max_length=32)
    params["probe"]["mlp"].update(hidden_grid=[[32, 32]], l2_grid=[1e-4, 1e-2])
    return params


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
    )
    return env


def sh(
    repo: Path, *args: str, check: bool = True, timeout: int = 900
) -> subprocess.CompletedProcess:
    res = subprocess.run(
        list(args), cwd=repo, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return res


def copy_repo(base: Path, params: dict | None = None) -> Path:
    """A committed copy of the project's tracked files in base/repo (no metrics, plots or dvc.lock),
    beside a link to ../shared like the real checkout. Nothing is run yet."""
    dest = base / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file() and not f.startswith(("metrics/", "plots/")) and f != "dvc.lock":
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    if SHARED.is_dir() and not (base / "shared").exists():
        (base / "shared").symlink_to(SHARED.parent)
    write_params(dest, params if params is not None else small_params())
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@example.com")
    sh(dest, "git", "init", "-q", "-b", "main")
    sh(dest, *git, "add", "-A")
    sh(dest, *git, "commit", "-qm", "copy")
    return dest
