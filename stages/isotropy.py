"""Stage `isotropy@<task>`: anisotropy of the pre-trained [CLS] embedding, per layer, on one split.

Writes metrics/isotropy/<task>/pretrained.json (last layer at the top level, every layer in
`layers`), data/isotropy/<task>/pretrained.safetensors (per-dimension mean, std and covariance
eigenvalues per layer), plots under plots/isotropy/<task>/, and logs an MLflow run."""

from isoprobe.core.config import load_params
from isoprobe.core.stage import run_stage, task_arguments

ENCODER = "pretrained"


def main() -> None:
    args = task_arguments(__doc__)
    params = load_params(args.params)
    params.task(args.task)
    cfg = params.isotropy

    from isoprobe.core.io import write_json
    from isoprobe.core.layout import (
        embeddings_dir,
        isotropy_arrays_file,
        isotropy_metrics_file,
        isotropy_plots_dir,
    )
    from isoprobe.core.tracking import check_store, tracked_run
    from isoprobe.embed.extract import embedding_metadata, load_embeddings
    from isoprobe.isotropy import outputs as iso

    check_store(params.tracking, f"isoprobe/{args.task}")  # before writing any output
    path = embeddings_dir(args.task, ENCODER) / f"{cfg.split}.safetensors"
    cls = load_embeddings(path, "cls")  # [L+1, N, H]
    emb_meta = embedding_metadata(path)
    result = iso.isotropy_by_layer(cls, cfg)
    context = {
        "task": args.task,
        "encoder": ENCODER,
        "model": params.model.name,
        "split": cfg.split,
    }
    report = iso.report(result, **context)
    plot_dir = isotropy_plots_dir(args.task, ENCODER)
    iso.write_plots(
        result, plot_dir, cfg.heatmap_dims, f"{args.task}, {params.model.name}, {cfg.split}"
    )
    iso.write_arrays(result, isotropy_arrays_file(args.task, ENCODER), context)
    metrics_path = isotropy_metrics_file(args.task, ENCODER)
    with tracked_run(
        params.tracking,
        f"isoprobe/{args.task}",
        f"isotropy-{ENCODER}",
        tags={
            "task": args.task,
            "stage": "isotropy",
            "encoder": ENCODER,
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
        for r in result.layers:
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
