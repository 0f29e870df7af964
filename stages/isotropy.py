"""Stage `isotropy@<task>`: anisotropy of the pre-trained [CLS] embedding, per layer, on one split.

Writes metrics/isotropy/<task>/pretrained.json (last layer at the top level, every layer in
`layers`), data/isotropy/<task>/pretrained.safetensors (per-dimension mean, std and covariance
eigenvalues per layer), plots under plots/isotropy/<task>/, and logs an MLflow run."""

import csv
import math

import numpy as np

from isoprobe.config import load_params
from isoprobe.stage import run_stage, task_arguments


def _finite(m: dict) -> dict:
    return {k: (v if isinstance(v, float) and math.isfinite(v) else None) for k, v in m.items()}


def main() -> None:
    args = task_arguments(__doc__)
    params = load_params(args.params)
    params.task(args.task)
    cfg = params.isotropy

    from isoprobe import isotropy_plots as plots
    from isoprobe.embed import embedding_metadata, load_embeddings
    from isoprobe.io import atomic_dir, atomic_file, write_json, write_safetensors
    from isoprobe.isotropy import Isotropy
    from isoprobe.paths import (
        embeddings_dir,
        isotropy_arrays_file,
        isotropy_metrics_file,
        isotropy_plots_dir,
    )
    from isoprobe.tracking import tracked_run

    path = embeddings_dir(args.task) / f"{cfg.split}.safetensors"
    cls = load_embeddings(path, "cls")  # [L+1, N, H]
    emb_meta = embedding_metadata(path)
    fits = [
        Isotropy(cfg.top_k, cfg.corr_threshold).fit(cls[layer]) for layer in range(cls.shape[0])
    ]
    layers = [{"layer": i, **_finite(f.metrics_)} for i, f in enumerate(fits)]
    last = fits[-1]
    report = {
        "task": args.task,
        "encoder": "pretrained",
        "model": params.model.name,
        "split": cfg.split,
        "layer": len(fits) - 1,
        **_finite(last.metrics_),
        "layers": layers,
    }
    where = f"{args.task}, {params.model.name}, [CLS] layer {len(fits) - 1}, {cfg.split} (n={cls.shape[1]})"
    plot_dir = isotropy_plots_dir(args.task)
    with atomic_dir(plot_dir) as tmp:
        plots.std_histogram(last.std_, tmp / "std_hist.png", f"Per-dimension std: {where}")
        plots.std_sorted(last.std_, tmp / "std_sorted.png", f"Sorted per-dimension std: {where}")
        plots.correlation_heatmap(
            last.corr_,
            last.std_,
            min(cfg.heatmap_dims, cls.shape[2]),
            tmp / "corr_heatmap.png",
            f"|correlation| of top-variance dimensions: {where}",
        )
        plots.abs_mean(
            last.mean_, last.std_, tmp / "abs_mean.png", f"|mean| per dimension: {where}"
        )
        plots.metrics_by_layer(
            layers,
            tmp / "by_layer.png",
            f"[CLS] isotropy by layer: {args.task}, {params.model.name}",
        )
    with atomic_file(plot_dir.with_name(plot_dir.name + "_by_layer.csv")) as f:
        keys = [k for k in layers[0] if k != "layer"]
        w = csv.writer(f)
        w.writerow(["layer", *keys])
        for r in layers:
            w.writerow([r["layer"], *("" if r[k] is None else f"{r[k]:.6g}" for k in keys)])
    with atomic_file(plot_dir.with_name(plot_dir.name + "_std_sorted.csv")) as f:
        w = csv.writer(f)
        w.writerow(["rank", "std"])
        for i, s in enumerate(np.sort(last.std_)[::-1], start=1):
            w.writerow([i, f"{s:.6g}"])
    write_safetensors(
        isotropy_arrays_file(args.task),
        {
            "mean": np.stack([f.mean_ for f in fits]).astype(np.float32),
            "std": np.stack([f.std_ for f in fits]).astype(np.float32),
            "eigenvalues": np.stack([f.eigenvalues_ for f in fits]).astype(np.float32),
        },
        {
            "task": args.task,
            "encoder": "pretrained",
            "split": cfg.split,
            "model": params.model.name,
        },
    )
    metrics_path = isotropy_metrics_file(args.task)
    with tracked_run(
        params.tracking,
        f"isoprobe/{args.task}",
        "isotropy-pretrained",
        tags={
            "task": args.task,
            "stage": "isotropy",
            "encoder": "pretrained",
            "model": params.model.name,
        },
    ) as run:
        run.log_params(
            {
                "model.name": params.model.name,
                "task": args.task,
                "task.source": params.tasks[args.task].source,
                "isotropy.split": cfg.split,
                "n_rows": cls.shape[1],
                "layers": cls.shape[0],
                "dim": cls.shape[2],
                "embed.max_length": emb_meta.get("max_length"),
                "embed.dtype": emb_meta.get("dtype"),
            }
        )
        for r in layers:
            run.log_metrics({k: v for k, v in r.items() if k != "layer"}, step=r["layer"])
        run.log_artifacts(plot_dir, "plots")
        report["mlflow_run_id"] = run.run_id
        write_json(metrics_path, report)
        run.log_artifact(metrics_path, "metrics")
    print(
        f"isotropy {args.task}: layer {report['layer']}: isoscore {report['isoscore']:.3f}, "
        f"mean cosine {report['mean_cosine']:.3f}, centring {report['centring_ratio']:.3f}, "
        f"std CV {report['std_cv']:.3f} -> {metrics_path}"
    )


if __name__ == "__main__":
    run_stage(main)
