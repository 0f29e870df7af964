"""One probe stage run: check the task, probe an encoder's vectors, write the outputs and log one
MLflow run `probe-<encoder>` (tags stage=probe, encoder, method, seed, finetune_task).

An encoder whose fine-tuning did not finish normally (diverged) is not probed: the stage writes
"skipped" outputs instead (metrics JSON with `status: skipped` and the reason, a safetensors file
with no arrays, the CSV header) and no MLflow run; the summary and the report leave it out and list it."""

from __future__ import annotations

import sys
import time

from isoprobe.core.config import SPLITS, Params
from isoprobe.core.errors import IsoprobeError
from isoprobe.probing.layers import Reference, Split, probe_encoder


def probe_run_name(encoder: str) -> str:
    """`probe-pretrained`, `probe-<method>-s<seed>` or `probe-<ft task>-<method>-s<seed>` (the
    fine-tuning runs' `<method>-s<seed>` convention) for encoder `pretrained` or `[<ft>/]<method>/<seed>`."""
    *head, last = encoder.split("/")
    return "probe-" + ("-".join([*head, f"s{last}"]) if head else last)


def check_probed_task(params: Params, task: str) -> tuple[dict, dict[str, list[dict]]]:
    """The prepared meta and splits of a task listed in probe.tasks or probe.token_tasks, which must
    have class labels."""
    from isoprobe.core.layout import prepared_dir
    from isoprobe.data.prepare import load_meta, load_split

    pr = params.probe
    if task not in pr.tasks and task not in pr.token_tasks:
        raise IsoprobeError(
            f"task '{task}' is in neither probe.tasks {pr.tasks} nor probe.token_tasks {pr.token_tasks}"
        )
    meta = load_meta(prepared_dir(task))
    if meta["label_type"] != "classification":
        key = "probe.token_tasks" if task in pr.token_tasks else "probe.tasks"
        raise IsoprobeError(
            f"{key}: '{task}' is a {meta['label_type']} task; probes need class labels "
            "(leave it out of the list)"
        )
    return meta, {s: load_split(prepared_dir(task), s) for s in SPLITS}


def embed_words(
    params: Params, folder, splits: dict[str, list[dict]], progress: bool = True
) -> tuple[dict[str, Split], dict[str, int]]:
    """Word vectors of a token task's splits through the encoder in `folder` (a fine-tuned model),
    in memory, with the embed section's batch size, word_max_length and device."""
    from isoprobe.core.device import pick_device
    from isoprobe.core.models import load_encoder, resolve_model
    from isoprobe.embed.extract import encode_rows
    from isoprobe.probing.outputs import probe_split, words_cut

    cfg = params.embed
    encoder, tokenizer, _ = load_encoder(resolve_model(str(folder)))
    device = pick_device(cfg.device, cfg.num_threads)
    encoder.to(device)
    data, cut = {}, {}
    for split, rows in splits.items():
        arrays = encode_rows(
            encoder, tokenizer, rows, kind="token", batch_size=cfg.batch_size,
            max_length=cfg.word_max_length, device=device, progress=progress, desc=f"embed {split}",
        )  # fmt: skip
        data[split], cut[split] = probe_split(arrays, rows, "token", "cls"), words_cut(arrays)
    return data, cut


