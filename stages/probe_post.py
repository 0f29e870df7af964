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

from isoprobe.core.config import load_params
from isoprobe.core.stage import instance_arguments, run_stage


def main() -> None:
    args = instance_arguments(__doc__, finetune_task=True)
    params = load_params(args.params)
    from isoprobe.probing.run import run_probe_post

    run_probe_post(
        params, args.task, args.method, args.seed, args.finetune_task, progress=not args.no_progress
    )


if __name__ == "__main__":
    run_stage(main)
