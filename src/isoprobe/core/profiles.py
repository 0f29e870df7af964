"""Params profiles: a YAML file of overrides of params.yaml, turned into `dvc exp run -S` arguments."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from isoprobe.core.config import Params, parse_params
from isoprobe.core.errors import IsoprobeError


def load_profile(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise IsoprobeError(f"profile not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise IsoprobeError(f"{path}: a profile is a mapping of params overrides")
    return data


def flatten(overrides: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value}; lists and scalars are leaves."""
    out = {}
    for k, v in overrides.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def with_sets(overrides: dict, sets: list[str]) -> dict:
    """The profile with `key.path=value` assignments on top (values read as YAML): a later value of
    the same key wins, as with `dvc exp run -S`."""
    out = copy.deepcopy(overrides)
    for item in sets:
        key, eq, raw = item.partition("=")
        if not eq or not key or any(not part for part in key.split(".")):
            raise IsoprobeError(
                f"--set {item!r}: expected KEY.PATH=VALUE, e.g. model.name=bert-base-cased"
            )
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise IsoprobeError(f"--set {item!r}: the value is not valid YAML ({e})") from None
        node = out
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part, {}), dict):
                node[part] = {}
            node = node.setdefault(part, {})
        node[last] = value
    return out


def set_args(overrides: dict) -> list[str]:
    """`-S` and `key=value` as separate arguments; values in JSON flow style (valid YAML, no spaces)."""
    args = []
    for key, value in flatten(overrides).items():
        args += ["-S", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    return args


def apply_overrides(params_path: str | Path, overrides: dict) -> Params:
    """The params that `dvc exp run` with these overrides would see, validated."""
    data = yaml.safe_load(Path(params_path).read_text(encoding="utf-8"))
    merged = copy.deepcopy(data)
    for key, value in flatten(overrides).items():
        node = merged
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return parse_params(merged, f"{params_path} + profile")
