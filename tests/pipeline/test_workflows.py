"""The GitHub workflows: actionlint passes on each of them (and fails on broken ones), pipeline.yml
has the triggers and steps the README promises, and its bash steps behave (run with a stub `dvc`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"
PIPELINE = WORKFLOWS / "pipeline.yml"

# ci.yml is kept as it is (it runs .ci/run); the only thing actionlint says about it is that the
# Node 20 runtime of the action versions it pins is deprecated. Every other file is linted strictly.
IGNORED: dict[str, list[str]] = {}  # file name -> regexes of actionlint messages to let pass


def actionlint_exe() -> str | None:
    """The `actionlint` of this venv (a test extra), else the one on PATH."""
    beside = Path(sys.executable).with_name("actionlint")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("actionlint")


requires_actionlint = pytest.mark.skipif(
    actionlint_exe() is None,
    reason="no actionlint executable next to the Python interpreter nor on PATH "
    "(install the test extra: pip install -e '.[test]')",
)


def run_actionlint(path: Path, cwd: Path, ignore: list[str] = ()) -> subprocess.CompletedProcess:
    cmd = [actionlint_exe(), "-no-color"]
    for pattern in ignore:
        cmd += ["-ignore", pattern]
    return subprocess.run(
        [*cmd, str(path)], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@requires_actionlint
@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.y*ml")), ids=lambda p: p.name)
def test_actionlint_passes(path):
    res = run_actionlint(path, REPO, IGNORED.get(path.name, []))
    assert res.returncode == 0, (
        f"actionlint {path.name} (exit {res.returncode}):\n{res.stdout}{res.stderr}"
    )


BROKEN = {
    "typo in runs-on": (
        "jobs:\n  a:\n    runs-onn: ubuntu-latest\n    steps:\n      - run: echo hi\n",
        'unexpected key "runs-onn"',
    ),
    "untrusted input inline in run": (
        "jobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n',
        "potentially untrusted",
    ),
    "undefined dispatch input": (
        "jobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - env:\n          PARAMS: ${{ inputs.parms }}\n"
        '        run: dvc exp run -S "$PARAMS"\n',
        'property "parms" is not defined',
    ),
}


@requires_actionlint
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_actionlint_fails_on_a_broken_workflow(tmp_path, case):
    jobs, expected = BROKEN[case]
    head = "on:\n  pull_request:\n  workflow_dispatch:\n    inputs:\n      params:\n        type: string\n"
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    (folder / "broken.yml").write_text(head + jobs, encoding="utf-8")
    res = run_actionlint(folder / "broken.yml", tmp_path)
    assert res.returncode == 1, f"exit {res.returncode}:\n{res.stdout}{res.stderr}"
    assert expected in res.stdout, res.stdout


# --- pipeline.yml's structure -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline():
    wf = yaml.safe_load(PIPELINE.read_text(encoding="utf-8"))
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the bare key `on` as True
    return wf


def steps_of(wf):
    (job,) = wf["jobs"].values()
    return job["steps"]


def step(wf, *, uses=None, runs=None):
    """The only step using the action `uses` (any version), or whose script contains `runs`."""
    found = [
        s
        for s in steps_of(wf)
        if (uses and s.get("uses", "").split("@")[0] == uses) or (runs and runs in s.get("run", ""))
    ]
    assert len(found) == 1, f"{len(found)} steps match uses={uses} runs={runs}"
    return found[0]


def test_pipeline_triggers_permissions_and_limits(pipeline):
    assert {"push", "pull_request", "workflow_dispatch"} <= set(pipeline["on"])
    params = pipeline["on"]["workflow_dispatch"]["inputs"]["params"]
    assert params["type"] == "string" and "-S" in params["description"]
    assert pipeline["permissions"] == {"contents": "read"}
    assert "github.ref" in pipeline["concurrency"]["group"]
    (job,) = pipeline["jobs"].values()
    assert 0 < job["timeout-minutes"] <= 360
    assert job["env"]["HF_HUB_OFFLINE"] == "1"


def test_pipeline_steps(pipeline):
    checkout = step(pipeline, uses="actions/checkout")
    assert checkout["with"]["fetch-depth"] == 0
    assert step(pipeline, uses="actions/setup-python")["with"]["python-version"] == "3.11"
    assert "pip install torch==2.13.0 -e ." in step(pipeline, runs="pip install")["run"]

    cache = step(pipeline, uses="actions/cache")["with"]
    assert cache["path"].strip() == ".dvc/cache"
    assert "hashFiles(" in cache["key"]
    assert all(f in cache["key"] for f in ("dvc.lock", "params.yaml", "dvc.yaml"))
    assert cache["restore-keys"].strip() and cache["key"].startswith(cache["restore-keys"].strip())

    repro = step(pipeline, runs="dvc repro")
    assert "workflow_dispatch" in repro["if"]

    summary = step(pipeline, runs="dvc metrics diff --md")
    assert "GITHUB_STEP_SUMMARY" in summary["run"] and "report/summary.md" in summary["run"]

    upload = step(pipeline, uses="actions/upload-artifact")
    assert upload["with"]["path"].rstrip("/") == "report"
    assert upload["with"]["if-no-files-found"] == "warn"

    names = [s.get("uses", "").split("@")[0] or s["run"] for s in steps_of(pipeline)]
    order = [
        names.index(s) for s in ("actions/checkout", "actions/cache", "actions/upload-artifact")
    ]
    assert order == sorted(order)
    assert steps_of(pipeline).index(repro) < steps_of(pipeline).index(summary)


def test_no_expression_inside_a_script(pipeline):
    """Inputs and event fields reach the scripts through env only (no script injection)."""
    for s in steps_of(pipeline):
        assert "${{" not in s.get("run", ""), s.get("name")
    exp = step(pipeline, runs="dvc exp run")
    assert exp["env"]["PARAMS"].replace(" ", "") == "${{inputs.params}}"
    assert exp["if"].replace(" ", "") == "github.event_name=='workflow_dispatch'"


# --- pipeline.yml's bash steps, run with a stub dvc ---------------------------------------------

requires_bash_git = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("git") is None, reason="needs bash and git"
)


def stub_env(tmp_path: Path, dvc_exit: int = 0, **env) -> dict:
    """PATH with a `dvc` that appends its arguments (NUL-separated, one call a line) to dvc.calls,
    prints a fake table for `metrics` and exits `dvc_exit`; git isolated from the user's config."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    dvc = bin_dir / "dvc"
    dvc.write_text(
        "#!/usr/bin/env bash\n"
        f"printf '%s\\0' \"$@\" >>'{tmp_path}/dvc.calls'; echo >>'{tmp_path}/dvc.calls'\n"
        'echo "| stub | $* |"\n'
        f"exit {dvc_exit}\n",
        encoding="utf-8",
    )
    dvc.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GITHUB_"))}
    return {
        **base,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        **env,
    }


