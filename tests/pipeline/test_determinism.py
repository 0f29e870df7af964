"""Same inputs, same bytes: output files that DVC hashes must not change between identical runs."""

from __future__ import annotations

import numpy as np
import torch
from safetensors import safe_open

from isoprobe.core.io import write_safetensors
from isoprobe.core.models import load_encoder, resolve_model
from isoprobe.embed.extract import embed_splits, load_embeddings

ROWS = [
    {"id": str(i), "text_a": t, "text_b": None, "label": 0}
    for i, t in enumerate(
        ["a good movie", "what a terrible plot", "i love this film", "who was it"]
    )
]


def test_safetensors_metadata_order_is_canonical(tmp_path):
    """safetensors keeps metadata in a Rust HashMap (random order per map): the same arrays and
    metadata gave different bytes on every write, so DVC saw a new embedding file on every rerun."""
    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "n": np.arange(3)}
    metadata = {f"key{i}": f'value {i} é "quoted" \\ /' for i in range(12)}
    blobs = set()
    for i in range(6):
        write_safetensors(tmp_path / f"{i}.safetensors", arrays, metadata)
        blobs.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    path = tmp_path / "0.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == metadata
        assert np.array_equal(f.get_tensor("x"), arrays["x"])
        assert np.array_equal(f.get_tensor("n"), arrays["n"])


def test_embedding_files_are_bit_identical_between_runs(tiny_bert, tmp_path):
    model, tok, _ = load_encoder(resolve_model(str(tiny_bert)))
    meta = {"model": str(tiny_bert), "task": "t", "encoder": "pretrained"}
    for run in ("a", "b"):
        embed_splits(
            model, tok, {"train": ROWS}, tmp_path / run, kind="sentence", batch_size=3,
            max_length=16, dtype="float32", metadata=meta, device=torch.device("cpu"), progress=False,
        )  # fmt: skip
    a, b = (tmp_path / run / "train.safetensors" for run in ("a", "b"))
    assert np.array_equal(load_embeddings(a), load_embeddings(b))
    assert a.read_bytes() == b.read_bytes()
