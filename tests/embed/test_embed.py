"""Extraction on a tiny random BERT: shapes, row order, pooling, truncation, word vectors, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isoprobe.core.errors import IsoprobeError
from isoprobe.core.models import load_encoder, resolve_model
from isoprobe.embed.extract import embedding_metadata, encode_rows, load_embeddings, save_embeddings

TEXTS = [
    "the movie was great",
    "a terrible boring film",
    "i love this story and the actor",
    "what is the name of the city",
    "not good",
    "this film is really really really very fun and the plot is great",
    "how",
    "who was the actor in that movie",
]


@pytest.fixture(scope="module")
def encoder(tiny_bert):
    model, tok, info = load_encoder(resolve_model(str(tiny_bert)))
    return model, tok, info


def rows_of(texts, pairs=None):
    return [
        {"id": str(i), "text_a": t, "text_b": None if pairs is None else pairs[i], "label": 0}
        for i, t in enumerate(texts)
    ]


def reference(model, tok, text_a, text_b=None, max_length=128):
    """One row alone, no padding: every hidden state [L+1, T, H]."""
    enc = tok(text_a, text_b, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    return torch.stack(hs)[:, 0].numpy(), enc


def test_shapes_and_row_order_match_one_row_at_a_time(encoder):
    model, tok, info = encoder
    out = encode_rows(model, tok, rows_of(TEXTS), batch_size=3, progress=False)
    L1, H = info["num_layers"] + 1, info["hidden_size"]
    assert out["cls"].shape == (L1, len(TEXTS), H) and out["mean"].shape == (L1, len(TEXTS), H)
    assert out["cls"].dtype == np.float32
    for i, text in enumerate(TEXTS):
        hs, enc = reference(model, tok, text)
        np.testing.assert_allclose(out["cls"][:, i], hs[:, 0], atol=1e-5)
        np.testing.assert_allclose(
            out["mean"][:, i], hs.mean(1), atol=1e-5
        )  # no padding: plain mean
        assert out["n_tokens"][i] == enc["input_ids"].shape[1]
    assert not out["truncated"].any()


def test_independent_of_batch_size_and_input_order(encoder):
    model, tok, _ = encoder
    a = encode_rows(model, tok, rows_of(TEXTS), batch_size=8, progress=False)
    b = encode_rows(model, tok, rows_of(TEXTS), batch_size=1, progress=False)
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    c = encode_rows(model, tok, rows_of([TEXTS[i] for i in perm]), batch_size=3, progress=False)
    np.testing.assert_allclose(a["cls"], b["cls"], atol=1e-5)
    np.testing.assert_allclose(a["mean"], b["mean"], atol=1e-5)
    np.testing.assert_allclose(c["cls"], a["cls"][:, perm], atol=1e-5)


def test_deterministic(encoder):
    model, tok, _ = encoder
    a = encode_rows(model, tok, rows_of(TEXTS), batch_size=4, progress=False)
    b = encode_rows(model, tok, rows_of(TEXTS), batch_size=4, progress=False)
    assert np.array_equal(a["cls"], b["cls"]) and np.array_equal(a["mean"], b["mean"])


def test_sentence_pairs_use_both_texts(encoder):
    model, tok, _ = encoder
    seconds = ["the actor", "the plot", "fun", "a city", "bad", "great", "why", "who"]
    out = encode_rows(model, tok, rows_of(TEXTS, seconds), batch_size=3, progress=False)
    single = encode_rows(model, tok, rows_of(TEXTS), batch_size=3, progress=False)
    for i in range(len(TEXTS)):
        hs, enc = reference(model, tok, TEXTS[i], seconds[i])
        assert "token_type_ids" in enc and enc["token_type_ids"].max() == 1
        np.testing.assert_allclose(out["cls"][:, i], hs[:, 0], atol=1e-5)
    assert not np.allclose(out["cls"][-1], single["cls"][-1])


def test_truncation_is_flagged(encoder):
    model, tok, _ = encoder
    out = encode_rows(model, tok, rows_of(TEXTS), max_length=6, progress=False)
    full = [len(tok(t)["input_ids"]) for t in TEXTS]
    assert list(out["truncated"]) == [int(n > 6) for n in full]
    assert list(out["n_tokens"]) == [min(n, 6) for n in full]
    hs, _ = reference(model, tok, TEXTS[5], max_length=6)
    np.testing.assert_allclose(out["mean"][:, 5], hs.mean(1), atol=1e-5)


def test_mean_pooling_ignores_padding(encoder):
    model, tok, _ = encoder
    # One short and one long row in the same batch: the short one is padded.
    out = encode_rows(model, tok, rows_of([TEXTS[6], TEXTS[5]]), batch_size=2, progress=False)
    hs, _ = reference(model, tok, TEXTS[6])
    np.testing.assert_allclose(out["mean"][:, 0], hs.mean(1), atol=1e-5)


def test_word_vectors_are_means_of_subwords(encoder):
    model, tok, _ = encoder
    rows = [
        {"id": "0", "tokens": ["the", "boringly", "movie"], "tags": [0, 1, 2]},
        {"id": "1", "tokens": ["who", "loves", "cityscapes", "?"], "tags": [0, 1, 2, 3]},
        {"id": "2", "tokens": ["fun"], "tags": [0]},
    ]
    out = encode_rows(model, tok, rows, kind="token", batch_size=2, progress=False)
    assert list(out["word_offsets"]) == [0, 3, 7, 8]
    assert out["words"].shape[1] == 8 and out["word_valid"].all()
    for r, row in enumerate(rows):
        enc = tok(row["tokens"], is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            hs = torch.stack(model(**enc, output_hidden_states=True).hidden_states)[:, 0].numpy()
        wids = enc.word_ids()
        for w in range(len(row["tokens"])):
            pos = [t for t, x in enumerate(wids) if x == w]
            assert pos, "every word has at least one sub-word"
            np.testing.assert_allclose(
                out["words"][:, out["word_offsets"][r] + w], hs[:, pos].mean(1), atol=1e-5
            )


def test_words_cut_by_max_length_are_nan_and_counted(encoder):
    model, tok, _ = encoder
    rows = [
        {
            "id": "0",
            "tokens": ["the", "movie", "was", "great", "and", "fun", "and", "good"],
            "tags": [0] * 8,
        }
    ]
    out = encode_rows(model, tok, rows, kind="token", max_length=5, progress=False)
    valid = out["word_valid"].astype(bool)
    assert valid[:3].all() and not valid[3:].any()  # [CLS] + 3 words + [SEP] = 5 tokens
    assert np.isnan(out["words"][:, ~valid]).all() and np.isfinite(out["words"][:, valid]).all()
    assert out["truncated"][0] == 1


def test_empty_input_is_an_error(encoder):
    model, tok, _ = encoder
    with pytest.raises(IsoprobeError):
        encode_rows(model, tok, [], progress=False)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_safetensors_round_trip(encoder, tmp_path, dtype):
    model, tok, _ = encoder
    out = encode_rows(model, tok, rows_of(TEXTS), progress=False)
    path = tmp_path / "train.safetensors"
    save_embeddings(path, out, {"model": "tiny", "rows": len(TEXTS)}, dtype=dtype)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"
    cls = load_embeddings(path, "cls")
    assert cls.dtype == np.float32 and cls.shape == out["cls"].shape
    tol = 0 if dtype == "float32" else 2e-3
    np.testing.assert_allclose(cls, out["cls"], atol=tol, rtol=tol)
    np.testing.assert_array_equal(load_embeddings(path, "cls", layer=-1), cls[-1])
    np.testing.assert_array_equal(load_embeddings(path, "n_tokens"), out["n_tokens"])
    meta = embedding_metadata(path)
    assert meta["dtype"] == dtype and meta["rows"] == str(len(TEXTS))
    with pytest.raises(IsoprobeError, match="layer 9"):
        load_embeddings(path, "cls", layer=9)
    with pytest.raises(IsoprobeError, match="no 'words'"):
        load_embeddings(path, "words")
    with pytest.raises(IsoprobeError, match="not found"):
        load_embeddings(tmp_path / "missing.safetensors")
