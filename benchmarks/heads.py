"""Head overhead: the [CLS] treatments (IsoBN, whitening, ...) vs baseline, as % of a training step.

For hidden size 384 (the embedded MiniLM, 6 layers) and 768 (a randomly initialised BERT: 12 heads,
12 layers by default, no download), on a fixed random batch (32 rows x 64 tokens):

- step: a full training step (forward through encoder and head, cross-entropy, backward, AdamW step,
  zero_grad), as `isoprobe.finetune.loop` does it minus gradient clipping and logging, with each of
  --methods (default baseline, isobn, whiten; the other three cost a full step per repeat). Warm-up
  steps first; then the methods run in a new seeded order in every repeat (to cancel drift); the
  median step time per method and overhead % = (median_method / median_baseline - 1) * 100.
- head-only (all six methods): forward + backward of the head alone on a [B, H] input (the encoder's
  pooled [CLS]), averaged over many iterations per repeat, median over repeats; reported in ms, as %
  of the baseline step, and as the extra over the baseline head (% of the baseline step): the more
  precise measure.

All methods share one encoder and one AdamW optimizer over the encoder and every head (a head without
gradients is skipped by AdamW), so memory stays that of one model. Prints one JSON document; progress
goes to stderr.

    python benchmarks/heads.py [--hidden 384 768] [--layers-768 12] [--batch 32] [--seq 64]
                               [--repeats 5] [--warmup 1] [--methods baseline isobn whiten ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from isoprobe.core.config import TrainConfig  # noqa: E402
from isoprobe.core.device import autocast, usable_cores  # noqa: E402
from isoprobe.core.models import load_encoder, resolve_model  # noqa: E402
from isoprobe.finetune.classifier import EncoderClassifier  # noqa: E402
from isoprobe.finetune.heads import METHODS, ClassifierHead  # noqa: E402
from isoprobe.finetune.loop import freeze_unused_pooler, make_adamw  # noqa: E402

MODEL = "embedded:all-MiniLM-L6-v2"
TARGET_PCT = 2.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_encoder(hidden: int, layers_768: int) -> tuple[nn.Module, str]:
    """The embedded MiniLM for 384; a randomly initialised BERT (12 heads) for any other width."""
    if hidden == 384:
        encoder, _, _ = load_encoder(resolve_model(MODEL))
        return encoder, f"{MODEL} ({encoder.config.num_hidden_layers} layers)"
    from transformers import BertConfig, BertModel

    if hidden % 12:
        raise SystemExit(f"--hidden {hidden}: must be a multiple of 12 (attention heads)")
    config = BertConfig(
        hidden_size=hidden,
        num_attention_heads=12,
        num_hidden_layers=layers_768,
        intermediate_size=4 * hidden,
    )
    torch.manual_seed(0)
    return BertModel(config), f"random BertConfig(hidden {hidden}, 12 heads, {layers_768} layers)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_hidden(hidden: int, args, device: torch.device) -> dict:
    encoder, desc = build_encoder(hidden, args.layers_768)
    torch.manual_seed(args.seed)
    heads = nn.ModuleDict(
        {m: ClassifierHead(m, hidden, args.classes, dropout=0.1) for m in METHODS}
    )
    models = {m: EncoderClassifier(encoder, heads[m], "cls") for m in args.methods}
    freeze_unused_pooler(next(iter(models.values())))
    container = nn.ModuleDict({"encoder": encoder, "heads": heads}).to(device)
    optimizer = make_adamw(container, TrainConfig())
    vocab = int(encoder.config.vocab_size)
    ids = torch.randint(1000, vocab, (args.batch, args.seq))
    ids[:, 0] = 101  # [CLS]
    batch = {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "token_type_ids": torch.zeros_like(ids).to(device),
    }
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step(method: str) -> float:
        model = models[method]
        model.train()
        sync(device)
        t0 = time.perf_counter()
        with autocast(device):
            logits, _, _ = model(**batch)
            loss = loss_fn(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - t0

    log(f"hidden {hidden}: {desc}; warm-up")
    for _ in range(args.warmup):
        for m in args.methods:
            step(m)
    rng = np.random.default_rng(args.seed)
    steps: dict[str, list[float]] = {m: [] for m in args.methods}
    for rep in range(args.repeats):
        for i in rng.permutation(len(args.methods)):
            m = args.methods[i]
            steps[m].append(step(m))
        log(f"hidden {hidden} repeat {rep + 1}/{args.repeats}: "
            + ", ".join(f"{m} {steps[m][-1] * 1e3:.0f} ms" for m in args.methods))  # fmt: skip

    # head-only: forward + backward on the encoder's pooled [CLS] (train mode, statistics warmed up)
    with torch.no_grad(), autocast(device):
        x0 = models["baseline" if "baseline" in models else args.methods[0]](**batch)[1].float()
    head_times: dict[str, list[float]] = {m: [] for m in METHODS}

    def head_run(method: str, iters: int) -> float:
        head = heads[method].train()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            x = x0.clone().requires_grad_(True)
            with autocast(device):
                logits, _ = head(x)
                loss = loss_fn(logits.float(), labels)
            loss.backward()
            head.zero_grad(set_to_none=True)
        sync(device)
        return (time.perf_counter() - t0) / iters

    for m in METHODS:
        head_run(m, max(1, args.head_iters // 10))
    for _ in range(args.repeats):
        for i in rng.permutation(len(METHODS)):
            head_times[METHODS[i]].append(head_run(METHODS[i], args.head_iters))

    base_step = statistics.median(steps["baseline"])
    base_head = statistics.median(head_times["baseline"])
    methods = {}
    for m in METHODS:
        head = statistics.median(head_times[m])
        methods[m] = {}
        if m in steps:
            med = statistics.median(steps[m])
            methods[m] = {
                "median_step_ms": round(med * 1e3, 2),
                "step_ms": [round(t * 1e3, 2) for t in steps[m]],
                "overhead_pct": round((med / base_step - 1) * 100, 2),
            }
        methods[m] |= {
            "head_only_ms": round(head * 1e3, 4),
            "head_only_pct_of_step": round(head / base_step * 100, 3),
            "head_extra_over_baseline_pct_of_step": round((head - base_head) / base_step * 100, 3),
        }
    out = {
        "encoder": desc,
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "methods": methods,
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--hidden", type=int, nargs="+", default=[384, 768])
    p.add_argument("--layers-768", type=int, default=12, help="layers of the random BERT (768)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps per method")
    p.add_argument("--head-iters", type=int, default=100, help="head-only iterations per repeat")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["baseline", "isobn", "whiten"],
        choices=METHODS,
        help="methods timed in full steps (baseline always; head-only covers all six)",
    )
    p.add_argument("--threads", type=int, default=0, help="0 = every usable core")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if "baseline" not in args.methods:
        args.methods = ["baseline", *args.methods]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads or usable_cores())

    sizes = {}
    for h in args.hidden:
        sizes[str(h)] = bench_hidden(h, args, device)
        gc.collect()  # free this width's model and optimizer before the next
    target: dict = {"isobn_overhead_pct_at_most": TARGET_PCT}
    if "isobn" in args.methods:
        step_pct = {h: r["methods"]["isobn"]["overhead_pct"] for h, r in sizes.items()}
        target |= {
            "step_overhead_pct": step_pct,
            "met_step": all(v <= TARGET_PCT for v in step_pct.values()),
        }
    head_pct = {
        h: r["methods"]["isobn"]["head_extra_over_baseline_pct_of_step"] for h, r in sizes.items()
    }
    target |= {
        "head_extra_pct": head_pct,
        "met_head_only": all(v <= TARGET_PCT for v in head_pct.values()),
    }
    print(
        json.dumps(
            {
                "benchmark": "heads",
                "batch": args.batch,
                "seq_length": args.seq,
                "classes": args.classes,
                "repeats": args.repeats,
                "warmup_steps_per_method": args.warmup,
                "step_methods": args.methods,
                "head_only_iterations_per_repeat": args.head_iters,
                "step": "forward (encoder + head, autocast bf16 on CUDA), cross-entropy, backward, "
                "AdamW (isoprobe.finetune.loop.make_adamw) step, zero_grad; no gradient clipping",
                "threads": torch.get_num_threads(),
                "device": str(device),
                "torch": torch.__version__,
                "hidden_sizes": sizes,
                "target": target,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
