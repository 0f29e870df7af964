"""What the finetune stage writes besides the model: the per-step CSV and flat MLflow params."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from isoprobe.core.config import Params
from isoprobe.core.io import atomic_file
from isoprobe.core.treatments import registered_treatments

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


def flat_params(params: Params, task: str, method: str, seed: int) -> dict:
    """The same param names in every fine-tuning run, so the MLflow UI lines them up: the options
    of every registered treatment as `heads.<treatment>.<option>`, and for a user treatment where
    its code comes from as `treatments.<treatment>` (a file of treatments/ and its sha256, or the
    installed distribution and version, which DVC cannot hash)."""
    out = {"task": task, "method": method, "seed": seed, "model.name": params.model.name}
    out["task.source"] = params.tasks[task].source
    out.update(params.finetune.train.model_dump())
    for t in registered_treatments():
        for k, v in params.finetune.heads.options(t.name).items():
            out[f"heads.{t.name}.{k}"] = v
        if not t.builtin:
            out[f"treatments.{t.name}"] = t.origin
    return out
