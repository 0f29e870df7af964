"""Embedding extraction: isoprobe's embed path vs a naive Hugging Face loop and the feature-extraction pipeline.

On a seeded sample of the embedded tweet corpus (2,000 rows), with the embedded model, the same batch
size, max length and thread count for every side, timed in interleaved repeats (median and all times):

- isoprobe: `isoprobe.embed.extract.encode_rows`, the in-memory core of `embed_splits` (what the embed stage
  runs per split: tokenization, length-sorted dynamically padded batches, inference mode, bf16 autocast
  on CUDA, [CLS] and mean of every layer), without the safetensors write (timed once, separately);
- naive: the tokenizer with padding="max_length" in input order, fp32 under torch.no_grad,
  output_hidden_states=True, the [CLS] and the attention-mask mean of every layer (the same outputs);
- pipeline: transformers.pipeline("feature-extraction") with the same batch size and truncation
  (the last layer's token vectors only, as tensors).

The last-layer [CLS] of the sides must agree (max abs difference and tolerance reported). Prints one
JSON document; progress goes to stderr.

    python benchmarks/embed.py [--rows 2000] [--max-length 128] [--batch-size 64] [--repeats 3]
                               [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from isoprobe.core.config import TaskConfig  # noqa: E402
from isoprobe.core.device import pick_device  # noqa: E402
from isoprobe.core.errors import IsoprobeError  # noqa: E402
from isoprobe.core.models import load_encoder, resolve_model  # noqa: E402
from isoprobe.data.sources import read_tweets  # noqa: E402
from isoprobe.embed.extract import encode_rows, save_embeddings  # noqa: E402

MODEL = "embedded:all-MiniLM-L6-v2"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sample_rows(n: int, seed: int) -> list[dict]:
    """A seeded sample of n rows (non-empty text) of the embedded tweet corpus, in corpus order."""
    raw = read_tweets(TaskConfig(source="embedded:tweets"), "benchmark")
    rows = [r for r in raw.splits["pool"] if r["text_a"] and r["text_a"].strip()]
    pick = np.sort(np.random.default_rng(seed).permutation(len(rows))[: min(n, len(rows))])
    return [rows[i] for i in pick]


def run_isoprobe(encoder, tokenizer, rows, args, device) -> dict[str, np.ndarray]:
    return encode_rows(
        encoder,
        tokenizer,
        rows,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=device,
        progress=False,
    )


@torch.no_grad()
def run_naive(encoder, tokenizer, rows, args, device) -> dict[str, np.ndarray]:
    """Pad every batch to max_length, input order, fp32; [CLS] and masked mean of every layer."""
    texts = [r["text_a"] for r in rows]
    cls, mean = [], []
    for start in range(0, len(texts), args.batch_size):
        batch = tokenizer(
            texts[start : start + args.batch_size],
            padding="max_length",
            max_length=args.max_length,
            truncation=True,
            return_tensors="pt",
        ).to(device)
        hs = torch.stack(encoder(**batch, output_hidden_states=True).hidden_states)
        mask = batch["attention_mask"].to(hs.dtype)
        cls.append(hs[:, :, 0].cpu().numpy())
        mean.append(
            ((hs * mask[None, :, :, None]).sum(2) / mask.sum(1)[None, :, None]).cpu().numpy()
        )
    return {"cls": np.concatenate(cls, axis=1), "mean": np.concatenate(mean, axis=1)}


def run_pipeline(pipe, rows, args) -> dict[str, np.ndarray]:
    """Last-layer token vectors from the pipeline; keeps the [CLS] of each row."""
    out = pipe(
        [r["text_a"] for r in rows],
        batch_size=args.batch_size,
        truncation=True,
        tokenize_kwargs={"max_length": args.max_length},
        return_tensors=True,
    )
    return {"cls_last": np.stack([t[0, 0].float().numpy() for t in out])}


def make_pipeline(encoder, tokenizer, device: torch.device):
    """The feature-extraction pipeline on the loaded model; framework="pt" where the argument exists."""
    import inspect

    from transformers import pipeline

    if "framework" in inspect.signature(pipeline).parameters:
        pipe = pipeline(
            "feature-extraction", model=encoder, tokenizer=tokenizer, framework="pt", device=device
        )
        return pipe, "pt"
    pipe = pipeline("feature-extraction", model=encoder, tokenizer=tokenizer, device=device)
    return pipe, "pt (this transformers is PyTorch-only: no framework argument)"


def timed(fn: Callable[[], dict], device: torch.device) -> tuple[float, dict]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def padded_tokens(lengths: np.ndarray, batch_size: int, order: np.ndarray) -> int:
    """Tokens fed to the encoder when batches of `order` are padded to their longest row."""
    return int(sum(lengths[order[s : s + batch_size]].max() * len(order[s : s + batch_size])
                   for s in range(0, len(order), batch_size)))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="0 = every usable core")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-pipeline", action="store_true", help="skip the feature-extraction pipeline"
    )
    p.add_argument("--tolerance", type=float, default=None, help="max abs diff of last-layer [CLS] "
                   "(default 1e-4 on CPU, 0.1 on CUDA, where isoprobe runs bf16 autocast)")  # fmt: skip
    args = p.parse_args()
    try:  # sets the CPU thread count (0: every usable core) or TF32 on CUDA, as the stages do
        device = pick_device(args.device, args.threads, key="--device")
    except IsoprobeError as err:
        raise SystemExit(str(err)) from None
    threads = torch.get_num_threads()
    tolerance = (
        args.tolerance if args.tolerance is not None else (1e-4 if device.type == "cpu" else 0.1)
    )

    rows = sample_rows(args.rows, args.seed)
    encoder, tokenizer, _ = load_encoder(resolve_model(MODEL))
    encoder.to(device).eval()
    sides: dict[str, Callable[[], dict]] = {
        "isoprobe": lambda: run_isoprobe(encoder, tokenizer, rows, args, device),
        "naive": lambda: run_naive(encoder, tokenizer, rows, args, device),
    }
    framework = None
    if not args.no_pipeline:
        pipe, framework = make_pipeline(encoder, tokenizer, device)
        sides["pipeline"] = lambda: run_pipeline(pipe, rows, args)

    log(f"{len(rows)} rows, {threads} threads, device {device}; warm-up")
    warm = rows[: 2 * args.batch_size]
    run_isoprobe(encoder, tokenizer, warm, args, device)
    run_naive(encoder, tokenizer, warm, args, device)
    if not args.no_pipeline:
        run_pipeline(pipe, warm, args)

    times: dict[str, list[float]] = {k: [] for k in sides}
    outputs: dict[str, dict] = {}
    for rep in range(args.repeats):  # interleaved, so drift from other load hits every side alike
        for name, fn in sides.items():
            seconds, outputs[name] = timed(fn, device)
            times[name].append(seconds)
            log(
                f"repeat {rep + 1}/{args.repeats} {name}: {seconds:.2f} s ({len(rows) / seconds:.1f} rows/s)"
            )

    iso, naive = outputs["isoprobe"], outputs["naive"]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        save_embeddings(Path(tmp) / "pool.safetensors", iso, {"model": MODEL})
        save_seconds = time.perf_counter() - t0

    lengths = iso["n_tokens"]
    diff_cls_last = float(np.abs(iso["cls"][-1] - naive["cls"][-1]).max())
    agreement = {
        "tolerance": tolerance,
        "isoprobe_vs_naive_cls_last_layer_max_abs_diff": diff_cls_last,
        "isoprobe_vs_naive_cls_all_layers_max_abs_diff": float(
            np.abs(iso["cls"] - naive["cls"]).max()
        ),
        "isoprobe_vs_naive_mean_all_layers_max_abs_diff": float(
            np.abs(iso["mean"] - naive["mean"]).max()
        ),
    }
    ok = diff_cls_last <= tolerance
    if "pipeline" in outputs:
        d = float(np.abs(iso["cls"][-1] - outputs["pipeline"]["cls_last"]).max())
        agreement["isoprobe_vs_pipeline_cls_last_layer_max_abs_diff"] = d
        ok = ok and d <= tolerance
    agreement["within_tolerance"] = ok

    median = {k: statistics.median(v) for k, v in times.items()}
    per_side = {
        k: {
            "sentences_per_second": round(len(rows) / median[k], 1),
            "median_seconds": round(median[k], 3),
            "seconds": [round(t, 3) for t in v],
        }
        for k, v in times.items()
    }
    per_side["isoprobe"]["measures"] = (
        "isoprobe.embed.extract.encode_rows: what embed_splits runs per split, minus the safetensors write"
    )
    per_side["isoprobe"]["autocast"] = "bf16" if device.type == "cuda" else "off (fp32)"
    per_side["isoprobe"]["save_seconds_once"] = round(save_seconds, 3)
    per_side["naive"]["measures"] = (
        "padding=max_length, input order, fp32, no_grad, output_hidden_states; [CLS] and mean of every layer"
    )
    input_order = np.arange(len(rows))
    per_side["isoprobe"]["tokens_fed"] = padded_tokens(
        lengths, args.batch_size, np.argsort(-lengths, kind="stable")
    )
    per_side["naive"]["tokens_fed"] = len(rows) * args.max_length
    if "pipeline" in per_side:
        per_side["pipeline"]["measures"] = (
            "pipeline('feature-extraction'): last layer only (all token vectors, return_tensors=True), "
            "batches padded to their longest row in input order"
        )
        per_side["pipeline"]["framework"] = framework
        per_side["pipeline"]["tokens_fed"] = padded_tokens(lengths, args.batch_size, input_order)

    ratio_naive = median["naive"] / median["isoprobe"]
    result = {
        "benchmark": "embed",
        "model": MODEL,
        "corpus": "embedded:tweets (seeded sample)",
        "rows": len(rows),
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "mean_tokens_per_row": round(float(lengths.mean()), 2),
        "truncated_rows": int(iso["truncated"].sum()),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "sides": per_side,
        "ratios": {"isoprobe_over_naive": round(ratio_naive, 2)},
        "target": {"isoprobe_over_naive_at_least": 2.0, "met": ratio_naive >= 2.0},
        "agreement": agreement,
    }
    if "pipeline" in median:
        result["ratios"]["isoprobe_over_pipeline"] = round(
            median["pipeline"] / median["isoprobe"], 2
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
