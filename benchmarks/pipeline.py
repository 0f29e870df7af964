"""Whole-pipeline timing: `dvc repro` of the embedded default from fresh clones, per stage and phase.

Clones `--commit` (default HEAD) into a temporary folder (beside a link to ../shared, like a
checkout), runs `dvc repro` with a fresh DVC cache and MLflow store, times every stage from DVC's
output and splits each stage's time into phases (imports, loading, compute, logging, writing, and
`dvc`: DVC's own work around the process) with the sampler in benchmarks/phases/; then times
`--noop-runs` no-op `dvc repro` calls and one `dvc dag` (pipeline parsing alone).

With `--reference REV` the same is done for a second clone of REV, side by side: by default both
runs at once, each pinned to its own core (`--mode parallel`, Linux; each stage then sees one usable
core, so `num_threads: 0` means 1 thread on both sides), or one after the other on every core
(`--mode sequential`). The JSON then holds both sides, the time ratio commit / reference, and a
comparison of every metrics JSON file of the two workspaces, leaf by leaf, leaving out timings and
run ids (`metrics_identical`). Needs a quiet machine; progress goes to stderr.

    python benchmarks/pipeline.py [--commit REV] [--reference REV] [--mode parallel|sequential]
                                  [--noop-runs 3] [-S key=value ...] [--keep]
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
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLER = Path(__file__).resolve().parent / "phases"
DVC = str(Path(sys.executable).with_name("dvc"))
STAGE = re.compile(r"^Running stage '([^']+)':", re.M)
PHASES = ("imports", "loading", "compute", "logging", "writing", "dvc")
# metrics leaves that measure time or name a run: expected to differ between any two runs
VOLATILE = {"seconds", "eval_seconds", "examples_per_second", "rows_per_second", "mlflow_run_id"}
TARGET_RATIO = 0.5  # issue 18: the first run at most half of the reference's time
TARGET_SECONDS = 600  # on 2 cores, without a reference


def env(clone: Path, phases: Path | None = None) -> dict[str, str]:
    """The stages' environment: offline, no progress bars, the clone's own `src` imported before
    the installed isoprobe (so each side runs its own code), and the phase sampler."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    e.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    e["PATH"] = f"{Path(sys.executable).parent}:{e['PATH']}"
    paths = [str(clone / "src"), e.get("PYTHONPATH")]
    if phases is not None:
        e["ISOPROBE_PHASES_DIR"] = str(phases)
        paths.insert(0, str(SAMPLER))
    e["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return e


def pinned(cpu: int | None):
    """preexec_fn pinning the child (and what it starts) to one core, or None."""
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env(cwd), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(
            f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return seconds, res.stdout


def stage_seconds(
    cmd: list[str], cwd: Path, label: str, phases: Path | None = None, cpu: int | None = None
) -> tuple[float, dict[str, float]]:
    """Run `cmd`, timing each DVC stage from the moment DVC announces it to the next announcement."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env(cwd, phases), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, preexec_fn=pinned(cpu),
    )  # fmt: skip
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
            print(f"[{label} {now - t0:7.1f} s] {current}", file=sys.stderr)
    proc.wait()
    total = time.perf_counter() - t0
    if current:
        stages[current] = round(time.perf_counter() - since, 2)  # includes DVC's final lock write
    if proc.returncode != 0:
        sys.exit(f"{label}: {' '.join(cmd)} failed ({proc.returncode}):\n{''.join(tail)}")
    return total, stages


def stage_phases(folder: Path, stages: dict[str, float]) -> dict[str, dict[str, float]]:
    """Seconds per phase of each stage: the sampler's files of its stage processes (stages/*.py),
    and `dvc`, the rest of the stage's time (DVC hashing, caching and its own start-up)."""
    out: dict[str, dict[str, float]] = {}
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        script = Path(doc["argv"][0]) if doc["argv"] else Path()
        if script.parent.name != "stages" or doc["stage"] not in stages:
            continue  # DVC itself, or a helper process a stage started
        row = out.setdefault(doc["stage"], dict.fromkeys(PHASES, 0.0))
        for phase, s in doc["seconds"].items():
            row[phase] += s
        row["dvc"] -= doc["wall_seconds"]
    for name, row in out.items():
        row["dvc"] += stages[name]
    return {k: {p: round(s, 2) for p, s in v.items()} for k, v in out.items()}


def by_kind(per_stage: dict[str, float | dict[str, float]]) -> dict:
    """Sum over the instances of each stage kind (`finetune@...` -> finetune)."""
    out: dict = {}
    for name, value in per_stage.items():
        kind = name.split("@")[0]
        if isinstance(value, dict):
            row = out.setdefault(kind, dict.fromkeys(value, 0.0))
            for k, v in value.items():
                row[k] = round(row[k] + v, 2)
        else:
            out[kind] = round(out.get(kind, 0.0) + value, 2)
    return out


def clone(rev: str, base: Path, name: str, overrides: list[str]) -> tuple[Path, str]:
    """A fresh clone of this repository at `rev` in base/name with the `-S key=value` overrides
    applied to its params.yaml (committed, so DVC sees a clean workspace); returns it and the full
    commit it was cloned at."""
    path = base / name
    subprocess.run(["git", "clone", "-q", str(REPO), str(path)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=path, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
    ).stdout.strip()
    if overrides:
        params = yaml.safe_load((path / "params.yaml").read_text())
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                sys.exit(f"-S {item!r}: expected key=value (e.g. finetune.seeds=[0])")
            *parents, leaf = key.split(".")
            node = params
            for k in parents:
                node = node.setdefault(k, {})
            node[leaf] = yaml.safe_load(value)
        (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        subprocess.run([*git, "commit", "-qam", "benchmark overrides"], cwd=path, check=True)
    print(f"{name}: clone of {commit[:10]} in {path} {' '.join(overrides)}", file=sys.stderr)
    return path, commit


def metric_leaves(doc, prefix: str = "") -> dict[str, object]:
    """Flat {path: value} of a JSON document, without the volatile leaves."""
    if isinstance(doc, dict):
        out: dict[str, object] = {}
        for k, v in doc.items():
            if k in VOLATILE or k.endswith("_seconds"):
                continue
            out.update(metric_leaves(v, f"{prefix}.{k}" if prefix else k))
        return out
    if isinstance(doc, list):
        out = {}
        for i, v in enumerate(doc):
            out.update(metric_leaves(v, f"{prefix}[{i}]"))
        return out
    return {prefix: doc}


def compare_metrics(a: Path, b: Path, shown: int = 20) -> dict:
    """Every metrics/**/*.json of workspace `a` against `b`, leaf by leaf (exact equality)."""
    files_a = {p.relative_to(a) for p in (a / "metrics").rglob("*.json")}
    files_b = {p.relative_to(b) for p in (b / "metrics").rglob("*.json")}
    diffs: list[dict] = []
    leaves = 0
    for rel in sorted(files_a & files_b):
        la = metric_leaves(json.loads((a / rel).read_text()))
        lb = metric_leaves(json.loads((b / rel).read_text()))
        leaves += len(la.keys() | lb.keys())
        for key in sorted(la.keys() | lb.keys()):
            if la.get(key, "<absent>") != lb.get(key, "<absent>"):
                diffs.append({"file": str(rel), "key": key, "commit": la.get(key, "<absent>"),
                              "reference": lb.get(key, "<absent>")})  # fmt: skip
    return {
        "files_compared": len(files_a & files_b),
        "only_in_commit": sorted(map(str, files_a - files_b)),
        "only_in_reference": sorted(map(str, files_b - files_a)),
        "leaves_compared": leaves,
        "leaves_differing": len(diffs),
        "differences": diffs[:shown],
        "metrics_identical": not diffs and files_a == files_b,
        "ignored_keys": sorted(VOLATILE) + ["*_seconds"],
    }


def full_run(path: Path, label: str, cpu: int | None) -> dict:
    phases = path.parent / f"phases-{label}"
    phases.mkdir()
    total, stages = stage_seconds([DVC, "repro"], path, label, phases, cpu)
    split = stage_phases(phases, stages)
    return {
        "full_repro_seconds": round(total, 1),
        "stages_run": len(stages),
        "seconds_by_stage_kind": by_kind(stages),
        "phases_by_stage_kind": by_kind(split),
        "seconds_by_stage": stages,
        "phases_by_stage": split,
        "pinned_cpu": cpu,
    }


def noop_runs(path: Path, runs: int) -> dict:
    noop = [round(timed([DVC, "repro"], path)[0], 2) for _ in range(runs)]
    return {
        "noop_repro_seconds": noop,
        "noop_repro_median_seconds": statistics.median(noop) if noop else None,
        "dvc_dag_seconds": round(timed([DVC, "dag"], path)[0], 2),
    }


def side_by_side(paths: dict[str, Path], mode: str) -> dict[str, dict]:
    """The full runs of both sides: at once on cores 0 and 1, or one after the other."""
    if mode == "sequential":
        return {label: full_run(path, label, None) for label, path in paths.items()}
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit("--mode parallel needs two usable cores: use --mode sequential")
    results: dict[str, dict] = {}
    failures: list[str] = []

    def side(label: str, path: Path, cpu: int) -> None:
        try:
            results[label] = full_run(path, label, cpu)
        except SystemExit as stop:  # full_run's message of a failed dvc repro
            failures.append(str(stop))

    workers = [
        threading.Thread(target=side, args=(label, path, cpu))
        for (label, path), cpu in zip(paths.items(), cores[:2], strict=True)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        sys.exit("\n".join(failures))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commit", default="HEAD", help="the commit timed (default HEAD)")
    p.add_argument("--reference", help="a second commit timed side by side (e.g. fcf1cd1)")
    p.add_argument("--mode", choices=("parallel", "sequential"), default="parallel")
    p.add_argument("--noop-runs", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the temporary clones")
    p.add_argument(
        "-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a params.yaml override for both sides (YAML value), e.g. -S finetune.seeds=[0]: "
        "a quick look, not the default pipeline's figure",
    )  # fmt: skip
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="isoprobe-pipeline-bench-"))
    try:
        shared = REPO.parent / "shared"
        if shared.is_dir():
            (base / "shared").symlink_to(shared)
        paths, commits = {}, {}
        for label, rev in (("commit", args.commit), ("reference", args.reference)):
            if rev:
                paths[label], commits[label] = clone(rev, base, label, args.overrides)
        if args.reference:
            runs = side_by_side(paths, args.mode)
        else:
            runs = {"commit": full_run(paths["commit"], "commit", None)}
        for label, path in paths.items():
            runs[label] |= noop_runs(path, args.noop_runs)
        doc = {
            "benchmark": "pipeline",
            "commits": commits,
            "mode": args.mode if args.reference else "single",
            "overrides": args.overrides,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            **runs,
        }
        if args.reference:
            ratio = runs["commit"]["full_repro_seconds"] / runs["reference"]["full_repro_seconds"]
            noop = [runs[s]["noop_repro_median_seconds"] for s in ("commit", "reference")]
            doc["ratio_full_repro"] = round(ratio, 3)
            doc["ratio_noop_repro"] = round(noop[0] / noop[1], 3) if all(noop) else None
            doc["metrics"] = compare_metrics(paths["commit"], paths["reference"])
            doc["targets"] = {
                "full_ratio_at_most": TARGET_RATIO,
                "full_met": ratio <= TARGET_RATIO,
                "noop_no_slower": doc["ratio_noop_repro"] is not None
                and doc["ratio_noop_repro"] <= 1.0,
                "metrics_identical": doc["metrics"]["metrics_identical"],
            }
        else:
            total = runs["commit"]["full_repro_seconds"]
            doc["targets"] = {"full_repro_at_most_seconds": TARGET_SECONDS,
                              "full_met": total <= TARGET_SECONDS}  # fmt: skip
        print(json.dumps(doc, indent=2))
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
