"""The isotropy stage's work on the pre-trained encoder: fit [CLS] of one split at every layer, write
the metrics JSON, the per-dimension arrays and the plots, and log one MLflow run
`isotropy-pretrained` in the task's experiment."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from isoprobe.core import layout

if TYPE_CHECKING:
    import numpy as np

    from isoprobe.core.config import Params
    from isoprobe.isotropy.outputs import LayerIsotropy

ENCODER = "pretrained"
SHOWN = ("isoscore", "mean_cosine", "centring_ratio", "std_cv")  # printed when the stage ends


def run_isotropy(params: Params, task: str) -> dict:
    """Stage `isotropy@<task>`: returns the metrics JSON it wrote (with the MLflow run id). Fails
    (IsoprobeError) on an unknown task or an unusable MLflow store before writing anything."""
    params.task(task)
    from isoprobe.core.tracking import check_store

    check_store(params.tracking, layout.experiment_name(task))  # before writing any output
    cls, emb_meta, result = fit_layers(params, task)
    report, plot_dir = _write_files(params, task, result)
    metrics_path = layout.isotropy_metrics_file(task, ENCODER)
    logged = mlflow_params(params, task, cls, emb_meta)
    _track(params, task, logged, result, report, plot_dir, metrics_path)
    shown = {k: "undefined" if report[k] is None else f"{report[k]:.3f}" for k in SHOWN}
    print(
        f"isotropy {task}: layer {report['layer']}: isoscore {shown['isoscore']}, "
        f"mean cosine {shown['mean_cosine']}, centring {shown['centring_ratio']}, "
        f"std CV {shown['std_cv']} -> {metrics_path}"
    )
    return report


def fit_layers(params: Params, task: str) -> tuple[np.ndarray, dict, LayerIsotropy]:
    """[CLS] [L+1, N, H] of the pre-trained embeddings of `isotropy.split`, the embedding file's
    metadata and the isotropy of every layer."""
    from isoprobe.embed.extract import embedding_metadata, load_embeddings
    from isoprobe.isotropy.outputs import isotropy_by_layer

    path = layout.embeddings_dir(task, ENCODER) / f"{params.isotropy.split}.safetensors"
    cls = load_embeddings(path, "cls")
    return cls, embedding_metadata(path), isotropy_by_layer(cls, params.isotropy)


def _write_files(params: Params, task: str, result: LayerIsotropy) -> tuple[dict, Path]:
    """The plots and the arrays file; returns the metrics JSON (not written yet) and the plots
    folder."""
    from isoprobe.isotropy import outputs as iso

    cfg, model = params.isotropy, params.model.name
    context = {"task": task, "encoder": ENCODER, "model": model, "split": cfg.split}
    plot_dir = layout.isotropy_plots_dir(task, ENCODER)
    iso.write_plots(result, task, ENCODER, cfg.heatmap_dims, f"{task}, {model}, {cfg.split}")
    iso.write_arrays(result, layout.isotropy_arrays_file(task, ENCODER), context)
    return iso.report(result, **context), plot_dir


def mlflow_params(params: Params, task: str, cls: np.ndarray, emb_meta: dict) -> dict:
    """The MLflow params of the run: model, task, split and the embeddings' shape and settings."""
    return {
        "model.name": params.model.name,
        "task": task,
        "task.source": params.tasks[task].source,
        "isotropy.split": params.isotropy.split,
        "n_rows": cls.shape[1],
        "layers": cls.shape[0],
        "dim": cls.shape[2],
        "embed.max_length": emb_meta.get("max_length"),
        "embed.dtype": emb_meta.get("dtype"),
    }


def _track(
    params: Params,
    task: str,
    logged: dict,
    result: LayerIsotropy,
    report: dict,
    plot_dir: Path,
    metrics_path: Path,
) -> None:
    """Log the run (params, every layer's metrics with step = layer, the plots), then write the
    metrics JSON with its run id and log it too."""
    from isoprobe.core.io import write_json
    from isoprobe.core.tracking import tracked_run

    tags = {"task": task, "stage": "isotropy", "encoder": ENCODER, "model": params.model.name}
    with tracked_run(
        params.tracking, layout.experiment_name(task), f"isotropy-{ENCODER}", tags=tags
    ) as run:
        run.log_params(logged)
        for r in result.layers:
            run.log_metrics({k: v for k, v in r.items() if k != "layer"}, step=r["layer"])
        run.log_artifacts(plot_dir, "plots")
        report["mlflow_run_id"] = run.run_id
        write_json(metrics_path, report)
        run.log_artifact(metrics_path, "metrics")
