"""Stage `embed@<task>`: run the pre-trained encoder over every split of a prepared task; write
data/embeddings/pretrained/<task>/<split>.safetensors (per-layer [CLS] and mean vectors, and word
vectors for token tasks) and info.json (model, device, throughput, truncation counts)."""

from isoprobe.core.config import load_params
from isoprobe.core.stage import run_stage, task_arguments
from isoprobe.embed.run import run_embed  # torch and the rest: after validation


def main() -> None:
    args = task_arguments(__doc__)
    params = load_params(args.params)
    run_embed(params, args.task, progress=not args.no_progress)


if __name__ == "__main__":
    run_stage(main)