def probe_and_write(
    params: Params,
    task: str,
    meta: dict,
    encoder: str,
    data: dict[str, Split],
    words_cut: dict[str, int],
    context: dict,
    reference: Reference | None = None,
    tags: dict | None = None,
    progress: bool = True,
) -> dict:
    """Probe `data` (vectors of every split) and write metrics, arrays, CSV and the MLflow run."""
    import torch
    from threadpoolctl import threadpool_limits

    from isoprobe.core.device import usable_cores
    from isoprobe.core.layout import probe_arrays_file, probe_metrics_file, probe_plot_file
    from isoprobe.core.tracking import tracked_run
    from isoprobe.probing import outputs as out

    cfg = params.probe
    labels = meta["label_names"]
    threads = cfg.num_threads or usable_cores()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    with threadpool_limits(threads):  # numpy / scikit-learn BLAS and OpenMP pools
        result = probe_encoder(
            data, len(labels), cfg, reference, progress=progress, desc=f"probe {task}/{encoder}"
        )
    features = "words" if meta["kind"] == "token" else cfg.features
    full_context = {
        "task": task, "encoder": encoder, **context, "features": features, "labels": labels,
        "rows": {s: len(d.y) for s, d in data.items()}, "words_cut_by_max_length": words_cut,
        "seconds": round(time.perf_counter() - t0, 2), "threads": threads,
    }  # fmt: skip
    report = out.report(result, full_context)
    metrics_path = probe_metrics_file(task, encoder)
    with tracked_run(
        params.tracking,
        f"isoprobe/{task}",
        probe_run_name(encoder),
        tags={"task": task, "stage": "probe", "encoder": encoder, "model": params.model.name, **(tags or {})},
    ) as run:  # fmt: skip
        run.log_params(
            {
                "task": task, "encoder": encoder, "features": features, "model.name": params.model.name,
                "probe.seed": cfg.seed, "probe.layers": cfg.layers,
                "probe.linear.c_grid": cfg.linear.c_grid, "probe.mlp.hidden_grid": cfg.mlp.hidden_grid,
                "probe.mlp.l2_grid": cfg.mlp.l2_grid, "probe.mlp.lr": cfg.mlp.lr,
                "probe.directprobe.enabled": cfg.directprobe.enabled,
                "probe.directprobe.max_rows": cfg.directprobe.max_rows, "probe.num_threads": threads,
                **{f"rows_{s}": len(d.y) for s, d in data.items()},
                "method": (tags or {}).get("method", "pretrained"),
                "seed": (tags or {}).get("seed"),
                "finetune_task": (tags or {}).get("finetune_task"),
            }
        )  # fmt: skip
        out.log_layers(run, result)
        report["mlflow_run_id"] = run.run_id
        out.write_outputs(
            result, report, metrics_path, probe_arrays_file(task, encoder),
            probe_plot_file(task, encoder), {"task": task, "encoder": encoder, "labels": ",".join(labels)},
        )  # fmt: skip
        run.log_artifact(metrics_path, "metrics")
    return report


def skip_reason(status: dict | None) -> str | None:
    """Why an encoder is not used: `status` (a fine-tuning metrics JSON, models/.../status.json or a
    skipped stage's output) says its run did not finish normally; None when it did (or is absent)."""
    if not status or status.get("status", "ok") == "ok":
        return None
    if status.get("reason"):
        return str(status["reason"])
    if status["status"] == "diverged":
        return f"fine-tuning diverged at step {status.get('diverged_at_step')}"
    return f"fine-tuning ended with status {status['status']}"


def is_skipped(report: dict | None) -> bool:
    return bool(report) and report.get("status") == "skipped"


def warn_skipped(stage: str, where: str, reason: str) -> None:
    print(f"isoprobe: warning: {stage} {where} skipped: {reason}", file=sys.stderr, flush=True)


def write_skipped(stage: str, task: str, encoder: str, reason: str, context: dict) -> dict:
    """The outputs of a probe stage that did not probe `encoder` (every path DVC expects); returns
    the metrics JSON."""
    import csv

    from isoprobe.core.io import atomic_file, write_json, write_safetensors
    from isoprobe.core.layout import probe_arrays_file, probe_metrics_file, probe_plot_file
    from isoprobe.probing.outputs import CSV_COLUMNS

    report = {"status": "skipped", "reason": reason, "stage": stage, "task": task,
              "encoder": encoder, **context}  # fmt: skip
    meta = {"status": "skipped", "reason": reason, "task": task, "encoder": encoder}
    write_safetensors(probe_arrays_file(task, encoder), {}, meta)
    with atomic_file(probe_plot_file(task, encoder)) as f:
        csv.writer(f).writerow(CSV_COLUMNS)  # header only: `dvc plots show` draws nothing
    write_json(probe_metrics_file(task, encoder), report)
    return report


