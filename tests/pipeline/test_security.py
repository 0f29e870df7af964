"""Security checks: only safetensors and JSON are loaded from outputs (no pickle), torch.load with
weights_only=True, yaml.safe_load, no shell with params, no eval, the MLflow UI on 127.0.0.1.

The static checks walk the AST of every Python file in src/, stages/ and benchmarks/; each checker
is also run on a planted bad example, so a broken checker cannot pass silently."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PICKLING = {"pickle", "cPickle", "_pickle", "joblib", "dill", "cloudpickle", "shelve", "marshal"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
UNSAFE_YAML_LOADERS = {"Loader", "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader"}
SHELL_CALLS = {"os.system", "os.popen", "os.popen2", "os.popen3", "commands.getoutput"}
PICKLE_READERS = {"pandas.read_pickle", "torch.hub.load", "numpy.lib.format.read_array"}


def python_files() -> list[Path]:
    return sorted(p for d in ("src", "stages", "benchmarks") for p in (REPO / d).rglob("*.py"))


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin for `import x as y` and `from x import y as z`."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = (
                    a.name if a.asname else a.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def _true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def problems(source: str, name: str = "<code>") -> list[str]:
    """Every unsafe loading / shell / eval construct in `source`, as 'name:line: what'."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found = []

    def bad(node: ast.AST, what: str) -> None:
        found.append(f"{name}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for mod in filter(None, mods):
                if mod.split(".")[0] in PICKLING:
                    bad(node, f"imports {mod}")
        elif isinstance(node, ast.Attribute | ast.Name):
            full = _dotted(node, aliases) or ""
            if full.startswith("yaml.") and full.split(".")[-1] in UNSAFE_YAML_LOADERS:
                bad(node, f"uses {full}")
        if not isinstance(node, ast.Call):
            continue
        func = _dotted(node.func, aliases) or ""
        if func == "torch.load" and not _true(_kw(node, "weights_only")):
            bad(node, "torch.load without weights_only=True")
        if func.startswith("yaml.") and func.split(".")[-1] in UNSAFE_YAML:
            bad(node, f"{func} (use yaml.safe_load)")
        if func in ("numpy.load", "numpy.lib.npyio.load") and _kw(node, "allow_pickle") is not None:
            value = _kw(node, "allow_pickle")
            if not (isinstance(value, ast.Constant) and value.value is False):
                bad(node, "numpy.load with allow_pickle")
        if func in PICKLE_READERS:
            bad(node, f"{func} (unpickles)")
        shell = _kw(node, "shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            bad(node, f"{func or 'call'} with shell=...")
        if func in SHELL_CALLS or func.startswith(("os.exec", "os.spawn")):
            bad(node, f"{func} (runs a shell or replaces the process)")
        if func in ("eval", "exec", "builtins.eval", "builtins.exec", "compile"):
            bad(node, f"{func}()")
    return found


PLANTED = {
    "import pickle": "imports pickle",
    "from joblib import load": "imports joblib",
    "import dill as d": "imports dill",
    "import cloudpickle.cloudpickle": "imports cloudpickle",
    "import torch\ntorch.load('m.pt')": "torch.load without weights_only=True",
    "import torch\ntorch.load('m.pt', weights_only=False)": "torch.load without weights_only",
    "from torch import load\nload('m.pt', map_location='cpu')": "torch.load without weights_only",
    "import yaml\nyaml.load(open('p.yaml'))": "yaml.load",
    "import yaml\nyaml.load(s, Loader=yaml.SafeLoader)": "yaml.load",
    "import yaml\nyaml.unsafe_load(s)": "yaml.unsafe_load",
    "import yaml\nx = yaml.Loader": "uses yaml.Loader",
    "from yaml import full_load\nfull_load(s)": "yaml.full_load",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)": "allow_pickle",
    "import numpy\nnumpy.load('a.npy', allow_pickle=flag)": "allow_pickle",
    "import pandas as pd\npd.read_pickle('x')": "pandas.read_pickle",
    "import subprocess\nsubprocess.run(f'dvc exp run -S {p}', shell=True)": "shell=",
    "import subprocess as sp\nsp.check_output(cmd, shell=use_shell)": "shell=",
    "import os\nos.system('ls ' + p)": "os.system",
    "from os import popen\npopen(cmd)": "os.popen",
    "import os\nos.execvp('sh', ['sh'])": "os.execvp",
    "eval(params['x'])": "eval()",
    "exec(code)": "exec()",
}
SAFE = """
import json, subprocess, yaml
import numpy as np
import torch
from safetensors.torch import load_file
yaml.safe_load(open('params.yaml'))
torch.load('m.pt', weights_only=True, map_location='cpu')
np.load('a.npy')
np.load('a.npy', allow_pickle=False)
subprocess.run(['git', 'rev-parse', 'HEAD'], shell=False, check=False)
model.eval()
x.load('y')
"""


@pytest.mark.parametrize("code,expected", PLANTED.items(), ids=range(len(PLANTED)))
def test_checker_catches_planted_examples(code, expected):
    found = problems(code)
    assert found and expected in found[0], found


def test_checker_passes_safe_code():
    assert problems(SAFE) == []


def test_no_unsafe_loading_shell_or_eval_in_the_code():
    files = python_files()
    assert any(p.parts[-2] == "stages" for p in files) and any("isoprobe" in p.parts for p in files)
    found = [
        x for p in files for x in problems(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))
    ]
    assert found == []


