"""Whole-pipeline timing: `dvc repro` of the embedded default from a clean state, then no-op reruns.

Clones the current commit into a temporary folder (beside a link to ../shared, like a checkout),
runs `dvc repro` once with a fresh DVC cache and MLflow store, times every stage from DVC's output,
then times `--noop-runs` no-op `dvc repro` calls and one `dvc dag` (pipeline parsing alone).
Prints one JSON document; progress goes to stderr. Targets (issue 7): full run <= 600 s on 2 cores,
no-op <= 3 s.

    python benchmarks/pipeline.py [--noop-runs 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))
STAGE = re.compile(r"^Running stage '([^']+)':", re.M)


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    e.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    e["PATH"] = f"{Path(sys.executable).parent}:{e['PATH']}"
    return e


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(
            f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return seconds, res.stdout


def stage_seconds(cmd: list[str], cwd: Path) -> tuple[float, dict[str, float]]:
    """Run `cmd`, timing each DVC stage from the moment DVC announces it to the next announcement."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    stages: dict[str, float] = {}
    current, since = None, t0
    tail: list[str] = []
    for line in proc.stdout:
        tail = (tail + [line])[-60:]
        m = STAGE.match(line)
        if m:
            now = time.perf_counter()
            if current:
                stages[current] = round(now - since, 2)
            current, since = m.group(1), now
            print(f"[{now - t0:7.1f} s] {current}", file=sys.stderr)
    proc.wait()
    total = time.perf_counter() - t0
    if current:
        stages[current] = round(time.perf_counter() - since, 2)  # includes DVC's final lock write
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(tail)}")
    return total, stages


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noop-runs", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = p.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    base = Path(tempfile.mkdtemp(prefix="isoprobe-pipeline-bench-"))
    try:
        shared = REPO.parent / "shared"
        if shared.is_dir():
            (base / "shared").symlink_to(shared)
        clone = base / "repo"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        print(f"clone of {commit[:10]} in {clone}", file=sys.stderr)
        total, stages = stage_seconds([DVC, "repro"], clone)
        noop = [round(timed([DVC, "repro"], clone)[0], 2) for _ in range(args.noop_runs)]
        dag = round(timed([DVC, "dag"], clone)[0], 2)
        groups: dict[str, float] = {}
        for name, s in stages.items():
            groups[name.split("@")[0]] = round(groups.get(name.split("@")[0], 0.0) + s, 2)
        doc = {
            "benchmark": "pipeline",
            "commit": commit,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "full_repro_seconds": round(total, 1),
            "stages_run": len(stages),
            "seconds_by_stage_kind": groups,
            "seconds_by_stage": stages,
            "noop_repro_seconds": noop,
            "noop_repro_median_seconds": statistics.median(noop) if noop else None,
            "dvc_dag_seconds": dag,
            "targets": {
                "full_repro_at_most_seconds": 600,
                "full_met": total <= 600,
                "noop_at_most_seconds": 3,
                "noop_met": bool(noop) and statistics.median(noop) <= 3,
            },
        }
        print(json.dumps(doc, indent=2))
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
