"""[CLS] embeddings (last layer, max length 64) of TREC train and test with the embedded model, cached.

Shared by the DirectProbe benchmark: `load(cache)` returns X_train [5452, 384], coarse and fine labels,
X_test [500, 384] and theirs. The cache (safetensors + JSON labels) lives under benchmarks/.cache/.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TREC = HERE.parent.parent / "shared" / "data" / "trec"


def _rows(path: Path) -> list[dict]:
    from isoprobe.data.raw import Tally, read_lines
    from isoprobe.data.trec import parse_trec_lines

    rows = parse_trec_lines(path, read_lines(path, "utf-8", "latin-1", Tally()), "fine", Tally())
    for r in rows:
        r["coarse"], r["fine"] = r["label"].split(":")[0], r["label"]
    return rows


def load(cache: Path = HERE / ".cache" / "trec_cls.safetensors") -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file, save_file

    labels_file = cache.with_suffix(".json")
    if cache.is_file() and labels_file.is_file():
        out = load_file(str(cache))
        out.update({k: np.array(v) for k, v in json.loads(labels_file.read_text()).items()})
        return out
    if not (TREC / "train_5500.label").is_file():
        raise SystemExit(f"TREC not found at {TREC} (../shared/data/trec beside the repository)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from isoprobe.core.models import load_encoder, resolve_model
    from isoprobe.embed.extract import encode_rows

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    encoder, tokenizer, _ = load_encoder(resolve_model("embedded:all-MiniLM-L6-v2"))
    out, labels = {}, {}
    for split, name in (("train", "train_5500.label"), ("test", "TREC_10.label")):
        rows = _rows(TREC / name)
        enc = encode_rows(encoder, tokenizer, rows, batch_size=128, max_length=64, desc=split)
        out[f"X_{split}"] = np.ascontiguousarray(enc["cls"][-1])
        labels[f"coarse_{split}"] = [r["coarse"] for r in rows]
        labels[f"fine_{split}"] = [r["fine"] for r in rows]
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(cache))
    labels_file.write_text(json.dumps(labels))
    return load(cache)


if __name__ == "__main__":
    data = load()
    print({k: v.shape for k, v in data.items()})
