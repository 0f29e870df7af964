"""The embed stage's work on the pre-trained encoder: embed every split of a prepared task into
data/embeddings/pretrained/<task>/ (`extract.embed_splits`) with an info.json of the run (model,
settings, device, library versions, per-split throughput and truncation).

Nothing heavy (torch, transformers) is imported before the task is validated."""

from __future__ import annotations

from typing import TYPE_CHECKING

from isoprobe.core import layout
from isoprobe.core.stage import offline_if_local

if TYPE_CHECKING:
    import torch

    from isoprobe.core.config import Params

ENCODER = "pretrained"


def run_embed(params: Params, task: str, progress: bool = True) -> dict[str, dict]:
    """Stage `embed@<task>`; returns the per-split statistics. An unknown task fails (IsoprobeError)
    before anything is loaded."""
    params.task(task)
    offline_if_local(params.model.name)
    from isoprobe.core.device import pick_device
    from isoprobe.core.io import atomic_dir, write_json
    from isoprobe.core.models import check_lengths, load_encoder, resolve_model
    from isoprobe.data.prepare import load_meta, load_split
    from isoprobe.embed.extract import embed_splits

    cfg = params.embed
    meta = load_meta(layout.prepared_dir(task))
    splits = {s: load_split(layout.prepared_dir(task), s) for s in layout.SPLITS}
    encoder, tokenizer, info = load_encoder(resolve_model(params.model.name, params.model.revision))
    key, max_length = length_setting(cfg, meta["kind"])
    check_lengths(params.model.name, encoder.config, tokenizer, {key: max_length})
    device = pick_device(cfg.device, cfg.num_threads)
    encoder.to(device)
    with atomic_dir(layout.embeddings_dir(task, ENCODER)) as tmp:
        stats = embed_splits(
            encoder, tokenizer, splits, tmp, kind=meta["kind"], batch_size=cfg.batch_size,
            max_length=max_length, dtype=cfg.dtype, device=device, progress=progress,
            metadata={"model": params.model.name, "task": task, "encoder": ENCODER},
        )  # fmt: skip
        for split, s in stats.items():
            print(f"embed {task}/{split}: {s}")
        write_json(tmp / "info.json", embed_info(params, task, info, max_length, device, stats))
    return stats


def length_setting(cfg, kind: str) -> tuple[str, int]:
    """The params key and value of the max length the embed stage uses for a task of `kind`."""
    if kind == "token":
        return "embed.word_max_length", cfg.word_max_length
    return "embed.max_length", cfg.max_length


def embed_info(
    params: Params, task: str, info: dict, max_length: int, device: torch.device, stats: dict
) -> dict:
    """info.json: the model (load_encoder's info), settings, device, versions and split stats."""
    import platform

    import torch
    import transformers

    cfg = params.embed
    return {
        "model": {k: v for k, v in info.items() if k != "missing_keys"},
        "task": task,
        "encoder": ENCODER,
        "max_length": max_length,
        "batch_size": cfg.batch_size,
        "dtype": cfg.dtype,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "autocast": "bf16" if device.type == "cuda" else "off (fp32)",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "splits": stats,
    }
