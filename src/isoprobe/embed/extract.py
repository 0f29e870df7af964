"""Per-layer [CLS], mean-pooled and word vectors from an encoder, and the safetensors files that hold them.

An embedding file (`<split>.safetensors`) has, with L transformer layers, N rows and H dimensions:
- `cls`: [L+1, N, H], the first token's vector at the embedding layer (0) and every layer;
- `mean`: [L+1, N, H], the attention-mask-weighted mean over tokens (special tokens included,
  as sentence-transformers pools);
- `n_tokens`: [N] int64, tokens fed to the encoder; `truncated`: [N] uint8, 1 where the input was
  cut at max_length;
- token tasks only: `words`: [L+1, W, H], one vector per word (mean of its sub-words), `word_offsets`:
  [N+1] int64 (row i owns words word_offsets[i]:word_offsets[i+1]), `word_valid`: [W] uint8, 0 for words
  cut off by max_length (their vectors are NaN).
- optional: `pooler` [N, H], the model's pooler output; `head_input` [N, H], for a fine-tuned model the
  normalized vector its classifier sees (the head's normalizer applied to the pooled vector, eval mode).
Rows are in the order of the prepared split. The header metadata says the model, layers and dtype.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from isoprobe.core.device import autocast
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.io import write_safetensors

FLOAT_KEYS = ("cls", "mean", "words", "pooler", "head_input")


def _tokenize(tokenizer, rows: list[dict], kind: str, max_length: int):
    """Return (encodings, untruncated lengths)."""
    if kind == "token":
        words = [r["tokens"] for r in rows]
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        full = tokenizer(words, is_split_into_words=True, truncation=False)
    else:
        a = [r["text_a"] for r in rows]
        b = [r["text_b"] for r in rows] if any(r.get("text_b") is not None for r in rows) else None
        if b is not None and any(x is None for x in b):
            raise IsoprobeError(
                "rows mix single sentences and sentence pairs (text_b missing in some rows)"
            )
        enc = tokenizer(a, b, truncation=True, max_length=max_length)
        full = tokenizer(a, b, truncation=False)
    lengths = np.array([len(x) for x in full["input_ids"]], dtype=np.int64)
    return enc, lengths


def encode_rows(
    encoder: torch.nn.Module,
    tokenizer,
    rows: list[dict],
    *,
    kind: str = "sentence",
    batch_size: int = 64,
    max_length: int = 128,
    device: torch.device | None = None,
    progress: bool = True,
    desc: str = "embed",
    pooler: bool = False,
) -> dict[str, np.ndarray]:
    """Run `encoder` over `rows` (prepared-split schema) in length-sorted, dynamically padded batches.

    Returns float32 arrays `cls`, `mean` ([L+1, N, H]) and, for `kind="token"`, `words` ([L+1, W, H]),
    plus `n_tokens`, `truncated`, `word_offsets`, `word_valid` as described in the module docstring.
    """
    if not rows:
        raise IsoprobeError("no rows to embed")
    device = device or next(encoder.parameters()).device
    n = len(rows)
    enc, full_lengths = _tokenize(tokenizer, rows, kind, max_length)
    lengths = np.array([len(x) for x in enc["input_ids"]], dtype=np.int64)
    n_layers = int(encoder.config.num_hidden_layers) + 1
    hidden = int(encoder.config.hidden_size)
    cls = np.empty((n_layers, n, hidden), dtype=np.float32)
    mean = np.empty((n_layers, n, hidden), dtype=np.float32)
    out: dict[str, np.ndarray] = {
        "cls": cls,
        "mean": mean,
        "n_tokens": lengths,
        "truncated": (full_lengths > lengths).astype(np.uint8),
    }
    if kind == "token":
        counts = np.array([len(r["tokens"]) for r in rows], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        words = np.full((n_layers, int(offsets[-1]), hidden), np.nan, dtype=np.float32)
        word_valid = np.zeros(int(offsets[-1]), dtype=np.uint8)
        out.update(words=words, word_offsets=offsets, word_valid=word_valid)
    if pooler:
        out["pooler"] = np.empty((n, hidden), dtype=np.float32)
    names = [k for k in tokenizer.model_input_names if k in enc]
    order = np.argsort(-lengths, kind="stable")
    encoder.eval()
    with torch.inference_mode(), autocast(device):
        for start in tqdm(
            range(0, n, batch_size), desc=desc, unit="batch", disable=not progress, mininterval=2
        ):
            idx = order[start : start + batch_size]
            feats = tokenizer.pad([{k: enc[k][i] for k in names} for i in idx], return_tensors="pt")
            feats = {k: v.to(device) for k, v in feats.items()}
            result = encoder(**feats, output_hidden_states=True)
            hs = torch.stack(result.hidden_states).float()
            if pooler:
                out["pooler"][idx] = result.pooler_output.float().cpu().numpy()
            mask = feats["attention_mask"].to(hs.dtype)  # [B, T]
            cls[:, idx] = hs[:, :, 0].cpu().numpy()
            pooled = (hs * mask[None, :, :, None]).sum(2) / mask.sum(1)[None, :, None]
            mean[:, idx] = pooled.cpu().numpy()
            if kind == "token":
                _pool_words(hs, enc, idx, offsets, out["words"], out["word_valid"])
    return out


def _pool_words(
    hs: torch.Tensor,
    enc,
    idx: np.ndarray,
    offsets: np.ndarray,
    words: np.ndarray,
    valid: np.ndarray,
) -> None:
    """Average sub-word vectors into word vectors for the batch rows `idx` (hs: [L+1, B, T, H])."""
    T = hs.shape[2]
    flat_pos, glob = [], []
    for b, i in enumerate(idx):
        for t, w in enumerate(enc.word_ids(int(i))):
            if w is not None:
                flat_pos.append(b * T + t)
                glob.append(int(offsets[i]) + w)
    if not flat_pos:
        return
    uniq, inv = np.unique(np.asarray(glob), return_inverse=True)
    inv_t = torch.from_numpy(inv).to(hs.device)
    flat = hs.reshape(hs.shape[0], -1, hs.shape[-1])[:, torch.tensor(flat_pos, device=hs.device)]
    sums = torch.zeros(hs.shape[0], len(uniq), hs.shape[-1], device=hs.device, dtype=hs.dtype)
    sums.index_add_(1, inv_t, flat)
    cnt = torch.bincount(inv_t, minlength=len(uniq)).to(hs.dtype)
    words[:, uniq] = (sums / cnt[None, :, None]).cpu().numpy()
    valid[uniq] = 1


def save_embeddings(
    path: str | Path,
    arrays: dict[str, np.ndarray],
    metadata: dict[str, str],
    dtype: str = "float32",
) -> None:
    """Write a safetensors file atomically; float arrays are cast to `dtype` (float32 or float16)."""
    cast = {k: (v.astype(dtype) if k in FLOAT_KEYS else v) for k, v in arrays.items()}
    write_safetensors(path, cast, {k: str(v) for k, v in {**metadata, "dtype": dtype}.items()})


def load_embeddings(path: str | Path, key: str = "cls", layer: int | None = None) -> np.ndarray:
    """Read one array as float32 ([L+1, N, H], or [N, H] for one `layer`; negative layers count from the end)."""
    path = Path(path)
    if not path.is_file():
        raise IsoprobeError(f"embedding file not found: {path} (run the embed stage first)")
    with safe_open(str(path), framework="numpy") as f:
        if key not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
            raise IsoprobeError(f"{path}: no '{key}' array (has {sorted(f.keys())})")
        if layer is None:
            arr = f.get_tensor(key)
        else:
            sl = f.get_slice(key)
            n_layers = sl.get_shape()[0]
            if not -n_layers <= layer < n_layers:
                raise IsoprobeError(f"{path}: layer {layer} out of range for {n_layers} layers")
            arr = sl[layer % n_layers]
    return arr.astype(np.float32, copy=False) if arr.dtype.kind == "f" else arr


def embedding_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {})


def embed_splits(
    encoder: torch.nn.Module,
    tokenizer,
    splits: dict[str, list[dict]],
    out_dir: Path,
    *,
    kind: str,
    batch_size: int,
    max_length: int,
    dtype: str,
    metadata: dict[str, str],
    device: torch.device,
    progress: bool = True,
    pooler: bool = False,
    transform=None,
) -> dict[str, dict]:
    """Embed every split into `out_dir/<split>.safetensors`; return per-split statistics
    (rows, seconds, rows per second, mean tokens, truncated rows, words cut by max_length).
    `transform(arrays) -> arrays`, if given, adds arrays (e.g. the head input) before saving."""
    import time

    stats = {}
    for split, rows in splits.items():
        t0 = time.perf_counter()
        arrays = encode_rows(
            encoder, tokenizer, rows, kind=kind, batch_size=batch_size, max_length=max_length,
            device=device, progress=progress, desc=f"embed {metadata.get('task', '')}/{split}", pooler=pooler,
        )  # fmt: skip
        if transform is not None:
            arrays = transform(arrays)
        seconds = time.perf_counter() - t0
        meta = {
            **metadata, "split": split, "kind": kind, "rows": len(rows), "layers": arrays["cls"].shape[0],
            "hidden_size": arrays["cls"].shape[2], "max_length": max_length,
        }  # fmt: skip
        save_embeddings(out_dir / f"{split}.safetensors", arrays, meta, dtype=dtype)
        s = {
            "rows": len(rows),
            "seconds": round(seconds, 3),
            "rows_per_second": round(len(rows) / seconds, 1),
            "mean_tokens": round(float(arrays["n_tokens"].mean()), 2),
            "truncated_rows": int(arrays["truncated"].sum()),
        }
        if "word_valid" in arrays:
            s["words"] = len(arrays["word_valid"])
            s["words_cut_by_max_length"] = int((arrays["word_valid"] == 0).sum())
        stats[split] = s
    return stats
