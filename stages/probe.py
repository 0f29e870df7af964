"""Stages `probe@<task>` and `probe_words@<task>`: probe the pre-trained encoder's vectors of a task,
layer by layer (linear and MLP classifier probes, DirectProbe clusters and distances, label centroids).

Writes metrics/probe/<task>/pretrained.json, data/probe/<task>/pretrained.safetensors (centroids and
label-pair distances per layer, which the fine-tuned encoders are compared with),
plots/probe/<task>/pretrained_by_layer.csv, and one MLflow run `probe-pretrained`."""

from isoprobe.core.config import load_params
from isoprobe.core.stage import run_stage, task_arguments


def main() -> None:
    args = task_arguments(__doc__)
    params = load_params(args.params)
    params.task(args.task)

    from isoprobe.core.layout import embeddings_dir, probed_encoder
    from isoprobe.core.tracking import check_store
    from isoprobe.probing.outputs import load_probe_data
    from isoprobe.probing.run import check_probed_task, probe_and_write

    check_store(params.tracking, f"isoprobe/{args.task}")  # fail fast, before probing
    meta, splits = check_probed_task(params, args.task)
    data, cut = load_probe_data(
        embeddings_dir(args.task, "pretrained"), splits, meta["kind"], params.probe.features
    )
    encoder = probed_encoder(args.task)
    report = probe_and_write(
        params, args.task, meta, encoder, data, cut, context={"model": params.model.name},
        progress=not args.no_progress,
    )  # fmt: skip
    print(
        f"probe {args.task}/{encoder}: layer {report['layer']}: linear {report['linear_test']:.3f}, "
        f"mlp {report['mlp_test']:.3f}, clusters {report.get('clusters')} for "
        f"{len(meta['label_names'])} labels"
    )


if __name__ == "__main__":
    run_stage(main)
