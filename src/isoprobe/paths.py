"""Where each stage reads and writes, relative to the repository root (all DVC outputs)."""

from __future__ import annotations

import os
from pathlib import Path


def prepared_dir(task: str) -> Path:
    return Path("data/prepared") / task


def embeddings_dir(task: str, encoder: str = "pretrained") -> Path:
    """`encoder` is "pretrained", or "finetuned/<method>/<seed>" for a fine-tuned encoder."""
    return Path("data/embeddings") / encoder / task


def isotropy_metrics_file(task: str, encoder: str = "pretrained") -> Path:
    """metrics/isotropy/<task>/pretrained.json, or .../<method>/<seed>.json for a fine-tuned encoder."""
    return Path("metrics/isotropy") / task / f"{encoder.removeprefix('finetuned/')}.json"


def isotropy_arrays_file(task: str, encoder: str = "pretrained") -> Path:
    return Path("data/isotropy") / task / f"{encoder.replace('/', '_')}.safetensors"


def isotropy_plots_dir(task: str, encoder: str = "pretrained") -> Path:
    return Path("plots/isotropy") / task / encoder.replace("/", "_")


def find_repo_root(start: str | Path | None = None) -> Path:
    """The folder holding `.dvc` (or `.git`) above `start`; for a DVC experiment copy under
    `<root>/.dvc/tmp/exps/`, the original `<root>`."""
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for d in (here, *here.parents):
        if (d / ".dvc").is_dir() or (d / ".git").exists():
            return d
    return here


def experiment_copy_root(start: str | Path | None = None) -> Path | None:
    """The original repository when running inside a `dvc exp run --queue/--temp` copy, else None."""
    here = Path(start or os.getcwd()).resolve()
    root = find_repo_root(here)
    return root if ".dvc" in here.relative_to(root).parts[:1] else None


def data_path(arg: str | Path) -> Path:
    """A user-given path (data source, local model). Relative paths are relative to the working
    directory (the repository root under DVC); inside a queued DVC experiment copy, a relative path
    that is missing there (such as `../shared/...`) is taken relative to the original repository."""
    path = Path(arg).expanduser()
    if path.is_absolute() or path.exists():
        return path
    original = experiment_copy_root()
    if original is not None and (original / path).exists():
        return original / path
    return path


def model_dir(task: str, method: str, seed: int) -> Path:
    return Path("models") / task / method / str(seed)


def finetune_metrics_file(task: str, method: str, seed: int) -> Path:
    return Path("metrics/finetune") / task / method / f"{seed}.json"


def finetune_plot_file(task: str, method: str, seed: int) -> Path:
    return Path("plots/finetune") / task / method / f"{seed}.csv"


def finetuned_encoder(method: str, seed: int) -> str:
    """The `encoder` label of a fine-tuned model, as used by embeddings_dir and the isotropy paths."""
    return f"finetuned/{method}/{seed}"


def probed_encoder(
    task: str, method: str | None = None, seed: int | None = None, finetune_task: str | None = None
) -> str:
    """Name of an encoder probed on `task`: `pretrained`, `<method>/<seed>` (fine-tuned on `task`
    itself) or `<finetune_task>/<method>/<seed>` (fine-tuned on another task)."""
    if method is None:
        return "pretrained"
    if finetune_task is None or finetune_task == task:
        return f"{method}/{seed}"
    return f"{finetune_task}/{method}/{seed}"


def probe_metrics_file(task: str, encoder: str = "pretrained") -> Path:
    return Path("metrics/probe") / task / f"{encoder}.json"


def probe_arrays_file(task: str, encoder: str = "pretrained") -> Path:
    return Path("data/probe") / task / f"{encoder}.safetensors"


def probe_plot_file(task: str, encoder: str = "pretrained") -> Path:
    return Path("plots/probe") / task / f"{encoder.replace('/', '_')}_by_layer.csv"


def probe_summary_dir() -> Path:
    return Path("plots/probe_summary")
