"""Stage `probe_summary`: figures comparing the pre-trained encoder with the fine-tuned ones, for every
task of probe.tasks and probe.token_tasks, from the probe metrics and arrays (medians over seeds).

Writes plots/probe/summary/<task>/: accuracy.png (linear and MLP probe test accuracy by layer),
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

    from isoprobe.core.io import atomic_dir
    from isoprobe.core.layout import probe_summary_dir
    from isoprobe.probing.run import write_summary_plots

    with atomic_dir(probe_summary_dir()) as tmp:
        for task in [*params.probe.tasks, *params.probe.token_tasks]:
            n, skipped = write_summary_plots(params, task, tmp / task)
            left_out = f", {len(skipped)} skipped encoders left out ({', '.join(skipped)})"
            print(f"probe_summary {task}: {n} figures" + (left_out if skipped else ""))


if __name__ == "__main__":
    run_stage(main)