# Shell scripts: CI entry point and workflow `run:` steps.

EVAL = re.compile(r"(^|[\s;&|({`])(eval|source\s+/dev/stdin|bash\s+-c|sh\s+-c)\b")
GH_EXPR = re.compile(r"\$\{\{\s*(inputs|github\.event|github\.head_ref)\b")


def shell_problems(script: str, name: str = "<script>") -> list[str]:
    """`eval` (or `bash -c`) in a shell script, and workflow inputs interpolated into the script's
    text (`${{ inputs.x }}` must reach a `run:` step through `env:`, as data)."""
    found = []
    for i, line in enumerate(script.splitlines(), 1):
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        if EVAL.search(code):
            found.append(f"{name}:{i}: eval / sh -c")
        if GH_EXPR.search(code):
            found.append(f"{name}:{i}: ${{{{ inputs / github.event }}}} in a run script")
    return found


def workflow_scripts(text: str) -> list[str]:
    doc = yaml.safe_load(text) or {}
    return [
        step["run"]
        for job in (doc.get("jobs") or {}).values()
        for step in job.get("steps") or []
        if isinstance(step.get("run"), str)
    ]


def test_shell_checker_catches_planted_examples():
    assert shell_problems('eval "dvc exp run $PARAMS"')
    assert shell_problems('x=1; eval "$x"')
    assert shell_problems('bash -c "dvc exp run $PARAMS"')
    assert shell_problems("dvc exp run -S ${{ inputs.params }}")
    assert shell_problems("echo ${{ github.event.pull_request.title }}")
    assert not shell_problems('# no eval here\ndvc exp run "${args[@]}"  # evaluated? no')
    bad_workflow = "jobs:\n  a:\n    steps:\n      - run: dvc exp run ${{ inputs.params }}\n"
    assert shell_problems(workflow_scripts(bad_workflow)[0])


def test_ci_scripts_pass_params_as_data():
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert workflows
    found = shell_problems((REPO / ".ci" / "run").read_text(), ".ci/run")
    for wf in workflows:
        for script in workflow_scripts(wf.read_text()):
            found += shell_problems(script, wf.name)
    assert found == []


def test_readme_binds_the_mlflow_ui_to_loopback():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    commands = [line for line in readme.splitlines() if re.search(r"\bmlflow (ui|server)\b", line)]
    assert commands, "README: no `mlflow ui` command"
    for line in commands:
        if "--host" in line:
            assert "--host 127.0.0.1" in line, line
    assert any("--host 127.0.0.1" in line for line in commands)
    assert "0.0.0.0" not in readme


# Behaviour: model weights load from safetensors only.


@pytest.fixture(scope="module")
def pickled_model(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT saved with PyTorch's pickle format only (pytorch_model.bin)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("pickled-bert")
    for f in tiny_bert.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy2(f, folder / f.name)
    torch.save(load_file(tiny_bert / "model.safetensors"), folder / "pytorch_model.bin")
    assert not list(folder.glob("*.safetensors")) and list(folder.glob("*.bin"))
    return folder


def test_encoder_loads_from_safetensors(tiny_bert):
    from isoprobe.core.models import load_encoder, resolve_model

    encoder, _, info = load_encoder(resolve_model(str(tiny_bert)))
    assert info["hidden_size"] == 32


def test_encoder_refuses_pickled_weights(pickled_model):
    from isoprobe.core.errors import IsoprobeError
    from isoprobe.core.models import load_encoder, resolve_model

    with pytest.raises(IsoprobeError, match="has no safetensors weights .*pytorch_model.bin"):
        load_encoder(resolve_model(str(pickled_model)))
