"""Stage `embed_post@<task>-<method>-<seed>`: embed every split with a fine-tuned encoder (same files
and layout as the pre-trained ones, plus `head_input`: the normalized vector its classifier sees) and
measure isotropy after fine-tuning.

Writes data/embeddings/finetuned/<method>/<seed>/<task>/, metrics/isotropy/<task>/<method>/<seed>.json
(per-layer [CLS] isotropy as for the pre-trained encoder, and `head_input` isotropy), and
plots/isotropy/<task>/finetuned_<method>_<seed>_by_layer.csv; adds the isotropy metrics to the
fine-tuning MLflow run.

A model folder holding only `status.json` (fine-tuning diverged) is not embedded: the embeddings
folder gets only an info.json and the metrics JSON `status: skipped` with the reason, the CSV its
header; one warning on stderr, nothing logged to MLflow, exit code 0."""

from isoprobe.core.config import load_params
from isoprobe.core.stage import instance_arguments, run_stage
from isoprobe.finetune.embed_post import run_embed_post  # torch and the rest: after validation


def main() -> None:
    args = instance_arguments(__doc__)
    params = load_params(args.params)
    run_embed_post(params, args.task, args.method, args.seed, progress=not args.no_progress)


if __name__ == "__main__":
    run_stage(main)
