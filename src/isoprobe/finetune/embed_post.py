"""The embed_post stage's work: embed every split with a fine-tuned encoder (the files of
`embed.extract`, plus `head_input`: the normalized vector its classifier sees) and measure the
isotropy of [CLS] by layer and of `head_input` after fine-tuning; the metrics are added to the
fine-tuning MLflow run.

A model folder whose status.json says fine-tuning did not finish is not embedded: every output is
written marked skipped (`core.skipped`). Nothing heavy (torch, transformers) is imported before the
instance and the MLflow store are checked."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from isoprobe.core import layout
from isoprobe.core.stage import check_instance, offline_if_local

if TYPE_CHECKING:
    from isoprobe.core.config import Params
    from isoprobe.finetune.heads import ClassifierHead
    from isoprobe.isotropy.metrics import Isotropy
    from isoprobe.isotropy.outputs import LayerIsotropy

STAGE = "embed_post"


def run_embed_post(
    params: Params, task: str, method: str, seed: int, progress: bool = True
) -> dict:
    """Stage `embed_post@<task>-<method>-<seed>`; returns the isotropy metrics JSON it wrote. An
    instance outside the grid or an unusable MLflow store fails (IsoprobeError) before any output is
    written."""
    from isoprobe.core.io import read_json
    from isoprobe.core.skipped import skip_reason
    from isoprobe.core.tracking import check_store

    check_instance(SimpleNamespace(task=task, method=method, seed=seed), params.finetune)
    check_store(params.tracking, layout.experiment_name(task))  # fail fast, before writing outputs
    folder = layout.model_dir(task, method, seed)
    status = read_json(folder / "status.json") if (folder / "status.json").is_file() else {}
    if reason := skip_reason(status):
        return write_skipped(params, task, method, seed, folder, reason)
    offline_if_local("embedded:")  # the fine-tuned model is a local folder
    encoder = layout.finetuned_encoder(method, seed)
    embed_finetuned(params, task, encoder, folder, progress)
    result, head, report = measure_isotropy(params, task, method, seed)
    track(params, task, method, seed, result, report)
    cls_iso, head_iso = report["isoscore"], report["head_input"]["isoscore"]  # None: undefined
    print(
        f"embed_post {task}/{method}-s{seed}: [CLS] layer {report['layer']} isoscore "
        f"{'undefined' if cls_iso is None else f'{cls_iso:.3f}'}, head input isoscore "
        f"{'undefined' if head_iso is None else f'{head_iso:.3f}'}"
    )
    return report


def write_skipped(
    params: Params, task: str, method: str, seed: int, folder: Path, reason: str
) -> dict:
    """Every output of the stage, marked skipped (no embeddings, no isotropy); returns the metrics
    JSON written."""
    from isoprobe.core.io import atomic_dir, atomic_file, write_json
    from isoprobe.core.skipped import skipped_record, warn_skipped

    encoder = layout.finetuned_encoder(method, seed)
    context = skipped_record(STAGE, task, encoder, reason, method=method, seed=seed)
    with atomic_dir(layout.embeddings_dir(task, encoder)) as tmp:
        write_json(tmp / "info.json", {**context, "model": str(folder)})
    with atomic_file(layout.isotropy_plot_csv(task, encoder, "by_layer")) as f:
        f.write("layer,isoscore\n")  # header only: `dvc plots show` draws nothing
    report = {**context, "model": params.model.name, "split": params.isotropy.split}
    write_json(layout.isotropy_metrics_file(task, encoder), report)
    warn_skipped(STAGE, f"{task}/{method}/{seed}", reason)
    return report


def head_input(head: ClassifierHead, pooling: str):
    """An `embed_splits` transform adding `head_input`: the head's normalizer (eval mode) applied to
    the vector its classifier reads (`pooling`: last-layer [CLS], mean, or the pooler output)."""
    import numpy as np
    import torch

    def add(arrays: dict) -> dict:
        pooled = {
            "cls": lambda: arrays["cls"][-1],
            "mean": lambda: arrays["mean"][-1],
            "pooler": lambda: arrays["pooler"],
        }[pooling]()
        with torch.no_grad():
            arrays["head_input"] = head.norm(torch.from_numpy(np.ascontiguousarray(pooled))).numpy()
        return arrays

    return add


def embed_finetuned(params: Params, task: str, encoder: str, folder: Path, progress: bool) -> None:
    """data/embeddings/finetuned/<method>/<seed>/<task>/: every split and info.json."""
    from isoprobe.core.device import pick_device
    from isoprobe.core.io import atomic_dir, write_json
    from isoprobe.core.models import check_lengths, load_encoder, resolve_model
    from isoprobe.data.prepare import load_meta, load_split
    from isoprobe.embed.extract import embed_splits
    from isoprobe.finetune.classifier import load_head
    from isoprobe.isotropy.outputs import check_top_k

    cfg = params.embed
    meta = load_meta(layout.prepared_dir(task))
    splits = {s: load_split(layout.prepared_dir(task), s) for s in layout.SPLITS}
    model, tokenizer, _ = load_encoder(resolve_model(str(folder)))
    check_lengths(str(folder), model.config, tokenizer, {"embed.max_length": cfg.max_length})
    check_top_k(params.isotropy, model.config.hidden_size)  # before any output is written
    head, head_cfg = load_head(folder)
    device = pick_device(cfg.device, cfg.num_threads)
    model.to(device)
    pooling = head_cfg["pooling"]
    with atomic_dir(layout.embeddings_dir(task, encoder)) as tmp:
        stats = embed_splits(
            model, tokenizer, splits, tmp, kind=meta["kind"], batch_size=cfg.batch_size,
            max_length=cfg.max_length, dtype=cfg.dtype, device=device, progress=progress,
            metadata={"model": str(folder), "task": task, "encoder": encoder},
            pooler=pooling == "pooler", transform=head_input(head, pooling),
        )  # fmt: skip
        info = {"model": str(folder), "task": task, "encoder": encoder, "pooling": pooling}
        write_json(tmp / "info.json", {**info, "splits": stats})


def measure_isotropy(
    params: Params, task: str, method: str, seed: int
) -> tuple[LayerIsotropy, Isotropy, dict]:
    """Isotropy of [CLS] by layer and of `head_input` on `isotropy.split` and their metrics JSON
    (not written yet); writes the by-layer CSV."""
    from isoprobe.core.io import json_safe
    from isoprobe.embed.extract import load_embeddings
    from isoprobe.isotropy import outputs as iso
    from isoprobe.isotropy.metrics import Isotropy

    icfg, encoder = params.isotropy, layout.finetuned_encoder(method, seed)
    path = layout.embeddings_dir(task, encoder) / f"{icfg.split}.safetensors"
    result = iso.isotropy_by_layer(load_embeddings(path, "cls"), icfg)
    normalized = Isotropy(icfg.top_k, icfg.corr_threshold).fit(load_embeddings(path, "head_input"))
    context = {
        "task": task, "encoder": encoder, "method": method, "seed": seed,
        "model": params.model.name, "split": icfg.split,
    }  # fmt: skip
    report = iso.report(result, **context)
    report["head_input"] = json_safe(normalized.metrics_)
    iso.write_by_layer_csv(result, layout.isotropy_plot_csv(task, encoder, "by_layer"))
    return result, normalized, report


def track(
    params: Params, task: str, method: str, seed: int, result: LayerIsotropy, report: dict
) -> None:
    """Add the last layer's and the head input's isotropy to the fine-tuning MLflow run, write the
    metrics JSON and log it there."""
    from isoprobe.core.io import read_json, write_json
    from isoprobe.core.tracking import tracked_run

    metrics_path = layout.isotropy_metrics_file(task, layout.finetuned_encoder(method, seed))
    ft_metrics = read_json(layout.finetune_metrics_file(task, method, seed))
    with tracked_run(
        params.tracking, layout.experiment_name(task), "", run_id=ft_metrics.get("mlflow_run_id")
    ) as run:
        run.log_metrics({f"iso_{k}": v for k, v in result.layers[-1].items() if k != "layer"})
        run.log_metrics({f"iso_head_{k}": v for k, v in report["head_input"].items()})
        write_json(metrics_path, report)
        run.log_artifact(metrics_path, "metrics")
