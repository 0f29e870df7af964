"""DVC deps cannot go stale: every isoprobe module a stage script can import (transitively, function-
local imports included) lies under one of that stage's `deps` in dvc.yaml, and so does the script."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"


def module_file(name: str) -> Path | None:
    """The file of an isoprobe module or package, or None when `name` is no module (an attribute)."""
    base = SRC.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imported_modules(path: Path) -> set[str]:
    """isoprobe modules `path` imports anywhere (top level and inside functions), with the packages
    that importing them runs (`isoprobe.a.b` imports `isoprobe` and `isoprobe.a` first)."""
    found: set[str] = set()
    package = None
    if path.is_relative_to(SRC):
        parts = path.relative_to(SRC).with_suffix("").parts
        package = ".".join(parts if path.name == "__init__.py" else parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level and package is not None:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            names = [base] + [f"{base}.{a.name}" for a in node.names]  # a name may be a submodule
        for name in names:
            if name == "isoprobe" or name.startswith("isoprobe."):
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in found if module_file(m) is not None}


def closure(script: Path) -> set[Path]:
    """Every isoprobe source file `script` can import, directly or through other modules."""
    seen: set[Path] = set()
    todo = [module_file(m) for m in imported_modules(script)]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo.extend(module_file(m) for m in imported_modules(f))
    return seen


def stage_scripts_and_deps(dvc_yaml: dict) -> dict[str, tuple[list[Path], list[str]]]:
    """stage name -> (its stages/*.py scripts, its deps as written, before interpolation)."""
    out = {}
    for name, stage in dvc_yaml["stages"].items():
        body = stage.get("do", stage)
        scripts = [REPO / w for w in str(body["cmd"]).split() if w.startswith("stages/")]
        out[name] = (scripts, [str(d) for d in body.get("deps", [])])
    return out


def uncovered(dvc_yaml: dict) -> dict[str, list[str]]:
    """stage -> the imported isoprobe files (and scripts) that none of its deps covers."""
    missing = {}
    for name, (scripts, deps) in stage_scripts_and_deps(dvc_yaml).items():
        static = [REPO / d for d in deps if "${" not in d]
        needed = set(scripts)
        for script in scripts:
            needed |= closure(script)
        gaps = sorted(
            str(f.relative_to(REPO))
            for f in needed
            if not any(f == d or f.is_relative_to(d) for d in static)
        )
        if gaps:
            missing[name] = gaps
    return missing


def load_dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))


def test_every_stage_runs_a_script():
    for name, (scripts, _) in stage_scripts_and_deps(load_dvc_yaml()).items():
        assert scripts and all(s.is_file() for s in scripts), name


def test_every_imported_module_is_a_dep():
    assert uncovered(load_dvc_yaml()) == {}


def test_walker_follows_function_local_and_transitive_imports():
    files = {str(f.relative_to(REPO)) for f in closure(REPO / "stages" / "finetune.py")}
    # the stage imports the fine-tuning loop inside main(); the loop imports core.config itself
    assert "src/isoprobe/finetune/loop.py" in files
    assert "src/isoprobe/core/config.py" in files
    assert "src/isoprobe/__init__.py" in files


@pytest.mark.parametrize("stage", ["prepare", "finetune", "report"])
def test_a_removed_dep_is_caught(stage):
    broken = copy.deepcopy(load_dvc_yaml())
    body = broken["stages"][stage].get("do", broken["stages"][stage])
    src_deps = [d for d in body["deps"] if str(d).startswith("src/")]
    assert src_deps, stage
    body["deps"].remove(src_deps[0])
    assert stage in uncovered(broken)