def dvc_calls(tmp_path: Path) -> list[list[str]]:
    calls = tmp_path / "dvc.calls"
    if not calls.exists():
        return []
    return [line.split("\0")[:-1] for line in calls.read_text().splitlines()]


def run_step(s: dict, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """A `run:` step as GitHub runs it with `shell: bash`."""
    script = cwd / "_step.sh"
    script.write_text(s["run"], encoding="utf-8")
    try:
        return subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        script.unlink()


@requires_bash_git
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("", []),
        (
            "finetune.seeds=[0,1,2]  finetune.train.lr=3e-5\n\tprobe.seed=1 ",
            ["finetune.seeds=[0,1,2]", "finetune.train.lr=3e-5", "probe.seed=1"],
        ),
        # Shell syntax is data: no command substitution, no globbing, no word joined or lost.
        (
            "a=$(touch pwned) b=`touch pwned` c=x;touch d=*",
            ["a=$(touch", "pwned)", "b=`touch", "pwned`", "c=x;touch", "d=*"],
        ),
    ],
    ids=["empty", "whitespace", "shell-syntax"],
)
def test_dispatch_params_become_set_arguments(pipeline, tmp_path, params, expected):
    work = tmp_path / "work"
    work.mkdir()
    (work / "d=file").write_text("")  # `d=*` must not glob onto it
    res = run_step(step(pipeline, runs="dvc exp run"), work, stub_env(tmp_path, PARAMS=params))
    assert res.returncode == 0, res.stdout + res.stderr
    want = ["exp", "run"]
    for override in expected:
        want += ["-S", override]
    assert dvc_calls(tmp_path) == [want]
    assert not (work / "pwned").exists()


