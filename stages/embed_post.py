"""Stage `embed_post@<task>-<method>-<seed>`: embed every split with a fine-tuned encoder (same files
and layout as the pre-trained ones, plus `head_input`: the normalized vector its classifier sees) and
measure isotropy after fine-tuning.

Writes data/embeddings/finetuned/<method>/<seed>/<task>/, metrics/isotropy/<task>/<method>/<seed>.json
(per-layer [CLS] isotropy as for the pre-trained encoder, and `head_input` isotropy), and
plots/isotropy/<task>/finetuned_<method>_<seed>_by_layer.csv; adds the isotropy metrics to the
fine-tuning MLflow run.

A model folder holding only `status.json` (fine-tuning diverged) is not embedded: the embeddings
folder gets only an info.json and the metrics JSON `status: skipped` with the reason, the CSV its
header; one warning on stderr, nothing logged to MLflow, exit code 0."""

import sys
from pathlib import Path

from isoprobe.core.config import SPLITS, load_params
from isoprobe.core.stage import check_instance, instance_arguments, offline_if_local, run_stage


def skip_reason(folder: Path) -> str | None:
    """Why the model in `folder` is not embedded (its status.json: fine-tuning did not finish)."""
    from isoprobe.core.io import read_json

    status = read_json(folder / "status.json") if (folder / "status.json").is_file() else {}
    if status.get("status", "ok") == "ok":
        return None
    if status["status"] == "diverged":
        return f"fine-tuning diverged at step {status.get('diverged_at_step')}"
    return f"fine-tuning ended with status {status['status']}"


def write_skipped(args, params, folder: Path, reason: str) -> None:
    """Every output of the stage, marked skipped (no embeddings, no isotropy)."""
    from isoprobe.core.io import atomic_dir, atomic_file, write_json
    from isoprobe.core.layout import (
        embeddings_dir,
        finetuned_encoder,
        isotropy_metrics_file,
        isotropy_plots_dir,
    )

    encoder = finetuned_encoder(args.method, args.seed)
    context = {
        "status": "skipped", "reason": reason, "stage": "embed_post", "task": args.task,
        "encoder": encoder, "method": args.method, "seed": args.seed,
    }  # fmt: skip
    with atomic_dir(embeddings_dir(args.task, encoder)) as tmp:
        write_json(tmp / "info.json", {**context, "model": str(folder)})
    plot_dir = isotropy_plots_dir(args.task, encoder)
    with atomic_file(plot_dir.with_name(plot_dir.name + "_by_layer.csv")) as f:
        f.write("layer,isoscore\n")  # header only: `dvc plots show` draws nothing
    write_json(
        isotropy_metrics_file(args.task, encoder),
        {**context, "model": params.model.name, "split": params.isotropy.split},
    )
    where = f"{args.task}/{args.method}/{args.seed}"
    print(f"isoprobe: warning: embed_post {where} skipped: {reason}", file=sys.stderr, flush=True)


def main() -> None:
    args = instance_arguments(__doc__)
    params = load_params(args.params)
    check_instance(args, params.finetune)
    from isoprobe.core.tracking import check_store

    check_store(params.tracking, f"isoprobe/{args.task}")  # fail fast, before writing outputs
    from isoprobe.core.layout import model_dir

    folder = model_dir(args.task, args.method, args.seed)
    if reason := skip_reason(folder):
        write_skipped(args, params, folder, reason)
        return
    offline_if_local("embedded:")  # the fine-tuned model is a local folder

    import numpy as np
    import torch

    from isoprobe.core.device import pick_device
    from isoprobe.core.io import atomic_dir, read_json, write_json
    from isoprobe.core.layout import (
        embeddings_dir,
        finetune_metrics_file,
        finetuned_encoder,
        isotropy_metrics_file,
        isotropy_plots_dir,
        prepared_dir,
    )
    from isoprobe.core.models import load_encoder, resolve_model
    from isoprobe.core.tracking import tracked_run
    from isoprobe.data.prepare import load_meta, load_split
    from isoprobe.embed.extract import embed_splits, load_embeddings
    from isoprobe.finetune.classifier import load_head
    from isoprobe.isotropy import outputs as iso
    from isoprobe.isotropy.metrics import Isotropy

    cfg = params.embed
    encoder_label = finetuned_encoder(args.method, args.seed)
    meta = load_meta(prepared_dir(args.task))
    splits = {s: load_split(prepared_dir(args.task), s) for s in SPLITS}
    encoder, tokenizer, _ = load_encoder(resolve_model(str(folder)))
    head, head_cfg = load_head(folder)
    device = pick_device(cfg.device, cfg.num_threads)
    encoder.to(device)
    pooling = head_cfg["pooling"]

    def add_head_input(arrays: dict) -> dict:
        pooled = {
            "cls": lambda: arrays["cls"][-1],
            "mean": lambda: arrays["mean"][-1],
            "pooler": lambda: arrays["pooler"],
        }[pooling]()
        with torch.no_grad():
            arrays["head_input"] = head.norm(torch.from_numpy(np.ascontiguousarray(pooled))).numpy()
        return arrays

    out_dir = embeddings_dir(args.task, encoder_label)
    with atomic_dir(out_dir) as tmp:
        stats = embed_splits(
            encoder, tokenizer, splits, tmp, kind=meta["kind"], batch_size=cfg.batch_size,
            max_length=cfg.max_length, dtype=cfg.dtype, device=device, progress=not args.no_progress,
            metadata={"model": str(folder), "task": args.task, "encoder": encoder_label},
            pooler=pooling == "pooler", transform=add_head_input,
        )  # fmt: skip
        write_json(
            tmp / "info.json",
            {
                "model": str(folder),
                "task": args.task,
                "encoder": encoder_label,
                "pooling": pooling,
                "splits": stats,
            },
        )

    icfg = params.isotropy
    path = out_dir / f"{icfg.split}.safetensors"
    result = iso.isotropy_by_layer(load_embeddings(path, "cls"), icfg)
    normalized = Isotropy(icfg.top_k, icfg.corr_threshold).fit(load_embeddings(path, "head_input"))
    context = {
        "task": args.task, "encoder": encoder_label, "method": args.method, "seed": args.seed,
        "model": params.model.name, "split": icfg.split,
    }  # fmt: skip
    report = iso.report(result, **context)
    report["head_input"] = iso.finite(normalized.metrics_)
    plot_dir = isotropy_plots_dir(args.task, encoder_label)
    iso.write_by_layer_csv(result, plot_dir.with_name(plot_dir.name + "_by_layer.csv"))
    metrics_path = isotropy_metrics_file(args.task, encoder_label)
    ft_metrics = read_json(finetune_metrics_file(args.task, args.method, args.seed))
    with tracked_run(
        params.tracking, f"isoprobe/{args.task}", "", run_id=ft_metrics.get("mlflow_run_id")
    ) as run:
        run.log_metrics({f"iso_{k}": v for k, v in result.layers[-1].items() if k != "layer"})
        run.log_metrics({f"iso_head_{k}": v for k, v in report["head_input"].items()})
        write_json(metrics_path, report)
        run.log_artifact(metrics_path, "metrics")
    print(
        f"embed_post {args.task}/{args.method}-s{args.seed}: [CLS] layer {report['layer']} isoscore "
        f"{report['isoscore']:.3f}, head input isoscore {normalized.metrics_['isoscore']:.3f}"
    )


if __name__ == "__main__":
    run_stage(main)
