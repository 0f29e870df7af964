"""Stage `probe_summary`: figures comparing the pre-trained encoder with the fine-tuned ones, for every
task of probe.tasks and probe.token_tasks, from the probe metrics and arrays (medians over seeds).

Writes plots/probe_summary/<task>/: accuracy.png (linear and MLP probe test accuracy by layer),
clusters.png (DirectProbe clusters by layer against the number of labels), distance.png (minimum
label-pair hull distance by layer), similarity.png (spatial similarity to the pre-trained space and
between train and test; CKA to the pre-trained vectors), centroids_pca.png (label centroids before
and after fine-tuning, last probed layer). Encoders a probe stage skipped (fine-tuning diverged) are
left out of the medians; they are counted here and listed by the report."""

import argparse

from isoprobe.core.config import load_params
from isoprobe.core.stage import run_stage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args()
    params = load_params(args.params)
    from isoprobe.probing.run import run_probe_summary

    run_probe_summary(params)


if __name__ == "__main__":
    run_stage(main)