def git(cwd: Path, env: dict, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git repository with one commit, the stub dvc and its environment."""
    work = tmp_path / "work"
    work.mkdir()
    env = stub_env(tmp_path)
    git(work, env, "init", "-q", "-b", "main")
    (work / "a.txt").write_text("1")
    git(work, env, "add", "a.txt")
    git(work, env, "commit", "-q", "-m", "first")
    return work, env


def summarize(pipeline, tmp_path, work, env, **event):
    event = {"EVENT": "push", "BASE_REF": "", "BEFORE": "", "PARAMS": "", **event}
    res = run_step(step(pipeline, runs="dvc metrics diff --md"), work, {**env, **event})
    assert res.returncode == 0, res.stdout + res.stderr
    return (tmp_path / "summary.md").read_text(), dvc_calls(tmp_path)


@requires_bash_git
def test_summary_first_commit(pipeline, tmp_path, repo):
    work, env = repo
    text, calls = summarize(pipeline, tmp_path, work, env, BEFORE="0" * 40)
    assert calls == [["metrics", "show", "--md"]]
    assert "No base commit" in text and "| stub | metrics show --md |" in text
    assert "report/summary.md is absent" in text


@requires_bash_git
def test_summary_push_and_pull_request(pipeline, tmp_path, repo):
    work, env = repo
    first = git(work, env, "rev-parse", "HEAD")
    (work / "a.txt").write_text("2")
    git(work, env, "commit", "-q", "-am", "second")
    (work / "report").mkdir()
    (work / "report" / "summary.md").write_text("# isoprobe report\n\nthe table\n")

    text, calls = summarize(pipeline, tmp_path, work, env, BEFORE=first)
    assert calls[-1] == ["metrics", "diff", "--md", first]
    assert f"| stub | metrics diff --md {first} |" in text
    assert text.rstrip().endswith("the table")
    assert (work / "report" / "metrics_diff.md").is_file()  # uploaded with report/

    # A `before` this clone lacks (force push) and a new branch (all zeros): HEAD~1.
    for before in ("f" * 40, "0" * 40):
        _, calls = summarize(pipeline, tmp_path, work, env, BEFORE=before)
        assert calls[-1] == ["metrics", "diff", "--md", "HEAD~1"]

    git(work, env, "update-ref", "refs/remotes/origin/main", first)
    _, calls = summarize(pipeline, tmp_path, work, env, EVENT="pull_request", BASE_REF="main")
    assert calls[-1] == ["metrics", "diff", "--md", "origin/main"]

    text, calls = summarize(
        pipeline, tmp_path, work, env, EVENT="workflow_dispatch", PARAMS="finetune.seeds=[0]"
    )
    assert calls[-1] == ["metrics", "diff", "--md", "HEAD"]
    assert "`finetune.seeds=[0]`" in text


@requires_bash_git
def test_summary_survives_a_failing_dvc(pipeline, tmp_path, repo):
    work, _ = repo
    env = stub_env(tmp_path, dvc_exit=1)
    (work / "a.txt").write_text("2")
    git(work, env, "commit", "-q", "-am", "second")
    text, _ = summarize(pipeline, tmp_path, work, env)
    assert "dvc metrics diff failed" in text
    assert "report/summary.md is absent" in text