def encoder_groups(params: Params, task: str) -> dict[str, list[str]]:
    """Probed encoders of `task` by group: {"pretrained": ["pretrained"], "<method>": [encoders over
    seeds], ...}; for a token task the groups are `<finetune task>/<method>`."""
    from isoprobe.core.layout import probed_encoder

    ft = params.finetune
    groups = {"pretrained": ["pretrained"]}
    sources = ft.tasks if task in params.probe.token_tasks else [task]
    for source in sources:
        for method in ft.methods:
            name = method if source == task else f"{source}/{method}"
            groups[name] = [probed_encoder(task, method, s, source) for s in ft.seeds]
    return groups


def write_summary_plots(params: Params, task: str, folder) -> tuple[int, list[str]]:
    """The summary figures of one task into `folder` (skipped encoders left out: medians over the
    seeds probed); returns how many figures were written and the skipped encoders."""
    from isoprobe.core.io import read_json
    from isoprobe.core.layout import probe_arrays_file, probe_metrics_file
    from isoprobe.embed.extract import load_embeddings
    from isoprobe.probing import plots

    folder.mkdir(parents=True, exist_ok=True)
    reports, centroids, skipped = {}, {}, []
    for group, encoders in encoder_groups(params, task).items():
        for enc in encoders:
            path = probe_metrics_file(task, enc)
            if not path.is_file():
                raise IsoprobeError(f"probe metrics not found: {path} (run the probe stages first)")
        runs = {e: read_json(probe_metrics_file(task, e)) for e in encoders}
        skipped += [e for e, r in runs.items() if is_skipped(r)]
        probed = [e for e, r in runs.items() if not is_skipped(r)]
        if not probed:
            continue
        reports[group] = [runs[e] for e in probed]
        centroids[group] = load_embeddings(probe_arrays_file(task, probed[0]), "centroids")
    if "pretrained" not in reports:
        raise IsoprobeError(f"{task}: the pre-trained encoder was not probed (skipped)")
    pre = reports["pretrained"][0]
    labels, where = pre["labels"], f"{task}, {params.model.name}, {pre['features']}"
    dp = params.probe.directprobe.enabled
    fine = {k: v for k, v in reports.items() if k != "pretrained"}
    plots.by_layer(
        reports,
        [("linear probe test accuracy", lambda x: x["linear"]["test"]),
         ("MLP probe test accuracy", lambda x: x["mlp"]["test"])],
        folder / "accuracy.png", f"Classifier probes by layer: {where}",
    )  # fmt: skip
    count = 1
    if dp:
        plots.by_layer(
            reports, [("DirectProbe clusters (train)", lambda x: x["directprobe"]["train"]["clusters"])],
            folder / "clusters.png", f"DirectProbe clusters by layer: {where}",
            hline=len(labels), hline_label=f"{len(labels)} labels (linearly separable)",
        )  # fmt: skip
        plots.by_layer(
            reports,
            [("min label-pair hull distance (train)", lambda x: x["directprobe"]["train"].get("min_distance")),
             ("DirectProbe test accuracy", lambda x: x["directprobe"]["test_accuracy"])],
            folder / "distance.png", f"Distances between labels by layer: {where}",
        )  # fmt: skip
        count += 2
    panels = [("linear CKA to pre-trained", lambda x: x.get("cka_to_pretrained"))]
    if dp:
        panels.insert(0, ("spatial similarity to pre-trained", lambda x: x.get("similarity_to_pretrained")))  # fmt: skip
        panels.append(("spatial similarity train/test", lambda x: x["directprobe"]["similarity_train_test"]))  # fmt: skip
    if not fine:  # every fine-tuned encoder skipped: nothing to compare
        return count, skipped
    plots.by_layer(
        {**fine, "pretrained": reports["pretrained"]} if dp else fine, panels,
        folder / "similarity.png", f"Change of the space by layer: {where}",
    )  # fmt: skip
    last = pre["layer"]
    plots.centroid_pca(
        centroids["pretrained"][last], {k: c[last] for k, c in centroids.items() if k != "pretrained"},
        labels, last, folder / "centroids_pca.png",
        f"Label centroids before and after fine-tuning (first seed): {where}",
    )  # fmt: skip
    return count + 2, skipped
