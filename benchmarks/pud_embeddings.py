"""Word vectors of UD English PUD (../shared/data/ud/en_pud-ud-test.conllu) with the embedded model, cached.

The pipeline's own split of task `pos` (params.yaml: dev 0.1, test 0.1, seed 0; read in place) and
its word vectors (mean of sub-words, every layer, `embed.word_max_length`), as the probe stages see
them: `load(cache)` returns X_train [L+1, W_train, 384] and X_test [L+1, W_test, 384] (float32, the
words whose sub-words fit max_length) with their tag codes y_train and y_test. The cache lives
under benchmarks/.cache/.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def load(cache: Path = HERE / ".cache" / "pud_words.safetensors") -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file, save_file

    if cache.is_file():
        return load_file(str(cache))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from isoprobe.core.config import load_params
    from isoprobe.core.models import load_encoder, resolve_model
    from isoprobe.data.prepare import prepare_task
    from isoprobe.data.sources import read_source
    from isoprobe.embed.extract import encode_rows
    from isoprobe.probing.outputs import probe_split

    cwd = os.getcwd()
    os.chdir(ROOT)  # params.yaml's relative source path (../shared/...) is read in place
    try:
        params = load_params(ROOT / "params.yaml")
        task = params.task("pos")
        source = Path(task.argument)
        if not source.is_file():
            raise SystemExit(f"UD English PUD not found at {source.resolve()}")
        prepared = prepare_task(read_source(task, "tasks.pos"), task, "pos")
    finally:
        os.chdir(cwd)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    encoder, tokenizer, _ = load_encoder(resolve_model("embedded:all-MiniLM-L6-v2"))
    out = {}
    for split in ("train", "test"):
        rows = prepared.splits[split]
        arrays = encode_rows(
            encoder, tokenizer, rows, kind="token", batch_size=params.embed.batch_size,
            max_length=params.embed.word_max_length, desc=split,
        )  # fmt: skip
        data = probe_split(arrays, rows, "token", "cls")
        out[f"X_{split}"] = np.ascontiguousarray(data.X)
        out[f"y_{split}"] = np.ascontiguousarray(data.y)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(cache))
    return load(cache)


if __name__ == "__main__":
    data = load()
    print({k: v.shape for k, v in data.items()})
