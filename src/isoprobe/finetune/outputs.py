"""What the finetune stage writes besides the model: the per-step CSV and flat MLflow params."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from isoprobe.core.config import Params
from isoprobe.core.io import atomic_file

STEP_COLUMNS = ("step", "epoch", "loss", "lr", "grad_cls", "grad_head", "grad_total")


def _cell(v: int | float | None) -> int | str:
    if isinstance(v, int):
        return v
    return f"{v:.6g}" if v is not None and math.isfinite(v) else ""


def write_steps_csv(path: Path, steps: list[dict]) -> None:
    """One row per optimizer step (a diverged run's last one included); non-finite values are empty
    cells, which DVC plots skip."""
    with atomic_file(path) as f:
        w = csv.writer(f)
        w.writerow(STEP_COLUMNS)
        for r in steps:
            w.writerow([_cell(r[c]) for c in STEP_COLUMNS])


def finite_json(obj):
    """`obj` with every non-finite float replaced by None (strict JSON: null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def flat_params(params: Params, task: str, method: str, seed: int) -> dict:
    """The same param names in every fine-tuning run, so the MLflow UI lines them up."""
    out = {"task": task, "method": method, "seed": seed, "model.name": params.model.name}
    out["task.source"] = params.tasks[task].source
    out.update(params.finetune.train.model_dump())
    for m in ("batchnorm", "standardize", "isobn", "whiten", "layernorm"):
        for k, v in params.finetune.heads.options(m).items():
            out[f"heads.{m}.{k}"] = v
    return out
