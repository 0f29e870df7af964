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
    from isoprobe.probing.run import run_probe

    run_probe(params, args.task, progress=not args.no_progress)


if __name__ == "__main__":
    run_stage(main)
