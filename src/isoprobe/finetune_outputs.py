"""What the finetune stage writes besides the model: the per-step CSV and flat MLflow params."""

from __future__ import annotations

import csv
from pathlib import Path

from isoprobe.config import Params
from isoprobe.io import atomic_file

STEP_COLUMNS = ("step", "epoch", "loss", "lr", "grad_cls", "grad_head", "grad_total")


def write_steps_csv(path: Path, steps: list[dict]) -> None:
    with atomic_file(path) as f:
        w = csv.writer(f)
        w.writerow(STEP_COLUMNS)
        for r in steps:
            w.writerow([r[c] if isinstance(r[c], int) else f"{r[c]:.6g}" for c in STEP_COLUMNS])


def flat_params(params: Params, task: str, method: str, seed: int) -> dict:
    """The same param names in every fine-tuning run, so the MLflow UI lines them up."""
    out = {"task": task, "method": method, "seed": seed, "model.name": params.model.name}
    out["task.source"] = params.tasks[task].source
    out.update(params.finetune.train.model_dump())
    for m in ("batchnorm", "standardize", "isobn", "whiten", "layernorm"):
        for k, v in params.finetune.heads.options(m).items():
            out[f"heads.{m}.{k}"] = v
    return out
