"""Stage `finetune@<task>-<method>-<seed>`: fine-tune the encoder with one [CLS] treatment and seed.

Writes models/<task>/<method>/<seed>/ (encoder and head in safetensors, config, tokenizer, head.json),
metrics/finetune/<task>/<method>/<seed>.json (dev/test scores, best epoch, gradient-norm summary),
plots/finetune/<task>/<method>/<seed>.csv (per-step loss and gradient norms), and one MLflow run
`<method>-s<seed>` in experiment isoprobe/<task>.

checkpoints/<task>/<method>/<seed>/ holds the checkpoints of an unfinished run (a rerun after a kill
resumes there, in the same MLflow run) and, once the stage is done, only a small state.json marker.

A run whose loss or gradient norm turns non-finite is recorded as `status: diverged` (metrics JSON,
CSV up to that step, models/... holding only status.json, MLflow run FAILED); the stage then exits 0
with a warning, or with `finetune.fail_fast: true` fails (exit 2) so `dvc repro` stops."""

from isoprobe.core.config import load_params
from isoprobe.core.stage import instance_arguments, run_stage
from isoprobe.finetune.run import run_finetune  # torch and the rest: after validation


def main() -> None:
    args = instance_arguments(__doc__)
    params = load_params(args.params)
    run_finetune(params, args.task, args.method, args.seed, progress=not args.no_progress)


if __name__ == "__main__":
    run_stage(main)
