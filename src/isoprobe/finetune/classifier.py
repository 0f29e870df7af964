"""An encoder with a [CLS] treatment head, and its folder format.

A fine-tuned model folder holds the encoder as a Hugging Face model (config.json, model.safetensors,
tokenizer files: AutoModel loads the folder directly) plus `head.safetensors` (head weights and
buffers, e.g. IsoBN statistics) and `head.json` (method, pooling, options, labels).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from isoprobe.core.errors import IsoprobeError
from isoprobe.core.treatments import get_treatment
from isoprobe.finetune.heads import ClassifierHead


def pool(out, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, H] from encoder outputs: first-token vector of the last layer (`cls`), the pooler output
    (`pooler`), or the attention-mask mean of the last layer (`mean`)."""
    if pooling == "cls":
        return out.last_hidden_state[:, 0]
    if pooling == "pooler":
        return out.pooler_output
    mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
    return (out.last_hidden_state * mask).sum(1) / mask.sum(1)


class EncoderClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, head: ClassifierHead, pooling: str):
        super().__init__()
        self.encoder, self.head, self.pooling = encoder, head, pooling

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        """Return (outputs [B, C], pooled [B, H], normalized [B, H])."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        pooled = pool(self.encoder(**kwargs), attention_mask, self.pooling)
        logits, z = self.head(pooled)
        return logits, pooled, z


def check_pooling(pooling: str, info: dict) -> None:
    if pooling == "pooler" and not info.get("pooler_trained"):
        raise IsoprobeError(
            f"finetune.train.pooling: 'pooler' needs a trained pooler, and model '{info['name']}' has "
            f"{'an untrained' if info.get('has_pooler') else 'no'} pooler; use 'cls' or 'mean'"
        )


def save_classifier(model: EncoderClassifier, tokenizer, folder: Path, head_config: dict) -> None:
    """Write the encoder (safetensors), tokenizer, head weights and buffers, and head.json into
    `folder`. For a user treatment head.json also says where its code came from (`treatment`: a
    file of treatments/ and its sha256, or the installed distribution and version)."""
    model.encoder.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    save_file(state, str(folder / "head.safetensors"))
    treatment = get_treatment(model.head.method)
    origin = {} if treatment.builtin else {"treatment": treatment.origin}
    (folder / "head.json").write_text(
        json.dumps({**head_config, "pooling": model.pooling, **origin}, indent=2) + "\n"
    )


def load_head(folder: Path) -> tuple[ClassifierHead, dict]:
    """The head of a fine-tuned model folder (eval mode) and its head.json. A user treatment must
    be registered first (`load_params` imports the project's treatments/ folder)."""
    cfg = json.loads((folder / "head.json").read_text())
    head = ClassifierHead(
        cfg["method"], cfg["hidden_size"], cfg["num_outputs"], cfg["dropout"], cfg["options"]
    )
    head.load_state_dict(load_file(str(folder / "head.safetensors")))
    return head.eval(), cfg
