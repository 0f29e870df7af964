"""Where each stage reads and writes, relative to the repository root (all DVC outputs)."""

from __future__ import annotations

from pathlib import Path


def prepared_dir(task: str) -> Path:
    return Path("data/prepared") / task


def embeddings_dir(task: str, encoder: str = "pretrained") -> Path:
    """`encoder` is "pretrained", or "finetuned/<method>/<seed>" for a fine-tuned encoder."""
    return Path("data/embeddings") / encoder / task


def isotropy_metrics_file(task: str, encoder: str = "pretrained") -> Path:
    return Path("metrics/isotropy") / task / f"{encoder.replace('/', '_')}.json"


def isotropy_arrays_file(task: str, encoder: str = "pretrained") -> Path:
    return Path("data/isotropy") / task / f"{encoder.replace('/', '_')}.safetensors"


def isotropy_plots_dir(task: str, encoder: str = "pretrained") -> Path:
    return Path("plots/isotropy") / task / encoder.replace("/", "_")
