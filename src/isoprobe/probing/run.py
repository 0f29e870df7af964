"""The probe stages' work: `run_probe` (the pre-trained encoder), `run_probe_post` (a fine-tuned
encoder: probe_post, and probe_cross for a token task through another task's encoder) and
`run_probe_summary`. Each probe run checks the task, probes an encoder's vectors, writes the outputs
and logs one MLflow run `probe-<encoder>` (tags stage=probe, encoder, method, seed, finetune_task).

An encoder whose fine-tuning did not finish normally (diverged) is not probed: the stage writes
"skipped" outputs instead (`isoprobe.core.skipped`: metrics JSON with `status: skipped` and the
reason, a safetensors file with no arrays, the CSV header) and no MLflow run; the summary and the
report leave it out and list it.

Imports here are light (core only); the heavy libraries are imported once the inputs are checked."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from isoprobe.core import layout
from isoprobe.core.config import Params
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.io import read_json
from isoprobe.core.layout import SPLITS
from isoprobe.core.skipped import is_skipped, skip_reason, skipped_record, warn_skipped

if TYPE_CHECKING:
    from isoprobe.probing.layers import ProbeResult, Reference, Split


def probe_run_name(encoder: str) -> str:
    """`probe-pretrained`, `probe-<method>-s<seed>` or `probe-<ft task>-<method>-s<seed>` (the
    fine-tuning runs' `<method>-s<seed>` convention) for encoder `pretrained` or `[<ft>/]<method>/<seed>`."""
    *head, last = encoder.split("/")
    return "probe-" + ("-".join([*head, f"s{last}"]) if head else last)


# --------------------------------------------------------------------------- the pre-trained encoder


def run_probe(params: Params, task: str, progress: bool = True) -> dict:
    """Stages `probe@<task>` and `probe_words@<task>`: probe the pre-trained vectors of `task`;
    returns the metrics JSON it wrote."""
    params.task(task)
    from isoprobe.core.tracking import check_store
    from isoprobe.probing.outputs import load_probe_data

    check_store(params.tracking, layout.experiment_name(task))  # fail fast, before probing
    meta, splits = check_probed_task(params, task)
    emb_dir = layout.embeddings_dir(task, "pretrained")
    data, cut = load_probe_data(emb_dir, splits, meta["kind"], params.probe.features)
    encoder = layout.probed_encoder(task)
    context = {"model": params.model.name}
    report = probe_and_write(params, task, meta, encoder, data, cut, context, progress=progress)
    print(
        f"probe {task}/{encoder}: layer {report['layer']}: linear {report['linear_test']:.3f}, "
        f"mlp {report['mlp_test']:.3f}, clusters {report.get('clusters')} for "
        f"{len(meta['label_names'])} labels"
    )
    return report


def check_probed_task(params: Params, task: str) -> tuple[dict, dict[str, list[dict]]]:
    """The prepared meta and splits of a task listed in probe.tasks or probe.token_tasks, which must
    have class labels."""
    from isoprobe.data.prepare import load_meta, load_split

    pr = params.probe
    if task not in pr.tasks and task not in pr.token_tasks:
        raise IsoprobeError(
            f"task '{task}' is in neither probe.tasks {pr.tasks} nor probe.token_tasks {pr.token_tasks}"
        )
    meta = load_meta(layout.prepared_dir(task))
    if meta["label_type"] != "classification":
        key = "probe.token_tasks" if task in pr.token_tasks else "probe.tasks"
        raise IsoprobeError(
            f"{key}: '{task}' is a {meta['label_type']} task; probes need class labels "
            "(leave it out of the list)"
        )
    return meta, {s: load_split(layout.prepared_dir(task), s) for s in SPLITS}


# --------------------------------------------------------------------------- a fine-tuned encoder


@dataclass(frozen=True)
class Finetuned:
    """A fine-tuned encoder probed on `task`: fine-tuned on `task` itself (probe_post) or on another
    task `finetune_task` (probe_cross, `task` a token task)."""

    task: str
    method: str
    seed: int
    finetune_task: str

    @property
    def cross(self) -> bool:
        return self.finetune_task != self.task

    @property
    def stage(self) -> str:
        return "probe_cross" if self.cross else "probe_post"

    @property
    def encoder(self) -> str:
        return layout.probed_encoder(self.task, self.method, self.seed, self.finetune_task)

    @property
    def model_dir(self) -> Path:
        return layout.model_dir(self.finetune_task, self.method, self.seed)

    @property
    def embeddings_dir(self) -> Path:
        """The vectors embed_post wrote (probe_post)."""
        return layout.embeddings_dir(self.task, layout.finetuned_encoder(self.method, self.seed))

    @property
    def marker(self) -> Path:
        """The stage's own dep that says whether fine-tuning finished: probe_cross reads the model
        folder, probe_post embed_post's vectors."""
        return self.model_dir / "status.json" if self.cross else self.embeddings_dir / "info.json"


def run_probe_post(
    params: Params,
    task: str,
    method: str,
    seed: int,
    finetune_task: str | None = None,
    progress: bool = True,
) -> dict:
    """Stages `probe_post@<task>-<method>-<seed>` and (with `finetune_task`) `probe_cross`: probe a
    fine-tuned encoder and compare it with the pre-trained one; returns the metrics JSON it wrote
    (the skipped record, after one warning, when the fine-tuning did not finish normally)."""
    from isoprobe.core.stage import offline_if_local

    ft = Finetuned(task, method, seed, finetune_task or task)
    check_finetuned(params, ft)
    offline_if_local("embedded:")  # fine-tuned models are local folders
    from isoprobe.core.tracking import check_store

    check_store(params.tracking, layout.experiment_name(task))  # fail fast, before probing
    ft_metrics = finetune_metrics(ft)
    context = {
        "model": str(ft.model_dir), "base_model": params.model.name,
        "finetune_task": ft.finetune_task, "method": method, "seed": seed,
        "finetune_status": ft_metrics.get("status"),
    }  # fmt: skip
    if reason := finetuned_skip_reason(ft, ft_metrics):
        return write_skipped(ft.stage, task, ft.encoder, reason, context)
    report = _probe_finetuned(params, ft, context, ft_metrics.get("mlflow_run_id"), progress)
    print(
        f"probe {task}/{ft.encoder}: layer {report['layer']}: linear {report['linear_test']:.3f}, "
        f"mlp {report['mlp_test']:.3f}, clusters {report.get('clusters')}, "
        f"CKA to pre-trained {report.get('cka_to_pretrained')}"
    )
    return report


def check_finetuned(params: Params, ft: Finetuned) -> None:
    """The instance is in the fine-tuning grid, and `task` is in probe.tasks (probe_post) or
    probe.token_tasks (probe_cross)."""
    from isoprobe.core.stage import check_instance

    instance = SimpleNamespace(task=ft.finetune_task, method=ft.method, seed=ft.seed)
    check_instance(instance, params.finetune)
    if ft.cross and ft.task not in params.probe.token_tasks:
        raise IsoprobeError(
            f"--finetune-task {ft.finetune_task} probes another task's encoder: '{ft.task}' must be "
            f"one of probe.token_tasks {params.probe.token_tasks}"
        )
    if not ft.cross and ft.task not in params.probe.tasks:
        raise IsoprobeError(f"'{ft.task}' is not one of probe.tasks {params.probe.tasks}")


def finetune_metrics(ft: Finetuned) -> dict:
    """The fine-tuning metrics JSON of the encoder (IsoprobeError when the file is missing)."""
    path = layout.finetune_metrics_file(ft.finetune_task, ft.method, ft.seed)
    if not path.is_file():
        raise IsoprobeError(f"fine-tuning metrics not found: {path} (run the finetune stage first)")
    return read_json(path)


def finetuned_skip_reason(ft: Finetuned, ft_metrics: dict) -> str | None:
    """Why the encoder is not probed: its fine-tuning metrics, or else the stage's own marker file,
    say the run did not finish normally; None when it did."""
    if reason := skip_reason(ft_metrics):
        return reason
    return skip_reason(read_json(ft.marker) if ft.marker.is_file() else None)


def write_skipped(stage: str, task: str, encoder: str, reason: str, context: dict) -> dict:
    """The outputs of a probe stage that did not probe `encoder` (every path DVC expects) and one
    warning; returns the metrics JSON (`isoprobe.core.skipped.skipped_record`)."""
    from isoprobe.probing.outputs import write_skipped_outputs

    record = skipped_record(stage, task, encoder, reason, **context)
    write_skipped_outputs(
        record, layout.probe_metrics_file(task, encoder), layout.probe_arrays_file(task, encoder),
        layout.probe_plot_file(task, encoder),
    )  # fmt: skip
    warn_skipped(stage, f"{task}/{encoder}", reason)
    return record


def _probe_finetuned(
    params: Params, ft: Finetuned, context: dict, ft_run_id: str | None, progress: bool
) -> dict:
    """Probe the fine-tuned encoder's vectors against the pre-trained ones of the same rows."""
    meta, splits = check_probed_task(params, ft.task)
    pre, data, cut = finetuned_vectors(params, ft, meta, splits, progress)
    reference = pretrained_reference(ft.task, pre, data)
    tags = {"method": ft.method, "seed": ft.seed, "finetune_task": ft.finetune_task,
            "finetune_run_id": ft_run_id}  # fmt: skip
    return probe_and_write(
        params, ft.task, meta, ft.encoder, data, cut, context, reference, tags, progress=progress
    )


def finetuned_vectors(
    params: Params, ft: Finetuned, meta: dict, splits: dict[str, list[dict]], progress: bool
) -> tuple[dict[str, Split], dict[str, Split], dict[str, int]]:
    """The pre-trained train vectors, then the fine-tuned vectors of every split (embed_post's
    files, or word vectors computed here for probe_cross) and the words cut per split."""
    from isoprobe.probing.outputs import load_probe_data

    kind, features = meta["kind"], params.probe.features
    pre_dir = layout.embeddings_dir(ft.task, "pretrained")
    pre, _ = load_probe_data(pre_dir, {"train": splits["train"]}, kind, features)
    if ft.cross:
        data, cut = embed_words(params, ft.model_dir, splits, progress=progress)
    else:
        data, cut = load_probe_data(ft.embeddings_dir, splits, kind, features)
    return pre, data, cut


def pretrained_reference(task: str, pre: dict[str, Split], data: dict[str, Split]) -> Reference:
    """What the fine-tuned vectors are compared with: the pre-trained train vectors of the same
    rows, and the pre-trained probe's centroids and train distances."""
    from isoprobe.embed.extract import load_embeddings
    from isoprobe.probing.layers import Reference

    if not (pre["train"].y == data["train"].y).all():
        raise IsoprobeError(
            f"{task}: pre-trained and fine-tuned vectors are not of the same rows; rerun embed"
        )
    ref_file = layout.probe_arrays_file(task, "pretrained")
    return Reference(
        train=pre["train"].X,
        centroids=load_embeddings(ref_file, "centroids"),
        distances_train=load_embeddings(ref_file, "distances_train"),
    )


def embed_words(
    params: Params, folder, splits: dict[str, list[dict]], progress: bool = True
) -> tuple[dict[str, Split], dict[str, int]]:
    """Word vectors of a token task's splits through the encoder in `folder` (a fine-tuned model),
    in memory, with the embed section's batch size, word_max_length and device."""
    from isoprobe.core.device import pick_device
    from isoprobe.core.models import check_lengths, load_encoder, resolve_model
    from isoprobe.embed.extract import encode_rows
    from isoprobe.probing.outputs import probe_split, words_cut

    cfg = params.embed
    encoder, tokenizer, _ = load_encoder(resolve_model(str(folder)))
    lengths = {"embed.word_max_length": cfg.word_max_length}
    check_lengths(str(folder), encoder.config, tokenizer, lengths)
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


# --------------------------------------------------------------------------- probing and its outputs


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
    from isoprobe.probing import outputs as out

    t0 = time.perf_counter()
    result, threads = _probe(params, task, meta, encoder, data, reference, progress)
    features = "words" if meta["kind"] == "token" else params.probe.features
    full_context = {
        "task": task, "encoder": encoder, **context, "features": features,
        "labels": meta["label_names"], "rows": {s: len(d.y) for s, d in data.items()},
        "words_cut_by_max_length": words_cut, "seconds": round(time.perf_counter() - t0, 2),
        "threads": threads,
    }  # fmt: skip
    report = out.report(result, full_context)
    logged = mlflow_params(params, task, encoder, features, threads, data, tags or {})
    _track(params, task, encoder, meta, result, report, logged, tags or {})
    return report


def _probe(
    params: Params,
    task: str,
    meta: dict,
    encoder: str,
    data: dict[str, Split],
    reference: Reference | None,
    progress: bool,
) -> tuple[ProbeResult, int]:
    """`probe_encoder` with probe.num_threads (0: every usable core) for torch and the numpy /
    scikit-learn BLAS and OpenMP pools; returns the result and the thread count."""
    import torch
    from threadpoolctl import threadpool_limits

    from isoprobe.core.device import usable_cores
    from isoprobe.probing.layers import probe_encoder

    cfg = params.probe
    threads = cfg.num_threads or usable_cores()
    torch.set_num_threads(threads)
    with threadpool_limits(threads):
        result = probe_encoder(
            data, len(meta["label_names"]), cfg, reference, progress=progress,
            desc=f"probe {task}/{encoder}",
        )  # fmt: skip
    return result, threads


def mlflow_params(
    params: Params,
    task: str,
    encoder: str,
    features: str,
    threads: int,
    data: dict[str, Split],
    tags: dict,
) -> dict:
    """The MLflow params of a probe run."""
    cfg = params.probe
    return {
        "task": task, "encoder": encoder, "features": features, "model.name": params.model.name,
        "probe.seed": cfg.seed, "probe.layers": cfg.layers,
        "probe.linear.c_grid": cfg.linear.c_grid, "probe.mlp.hidden_grid": cfg.mlp.hidden_grid,
        "probe.mlp.l2_grid": cfg.mlp.l2_grid, "probe.mlp.lr": cfg.mlp.lr,
        "probe.directprobe.enabled": cfg.directprobe.enabled,
        "probe.directprobe.max_rows": cfg.directprobe.max_rows, "probe.num_threads": threads,
        **{f"rows_{s}": len(d.y) for s, d in data.items()},
        "method": tags.get("method", "pretrained"),
        "seed": tags.get("seed"),
        "finetune_task": tags.get("finetune_task"),
    }  # fmt: skip


def _track(
    params: Params,
    task: str,
    encoder: str,
    meta: dict,
    result: ProbeResult,
    report: dict,
    logged: dict,
    tags: dict,
) -> None:
    """Log the run (params, per-layer metrics), then write the outputs with its run id and log the
    metrics JSON."""
    from isoprobe.core.tracking import tracked_run
    from isoprobe.probing import outputs as out

    metrics_path = layout.probe_metrics_file(task, encoder)
    all_tags = {"task": task, "stage": "probe", "encoder": encoder, "model": params.model.name,
                **tags}  # fmt: skip
    metadata = {"task": task, "encoder": encoder, "labels": ",".join(meta["label_names"])}
    with tracked_run(
        params.tracking, layout.experiment_name(task), probe_run_name(encoder), tags=all_tags
    ) as run:
        run.log_params(logged)
        out.log_layers(run, result)
        report["mlflow_run_id"] = run.run_id
        out.write_outputs(
            result, report, metrics_path, layout.probe_arrays_file(task, encoder),
            layout.probe_plot_file(task, encoder), metadata,
        )  # fmt: skip
        run.log_artifact(metrics_path, "metrics")


# --------------------------------------------------------------------------- the summary figures


def run_probe_summary(params: Params) -> dict[str, tuple[int, list[str]]]:
    """Stage `probe_summary`: the figures of every task of probe.tasks and probe.token_tasks into
    plots/probe_summary/<task>/ (the folder replaced whole); returns per task the number of figures
    and the skipped encoders left out."""
    from isoprobe.core.io import atomic_dir

    done = {}
    with atomic_dir(layout.probe_summary_dir()) as tmp:
        for task in [*params.probe.tasks, *params.probe.token_tasks]:
            n, skipped = done[task] = write_summary_plots(params, task, tmp / task)
            left_out = f", {len(skipped)} skipped encoders left out ({', '.join(skipped)})"
            print(f"probe_summary {task}: {n} figures" + (left_out if skipped else ""))
    return done


def encoder_groups(params: Params, task: str) -> dict[str, list[str]]:
    """Probed encoders of `task` by group: {"pretrained": ["pretrained"], "<method>": [encoders over
    seeds], ...}; for a token task the groups are `<finetune task>/<method>`."""
    ft = params.finetune
    groups = {"pretrained": ["pretrained"]}
    sources = ft.tasks if task in params.probe.token_tasks else [task]
    for source in sources:
        for method in ft.methods:
            name = method if source == task else f"{source}/{method}"
            groups[name] = [layout.probed_encoder(task, method, s, source) for s in ft.seeds]
    return groups


def summary_inputs(params: Params, task: str) -> tuple[dict, dict, list[str]]:
    """The probe metrics JSON of every probed encoder by group, each group's label centroids (its
    first probed seed) and the skipped encoders (left out)."""
    from isoprobe.embed.extract import load_embeddings

    reports, centroids, skipped = {}, {}, []
    for group, encoders in encoder_groups(params, task).items():
        for enc in encoders:
            path = layout.probe_metrics_file(task, enc)
            if not path.is_file():
                raise IsoprobeError(f"probe metrics not found: {path} (run the probe stages first)")
        runs = {e: read_json(layout.probe_metrics_file(task, e)) for e in encoders}
        skipped += [e for e, r in runs.items() if is_skipped(r)]
        probed = [e for e, r in runs.items() if not is_skipped(r)]
        if not probed:
            continue
        reports[group] = [runs[e] for e in probed]
        centroids[group] = load_embeddings(layout.probe_arrays_file(task, probed[0]), "centroids")
    if "pretrained" not in reports:
        raise IsoprobeError(f"{task}: the pre-trained encoder was not probed (skipped)")
    return reports, centroids, skipped


def write_summary_plots(params: Params, task: str, folder: Path) -> tuple[int, list[str]]:
    """The summary figures of one task into `folder` (skipped encoders left out: medians over the
    seeds probed); returns how many figures were written and the skipped encoders."""
    folder.mkdir(parents=True, exist_ok=True)
    reports, centroids, skipped = summary_inputs(params, task)
    pre = reports["pretrained"][0]
    where = f"{task}, {params.model.name}, {pre['features']}"
    dp = params.probe.directprobe.enabled
    count = _plot_probes(reports, pre["labels"], dp, folder, where)
    if len(reports) == 1:  # every fine-tuned encoder skipped: nothing to compare
        return count, skipped
    _plot_change(reports, centroids, pre, dp, folder, where)
    return count + 2, skipped


def _plot_probes(reports: dict, labels: list[str], dp: bool, folder: Path, where: str) -> int:
    """accuracy.png, and with DirectProbe clusters.png and distance.png; returns the count."""
    from isoprobe.probing import plots

    plots.by_layer(
        reports,
        [("linear probe test accuracy", lambda x: x["linear"]["test"]),
         ("MLP probe test accuracy", lambda x: x["mlp"]["test"])],
        folder / "accuracy.png", f"Classifier probes by layer: {where}",
    )  # fmt: skip
    if not dp:
        return 1
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
    return 3


def _plot_change(
    reports: dict, centroids: dict, pre: dict, dp: bool, folder: Path, where: str
) -> None:
    """similarity.png (similarity and CKA to the pre-trained space by layer) and centroids_pca.png
    (label centroids before and after fine-tuning, last probed layer)."""
    from isoprobe.probing import plots

    fine = {k: v for k, v in reports.items() if k != "pretrained"}
    panels = [("linear CKA to pre-trained", lambda x: x.get("cka_to_pretrained"))]
    if dp:
        panels.insert(0, ("spatial similarity to pre-trained", lambda x: x.get("similarity_to_pretrained")))  # fmt: skip
        panels.append(("spatial similarity train/test", lambda x: x["directprobe"]["similarity_train_test"]))  # fmt: skip
    plots.by_layer(
        {**fine, "pretrained": reports["pretrained"]} if dp else fine, panels,
        folder / "similarity.png", f"Change of the space by layer: {where}",
    )  # fmt: skip
    last = pre["layer"]
    plots.centroid_pca(
        centroids["pretrained"][last], {k: c[last] for k, c in centroids.items() if k != "pretrained"},
        pre["labels"], last, folder / "centroids_pca.png",
        f"Label centroids before and after fine-tuning (first seed): {where}",
    )  # fmt: skip
