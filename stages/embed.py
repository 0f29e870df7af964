"""Stage `embed@<task>`: run the pre-trained encoder over every split of a prepared task; write
data/embeddings/pretrained/<task>/<split>.safetensors (per-layer [CLS] and mean vectors, and word
vectors for token tasks) and info.json (model, device, throughput, truncation counts)."""

import platform

from isoprobe.core.config import SPLITS, load_params
from isoprobe.core.stage import offline_if_local, run_stage, task_arguments

ENCODER = "pretrained"


def main() -> None:
    args = task_arguments(__doc__)
    params = load_params(args.params)
    params.task(args.task)
    offline_if_local(params.model.name)

    import torch
    import transformers

    from isoprobe.core.device import pick_device
    from isoprobe.core.io import atomic_dir, write_json
    from isoprobe.core.layout import embeddings_dir, prepared_dir
    from isoprobe.core.models import load_encoder, resolve_model
    from isoprobe.data.prepare import load_meta, load_split
    from isoprobe.embed.extract import embed_splits

    cfg = params.embed
    meta = load_meta(prepared_dir(args.task))
    splits = {s: load_split(prepared_dir(args.task), s) for s in SPLITS}
    encoder, tokenizer, info = load_encoder(resolve_model(params.model.name, params.model.revision))
    device = pick_device(cfg.device, cfg.num_threads)
    encoder.to(device)
    max_length = cfg.word_max_length if meta["kind"] == "token" else cfg.max_length
    with atomic_dir(embeddings_dir(args.task, ENCODER)) as tmp:
        stats = embed_splits(
            encoder, tokenizer, splits, tmp, kind=meta["kind"], batch_size=cfg.batch_size,
            max_length=max_length, dtype=cfg.dtype, device=device, progress=not args.no_progress,
            metadata={"model": params.model.name, "task": args.task, "encoder": ENCODER},
        )  # fmt: skip
        for split, s in stats.items():
            print(f"embed {args.task}/{split}: {s}")
        write_json(
            tmp / "info.json",
            {
                "model": {k: v for k, v in info.items() if k != "missing_keys"},
                "task": args.task,
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
            },
        )


if __name__ == "__main__":
    run_stage(main)
