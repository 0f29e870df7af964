"""Stage `isotropy@<task>`: anisotropy of the pre-trained [CLS] embedding, per layer, on one split.

Writes metrics/isotropy/<task>/pretrained.json (last layer at the top level, every layer in
`layers`), data/isotropy/<task>/pretrained.safetensors (per-dimension mean, std and covariance
eigenvalues per layer), plots under plots/isotropy/<task>/, and logs an MLflow run."""

from isoprobe.core.config import load_params
from isoprobe.core.stage import run_stage, task_arguments


def main() -> None:
    args = task_arguments(__doc__)
    params = load_params(args.params)
    from isoprobe.isotropy.run import run_isotropy

    run_isotropy(params, args.task)


if __name__ == "__main__":
    run_stage(main)
