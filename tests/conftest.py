"""Shared fixtures: offline HF, a tiny random BERT saved as a local model folder, ../shared/data."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def free_port() -> int:
    """A free TCP port on the loopback interface (for torch.distributed and launchers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


requires_shared = pytest.mark.skipif(
    not (SHARED / "README.md").is_file(),
    reason=f"public benchmark data not found at {SHARED} (a user's clone has no ../shared; CI has it)",
)

WORDS = (
    "the a an is was good bad movie film great terrible not very really i you it this that and or "
    "love hate boring fun plot actor story what who where when how why question answer city name"
).split()


def make_tiny_bert(
    folder: Path, seed: int = 0, layers: int = 2, hidden: int = 32, dropout: float = 0.1
) -> Path:
    """A random BertModel (2 layers, hidden 32) with a word-piece tokenizer, saved like a hub model."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *WORDS,
        *"abcdefghijklmnopqrstuvwxyz.,?!'",
    ]
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    import inspect

    vocab_arg = (
        "vocab"
        if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters
        else "vocab_file"
    )
    tok = BertTokenizerFast(**{vocab_arg: str(folder / "vocab.txt")}, do_lower_case=True)
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(cfg).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
