"""The embed stage's work in-process (`embed.run.run_embed`), no DVC and no subprocess: every split's
file holds what `encode_rows` gives, info.json its keys in order; an unknown task writes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from test_embed import TEXTS, rows_of

from conftest import REPO
from isoprobe.core import layout
from isoprobe.core.config import load_params
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.io import read_json, write_json, write_jsonl
from isoprobe.core.models import load_encoder, resolve_model
from isoprobe.embed.extract import encode_rows, load_embeddings
from isoprobe.embed.run import run_embed

INFO_KEYS = [
    "model", "task", "encoder", "max_length", "batch_size", "dtype", "device", "threads",
    "autocast", "versions", "splits",
]  # fmt: skip


@pytest.fixture
def params(tiny_bert, tmp_path, monkeypatch):
    """Params with tiny_bert as the model and a prepared task `tweets`, in the working folder."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"] = {"name": str(tiny_bert), "revision": None}
    raw["embed"].update(device="cpu", num_threads=1, batch_size=3)
    raw["tracking"] = {"enabled": False}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    prepared = tmp_path / layout.prepared_dir("tweets")
    for split in layout.SPLITS:
        write_jsonl(prepared / f"{split}.jsonl", rows_of(TEXTS))
    write_json(prepared / "meta.json", {"task": "tweets", "kind": "sentence"})
    monkeypatch.chdir(tmp_path)
    return load_params(tmp_path / "params.yaml")


def test_run_embed_writes_every_split_and_info(params, tiny_bert, capsys):
    stats = run_embed(params, "tweets", progress=False)
    folder = layout.embeddings_dir("tweets")
    assert sorted(p.name for p in folder.iterdir()) == [
        "dev.safetensors", "info.json", "test.safetensors", "train.safetensors",
    ]  # fmt: skip
    info = read_json(folder / "info.json")
    assert (
        list(info) == INFO_KEYS and info["splits"] == stats and list(stats) == list(layout.SPLITS)
    )
    assert info["encoder"] == "pretrained" and info["model"]["name"] == str(tiny_bert)
    assert info["device"] == "cpu" and info["threads"] == 1 and info["max_length"] == 128
    model, tok, _ = load_encoder(resolve_model(str(tiny_bert)))
    expected = encode_rows(model, tok, rows_of(TEXTS), batch_size=3, progress=False)
    np.testing.assert_allclose(load_embeddings(folder / "dev.safetensors", "cls"), expected["cls"])
    assert capsys.readouterr().out.count("embed tweets/") == 3


def test_an_unknown_task_fails_before_writing(params):
    with pytest.raises(IsoprobeError, match="task 'nope' is not defined"):
        run_embed(params, "nope")
    assert not Path("data/embeddings").exists()
