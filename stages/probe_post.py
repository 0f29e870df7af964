"""Stages `probe_post@<task>-<method>-<seed>` and `probe_cross@<task>-<ft>-<method>-<seed>`: probe a
fine-tuned encoder layer by layer, like `probe` does the pre-trained one, and compare the two on the
same rows: linear CKA, spatial similarity of the label-pair distances, movement of label centroids.

probe_post: a sentence task of probe.tasks through its own fine-tuned encoder (the vectors embed_post
wrote). probe_cross (`--finetune-task FT`): a token task of probe.token_tasks through an encoder
fine-tuned on FT (its word vectors are computed here, in memory).

Writes metrics/probe/<task>/<encoder>.json, data/probe/<task>/<encoder>.safetensors and
plots/probe/<task>/<encoder>_by_layer.csv, with <encoder> `<method>/<seed>` (probe_post) or
`<ft>/<method>/<seed>` (probe_cross), and one MLflow run `probe-<encoder>` in isoprobe/<task>.

An encoder whose fine-tuning did not finish normally (the fine-tuning metrics JSON, models/.../status.json
or the embed_post info.json say so) is not probed: the same files are written marked `status: skipped`
(no arrays, CSV header only), with one warning on stderr and no MLflow run; the stage exits 0."""

from types import SimpleNamespace

from isoprobe.core.config import load_params
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.stage import check_instance, instance_arguments, offline_if_local, run_stage


def main() -> None:
    args = instance_arguments(__doc__, finetune_task=True)
    params = load_params(args.params)
    ft_task = args.finetune_task or args.task
    check_instance(
        SimpleNamespace(task=ft_task, method=args.method, seed=args.seed), params.finetune
    )
    cross = ft_task != args.task
    if cross and args.task not in params.probe.token_tasks:
        raise IsoprobeError(
            f"--finetune-task {ft_task} probes another task's encoder: '{args.task}' must be one of "
            f"probe.token_tasks {params.probe.token_tasks}"
        )
    if not cross and args.task not in params.probe.tasks:
        raise IsoprobeError(f"'{args.task}' is not one of probe.tasks {params.probe.tasks}")
    offline_if_local("embedded:")  # fine-tuned models are local folders
    from isoprobe.core.tracking import check_store

    check_store(params.tracking, f"isoprobe/{args.task}")  # fail fast, before probing

    from isoprobe.core.io import read_json
    from isoprobe.core.layout import (
        embeddings_dir,
        finetune_metrics_file,
        finetuned_encoder,
        model_dir,
        probe_arrays_file,
        probed_encoder,
    )
    from isoprobe.embed.extract import load_embeddings
    from isoprobe.probing.layers import Reference
    from isoprobe.probing.outputs import load_probe_data
    from isoprobe.probing.run import (
        check_probed_task,
        embed_words,
        probe_and_write,
        skip_reason,
        warn_skipped,
        write_skipped,
    )

    encoder = probed_encoder(args.task, args.method, args.seed, ft_task)
    ft_file = finetune_metrics_file(ft_task, args.method, args.seed)
    if not ft_file.is_file():
        raise IsoprobeError(
            f"fine-tuning metrics not found: {ft_file} (run the finetune stage first)"
        )
    ft_metrics = read_json(ft_file)
    context = {
        "model": str(model_dir(ft_task, args.method, args.seed)), "base_model": params.model.name,
        "finetune_task": ft_task, "method": args.method, "seed": args.seed,
        "finetune_status": ft_metrics.get("status"),
    }  # fmt: skip
    # the stage's own deps: probe_cross reads the model folder, probe_post embed_post's vectors
    marker = (
        model_dir(ft_task, args.method, args.seed) / "status.json"
        if cross
        else embeddings_dir(args.task, finetuned_encoder(args.method, args.seed)) / "info.json"
    )
    reason = skip_reason(ft_metrics) or skip_reason(read_json(marker) if marker.is_file() else None)
    if reason:
        stage = "probe_cross" if cross else "probe_post"
        write_skipped(stage, args.task, encoder, reason, context)
        warn_skipped(stage, f"{args.task}/{encoder}", reason)
        return

    meta, splits = check_probed_task(params, args.task)
    features = params.probe.features
    pre, _ = load_probe_data(
        embeddings_dir(args.task, "pretrained"), {"train": splits["train"]}, meta["kind"], features
    )
    if cross:
        data, cut = embed_words(
            params,
            model_dir(ft_task, args.method, args.seed),
            splits,
            progress=not args.no_progress,
        )
    else:
        data, cut = load_probe_data(
            embeddings_dir(args.task, finetuned_encoder(args.method, args.seed)), splits,
            meta["kind"], features,
        )  # fmt: skip
    if not (pre["train"].y == data["train"].y).all():
        raise IsoprobeError(
            f"{args.task}: pre-trained and fine-tuned vectors are not of the same rows; rerun embed"
        )
    ref_file = probe_arrays_file(args.task, "pretrained")
    reference = Reference(
        train=pre["train"].X,
        centroids=load_embeddings(ref_file, "centroids"),
        distances_train=load_embeddings(ref_file, "distances_train"),
    )
    tags = {
        "method": args.method, "seed": args.seed, "finetune_task": ft_task,
        "finetune_run_id": ft_metrics.get("mlflow_run_id"),
    }  # fmt: skip
    report = probe_and_write(
        params, args.task, meta, encoder, data, cut, context, reference, tags,
        progress=not args.no_progress,
    )  # fmt: skip
    print(
        f"probe {args.task}/{encoder}: layer {report['layer']}: linear {report['linear_test']:.3f}, "
        f"mlp {report['mlp_test']:.3f}, clusters {report.get('clusters')}, "
        f"CKA to pre-trained {report.get('cka_to_pretrained')}"
    )


if __name__ == "__main__":
    run_stage(main)
