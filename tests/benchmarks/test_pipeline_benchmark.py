"""benchmarks/pipeline.py's parts that need no pipeline run: the phase sampler (a real process
sampled), its classification of stacks, the per-stage phase split and the metrics comparison."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLER = REPO / "benchmarks" / "phases"


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load(REPO / "benchmarks" / "pipeline.py", "bench_pipeline")
sampler = load(SAMPLER / "sitecustomize.py", "phase_sampler")


def phase_in(*files: str, name: str = "f") -> str:
    """The sampler's phase of a live stack of functions compiled as if defined in `files`
    (outermost first; the innermost is called `name`)."""
    ns: dict = {"sys": sys, "phase": sampler._phase}
    call = "phase(sys._getframe())"
    for depth, file in enumerate(reversed(files)):  # innermost first
        fn = name if depth == 0 else f"caller{depth}"
        exec(compile(f"def {fn}():\n    return {call}\n", file, "exec"), ns)  # noqa: S102
        call = f"{fn}()"
    return eval(call, ns)  # noqa: S307 - a call built above


def test_phase_of_a_stack():
    site = "/venv/lib/python3.11/site-packages"
    assert phase_in("stages/x.py", "/repo/src/isoprobe/probing/hulls.py") == ("compute")
    assert phase_in("stages/x.py", f"{site}/mlflow/tracking/client.py") == "logging"
    assert phase_in("stages/x.py", "/r/src/isoprobe/core/io.py") == "writing"
    assert phase_in("a.py", f"{site}/safetensors/torch.py", name="load_file") == ("loading")
    assert phase_in("a.py", f"{site}/safetensors/torch.py", name="save_file") == ("writing")
    assert phase_in("a.py", "m.py", name="from_pretrained") == "loading"
    # precedence: an import beats everything; logging beats writing (MLflow writing its files)
    frozen = "<frozen importlib._bootstrap>"
    assert phase_in("a.py", f"{site}/mlflow/x.py", frozen, name="_find_and_load") == "imports"
    assert phase_in(f"{site}/mlflow/x.py", "/r/isoprobe/core/io.py") == "logging"
    assert phase_in("/r/isoprobe/core/io.py", f"{site}/mlflow/x.py") == "logging"


def test_sampler_times_a_real_stage_process(tmp_path):
    script = tmp_path / "stages" / "busy.py"
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent(
            """
            import time
            import json, email.mime.multipart  # an import or two
            t = time.perf_counter()
            while time.perf_counter() - t < 0.6:
                sum(i * i for i in range(1000))
            """
        )
    )
    out = tmp_path / "phases"
    out.mkdir()
    env = {**os.environ, "ISOPROBE_PHASES_DIR": str(out), "DVC_STAGE": "busy@x"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SAMPLER), env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, str(script)], env=env, check=True, cwd=tmp_path)
    subprocess.run([sys.executable, "-c", "pass"], env={**env, "DVC_STAGE": ""}, check=True)
    (doc_path,) = out.glob("*.json")  # none for the process outside a DVC stage
    doc = json.loads(doc_path.read_text())
    assert doc["stage"] == "busy@x" and doc["argv"][0] == str(script)
    assert doc["wall_seconds"] >= 0.6
    assert set(doc["seconds"]) == set(sampler.PHASES)
    assert doc["seconds"]["compute"] >= 0.4
    assert sum(doc["seconds"].values()) <= doc["wall_seconds"] + 0.05


def test_stage_phases_and_kinds(tmp_path):
    def sample(pid, stage, argv0, wall, **seconds):
        doc = {"stage": stage, "argv": [argv0], "wall_seconds": wall,
               "seconds": dict.fromkeys(sampler.PHASES, 0.0) | seconds}  # fmt: skip
        (tmp_path / f"{pid}.json").write_text(json.dumps(doc))

    sample(1, "finetune@a-b-0", "stages/finetune.py", 10.0, imports=3.0, compute=7.0)
    sample(
        2, "finetune@a-b-1", "/x/stages/finetune.py", 12.0, imports=3.0, compute=8.5, logging=0.5
    )
    sample(3, "finetune@a-b-1", "-c", 5.0, compute=5.0)  # a helper process: not counted
    sample(4, "report", "/venv/bin/dvc", 20.0, compute=20.0)  # DVC itself
    stages = {"finetune@a-b-0": 11.0, "finetune@a-b-1": 12.5, "report": 3.0}
    split = bench.stage_phases(tmp_path, stages)
    assert split["finetune@a-b-0"] == {
        "imports": 3.0, "loading": 0.0, "compute": 7.0, "logging": 0.0, "writing": 0.0, "dvc": 1.0,
    }  # fmt: skip
    assert split["finetune@a-b-1"]["dvc"] == 0.5 and "report" not in split
    kinds = bench.by_kind(split)
    assert kinds["finetune"]["imports"] == 6.0 and kinds["finetune"]["compute"] == 15.5
    assert bench.by_kind(stages) == {"finetune": 23.5, "report": 3.0}


def write_metrics(root: Path, rel: str, doc: dict) -> None:
    path = root / "metrics" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


@pytest.fixture
def workspaces(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    doc = {"test": {"accuracy": 0.66875}, "seconds": 40.1, "mlflow_run_id": "x", "grad": [1.5, 2.0]}
    write_metrics(a, "finetune/t/baseline/0.json", doc)
    write_metrics(b, "finetune/t/baseline/0.json", doc | {"seconds": 80.2, "mlflow_run_id": "y"})
    write_metrics(a, "isotropy/t/pretrained.json", {"isoscore": 0.028, "embed_seconds": 3.0})
    write_metrics(b, "isotropy/t/pretrained.json", {"isoscore": 0.028, "embed_seconds": 9.0})
    return a, b


def test_metrics_identical_apart_from_timings_and_run_ids(workspaces):
    result = bench.compare_metrics(*workspaces)
    assert result["metrics_identical"] and result["files_compared"] == 2
    assert result["leaves_compared"] == 4 and result["leaves_differing"] == 0


def test_metrics_difference_found(workspaces):
    a, b = workspaces
    write_metrics(a, "finetune/t/baseline/0.json", {"test": {"accuracy": 0.66876}, "grad": [1.5]})
    write_metrics(a, "probe/t/pretrained.json", {"linear": 0.5})
    result = bench.compare_metrics(a, b)
    assert not result["metrics_identical"]
    assert result["only_in_commit"] == ["metrics/probe/t/pretrained.json"]
    keys = {d["key"]: (d["commit"], d["reference"]) for d in result["differences"]}
    assert keys == {"test.accuracy": (0.66876, 0.66875), "grad[1]": ("<absent>", 2.0)}
