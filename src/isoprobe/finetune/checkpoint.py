"""Fine-tuning checkpoints: a rerun after a kill resumes where the last checkpoint left off.

checkpoints/<task>/<method>/<seed>/ (a persistent, uncached DVC out of the finetune stage) holds,
while a run is unfinished, one checkpoint written atomically (a temporary folder, then one rename):

- `checkpoint.json`: fingerprint, step, epoch and batches done in it, the batch-order generator state
  from before that epoch was drawn, the result so far, python/numpy RNG states, scheduler state,
  AdamW hyper-parameters, the MLflow run id;
- `model.safetensors` (encoder and head, head buffers included), `best.safetensors` (the best-dev
  state so far), `optimizer.safetensors` (`<param name>.<exp_avg|exp_avg_sq|step>`) and
  `rng.safetensors` (torch CPU/CUDA generator states [P, n] uint8, one row per process).

No pickle. When the stage ends the heavy files go and only `state.json` stays: {status (complete or
diverged), fingerprint, step}. Only a `checkpoint.json` with the same fingerprint is resumed.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from isoprobe.core.io import atomic_dir, write_json

CHECKPOINT, MARKER = "checkpoint.json", "state.json"


def fingerprint(identity: dict) -> str:
    """sha256 of what determines a run (flat params, data hash, model, processes)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _python_rng() -> list:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


def _numpy_rng() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return [name, keys.tolist(), pos, has_gauss, cached]


def _torch_rng(acc) -> dict[str, torch.Tensor]:
    """Generator states [P, n] uint8 of every process (a collective call under several processes)."""
    out = {"torch_cpu": torch.get_rng_state()}
    if acc.device.type == "cuda":
        out["torch_cuda"] = torch.cuda.get_rng_state(acc.device)
    if acc.num_processes == 1:
        return {k: v[None] for k, v in out.items()}
    return {k: acc.gather(v.to(acc.device)[None]).cpu() for k, v in out.items()}


def _optimizer_arrays(optimizer, names: list[str]) -> tuple[dict[str, torch.Tensor], list]:
    """AdamW state keyed `<param name>.<key>` and its param groups (JSON), params as names."""
    sd = optimizer.state_dict()
    arrays = {
        f"{names[i]}.{k}": v.detach().cpu().contiguous()
        for i, st in sd["state"].items()
        for k, v in st.items()
    }
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    return arrays, groups


def _param_names(core: torch.nn.Module, optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own (state dict index) order."""
    by_id = {id(p): n for n, p in core.named_parameters()}
    return [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


@dataclass
class Checkpointer:
    """Saves and restores the training state of one fine-tuning run in `folder`. `every_steps` > 0
    also saves every N optimizer steps (else only at the end of each epoch). With several processes
    every process calls save/load; only the `main` one writes."""

    folder: Path
    identity: dict
    every_steps: int = 0
    enabled: bool = True
    main: bool = True
    run_id: str | None = None  # MLflow run, stored with each checkpoint
    _checked: dict | None = field(default=None, repr=False)
    _done_check: bool = field(default=False, repr=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity)

    def _say(self, line: str) -> None:
        if self.main:
            print(f"isoprobe: {line}", file=sys.stderr, flush=True)

    def resumable(self) -> dict | None:
        """checkpoint.json of an unfinished run with this fingerprint, else None (a checkpoint of
        another run is ignored with one message)."""
        if self._done_check:
            return self._checked
        self._done_check = True
        path = self.folder / CHECKPOINT
        if not self.enabled or not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            self._say(f"unreadable checkpoint {path} ({err}): training from scratch")
            return None
        if state.get("fingerprint") != self.fingerprint:
            self._say(
                f"checkpoint in {self.folder} is of another run (params, data, model or number of "
                "processes changed): ignored, training from scratch"
            )
            return None
        self._checked = state
        return state

    def save(
        self, acc, core, optimizer, scheduler, best_state: dict | None, progress: dict
    ) -> None:
        """Write a checkpoint of the current state; `progress` holds step, epoch, batch, batch_order
        and result (JSON). Collective under several processes (RNG states are gathered)."""
        if not self.enabled:
            return
        rng = _torch_rng(acc)
        if not self.main:
            return
        names = _param_names(core, optimizer)
        arrays, groups = _optimizer_arrays(optimizer, names)
        state = {
            "status": "running",
            "fingerprint": self.fingerprint,
            "identity": self.identity,
            **progress,
            "mlflow_run_id": self.run_id,
            "rng": {"python": _python_rng(), "numpy": _numpy_rng()},
            "scheduler": scheduler.state_dict(),
            "optimizer": {"param_groups": groups},
        }
        with atomic_dir(self.folder) as tmp:
            save_file(_cpu(core.state_dict()), str(tmp / "model.safetensors"))
            if best_state is not None:
                save_file(_cpu(best_state), str(tmp / "best.safetensors"))
            save_file(arrays, str(tmp / "optimizer.safetensors"))
            save_file(rng, str(tmp / "rng.safetensors"))
            (tmp / CHECKPOINT).write_text(json.dumps(state))

    def load(self, acc, core, optimizer, scheduler) -> tuple[dict, dict | None] | None:
        """Restore model, optimizer, scheduler and RNG states from a matching checkpoint; return
        (checkpoint.json, best-dev state or None), or None to start fresh."""
        state = self.resumable()
        if state is None:
            return None
        self._say(
            f"resuming fine-tuning from the checkpoint at step {state['step']} in {self.folder}"
        )
        core.load_state_dict(load_file(str(self.folder / "model.safetensors")))
        best = self.folder / "best.safetensors"
        best_state = load_file(str(best)) if best.is_file() else None
        names = _param_names(core, optimizer)
        index = {n: i for i, n in enumerate(names)}
        arrays = load_file(str(self.folder / "optimizer.safetensors"))
        opt_state: dict[int, dict] = {}
        for key, value in arrays.items():
            name, part = key.rsplit(".", 1)
            opt_state.setdefault(index[name], {})[part] = value
        groups = [
            {**g, "params": [index[n] for n in g["params"]]}
            for g in state["optimizer"]["param_groups"]
        ]
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        scheduler.load_state_dict(state["scheduler"])
        version, py_state, gauss = state["rng"]["python"]
        random.setstate((version, tuple(py_state), gauss))
        name, keys, pos, has_gauss, cached = state["rng"]["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
        rng = load_file(str(self.folder / "rng.safetensors"))
        # a row of its own (torch reads a state with a storage offset out of bounds: segfault)
        torch.set_rng_state(rng["torch_cpu"][acc.process_index].clone())
        if "torch_cuda" in rng and acc.device.type == "cuda":
            torch.cuda.set_rng_state(rng["torch_cuda"][acc.process_index].clone(), acc.device)
        return state, best_state

    def finish(self, status: str, step: int) -> None:
        """Drop the heavy files, keep the small marker state.json (the folder is a DVC out)."""
        if not self.main:
            return
        with atomic_dir(self.folder) as tmp:
            write_json(
                tmp / MARKER, {"status": status, "fingerprint": self.fingerprint, "step": step}
            )
        for stale in self.folder.parent.glob(f".{self.folder.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a kill during a save
