"""Fine-tuning step throughput: isoprobe's `finetune()` vs `transformers.Trainer`.

Same model (the embedded all-MiniLM-L6-v2 with a [CLS] -> dropout -> linear head, identical
initialisation), same training rows of the embedded tweet corpus (`prepare_task`: deduplicated,
stratified, seeded), same tokenization (truncation at max length), batch size, epochs, AdamW (fused on
both sides when this torch supports it, as isoprobe's `make_adamw` picks), linear warm-up/decay with
the same warm-up steps, gradient clipping, dropout, seed and thread count:

- isoprobe: `isoprobe.finetune.loop.finetune` with the baseline head (`--isobn` adds IsoBN as a third
  side), no checkpoints, no progress bar; it always evaluates dev after the epoch and test at the end,
  so it gets tiny dev/test splits (`--eval-rows`);
- trainer: `transformers.Trainer` on the same `EncoderClassifier` wrapped to return the
  cross-entropy loss (`--trainer-model auto`: `AutoModelForSequenceClassification` from the same
  folder instead, whose head reads the pooler), `DataCollatorWithPadding` (dynamic padding, random
  order: Trainer's default), no eval, no saving, no logging, report_to none, 0 loader workers;
  `--group-by-length` adds Trainer with length-grouped sampling as another side.

Timed (the headline): the training steps in steady state, from the end of optimizer step 1 to the end
of the last step, on the wall clock stamped by each side's per-step hook (isoprobe's `on_step`,
Trainer's `on_step_end`), over the examples of steps 2..N (step 1, with its one-time allocations, is
excluded; one short untimed warm-up run per side precedes the repeats). Also reported: the whole call
(`finetune()` incl. tokenization, setup and the tiny dev/test evaluation; `trainer.train()` incl. its
setup) and isoprobe's `result.seconds` (training loop + per-epoch dev evaluation + best-state copy).
Each repeat builds fresh models (same seed) and runs the sides interleaved; medians over repeats.
Prints one JSON document; progress goes to stderr.

    python benchmarks/finetune.py [--rows 512] [--max-length 64] [--batch-size 32] [--repeats 3]
        [--threads N] [--device cpu|cuda] [--group-by-length] [--isobn] [--trainer-model wrapper|auto]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from isoprobe.core.config import HeadsConfig, TaskConfig, TrainConfig  # noqa: E402
from isoprobe.core.device import pick_device  # noqa: E402
from isoprobe.core.errors import IsoprobeError  # noqa: E402
from isoprobe.core.models import load_encoder, resolve_model  # noqa: E402
from isoprobe.data.prepare import prepare_task  # noqa: E402
from isoprobe.data.sources import read_source  # noqa: E402
from isoprobe.finetune.classifier import EncoderClassifier  # noqa: E402
from isoprobe.finetune.heads import ClassifierHead  # noqa: E402
from isoprobe.finetune.loop import (  # noqa: E402
    encode_split,
    finetune,
    freeze_unused_pooler,
    length_grouped_batches,
    make_adamw,
    seed_everything,
)

MODEL = "embedded:all-MiniLM-L6-v2"
TARGET = 1.2
LOSS_TOLERANCE = 0.15  # relative difference of the mean training losses called "similar"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare(rows: int, eval_rows: int, seed: int) -> tuple[dict[str, list[dict]], dict]:
    """Train/dev/test rows of the embedded tweet corpus via the library's own preparation."""
    task = TaskConfig(
        source="embedded:tweets",
        max_rows={"train": rows, "dev": eval_rows, "test": eval_rows},
        seed=seed,
    )
    prepared = prepare_task(read_source(task, "tasks.tweets"), task, "tweets")
    return prepared.splits, prepared.meta


def build_model(method: str, num_labels: int, cfg: TrainConfig, seed: int) -> EncoderClassifier:
    """A fresh encoder + head, seeded as the finetune stage seeds it (identical on every side)."""
    seed_everything(seed)
    encoder, _, info = load_encoder(resolve_model(MODEL))
    head = ClassifierHead(
        method, info["hidden_size"], num_labels, cfg.dropout, HeadsConfig({}).options(method)
    )
    return EncoderClassifier(encoder, head, cfg.pooling)


class LossModel(nn.Module):
    """An `EncoderClassifier` in the form Trainer expects: forward(..., labels) -> {"loss", "logits"}
    with the loss isoprobe uses (cross-entropy on float logits). Keeps each step's loss tensor."""

    def __init__(self, model: EncoderClassifier):
        super().__init__()
        self.model = model
        self.losses: list[torch.Tensor] = []

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None) -> dict:
        logits, _, _ = self.model(input_ids, attention_mask, token_type_ids)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.float(), labels)
            self.losses.append(out["loss"].detach())
        return out


class CountingCollator:
    """DataCollatorWithPadding that records each batch's padded shape [rows, tokens]."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorWithPadding

        self.inner = DataCollatorWithPadding(tokenizer)
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, features: list[dict]) -> dict:
        batch = self.inner(features)
        self.shapes.append(tuple(batch["input_ids"].shape))
        return batch


def clock(device: torch.device) -> Callable[[], float]:
    """Wall-clock stamp, after the queued GPU work has finished on CUDA."""

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    return now


def steady(stamps: list[float], sizes: list[int]) -> tuple[float, int]:
    """Seconds and examples from the end of step 1 to the end of the last step."""
    if len(stamps) < 2:
        raise SystemExit("fewer than 2 optimizer steps: raise --rows or lower --batch-size")
    return stamps[-1] - stamps[0], int(sum(sizes[1:]))


def fused_adamw(cfg: TrainConfig) -> bool:
    """Whether isoprobe's make_adamw builds a fused AdamW in this torch build."""
    return bool(make_adamw(nn.Linear(2, 2), cfg).defaults.get("fused"))


def optimizer_name(opt) -> str:
    inner = getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps it
    fused = inner.defaults.get("fused")
    return f"{type(inner).__module__}.{type(inner).__name__} (fused={bool(fused)})"


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """isoprobe's warm-up length (int(ratio * total)); Trainer gets it as a step count, since its
    own ratio rounds up."""
    return int(cfg.warmup_ratio * total_steps)


def run_isoprobe(
    method: str,
    splits: dict[str, list[dict]],
    meta: dict,
    tokenizer,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    threads: int,
) -> dict:
    from accelerate import Accelerator

    torch.set_num_threads(threads)
    model = build_model(method, meta["num_labels"], cfg, seed)
    acc = Accelerator(
        cpu=device.type == "cpu", mixed_precision="bf16" if device.type == "cuda" else "no"
    )
    now, stamps = clock(device), []
    t0 = now()
    result = finetune(
        model,
        tokenizer,
        splits,
        meta,
        cfg,
        seed,
        accelerator=acc,
        progress=False,
        on_step=lambda rec: stamps.append(now()),
        checkpoint=None,
    )
    wall = now() - t0
    if result.status != "ok":
        raise SystemExit(f"isoprobe {method}: run {result.status} at step {result.diverged_at}")
    # the batches of epoch 1, drawn as finetune() draws them (its generator is default_rng(seed))
    _, lengths, _ = encode_split(tokenizer, splits["train"], cfg.max_length)
    batches = length_grouped_batches(lengths, cfg.batch_size, np.random.default_rng(seed))
    sizes = [len(b) for b in batches]
    if len(sizes) != len(result.steps) or sum(sizes) != result.train_examples:
        raise SystemExit("isoprobe: reproduced batch order does not match the run's steps")
    seconds, examples = steady(stamps, sizes)
    losses = [s["loss"] for s in result.steps]
    return {
        "seconds": seconds,
        "examples": examples,
        "wall": wall,
        "result_seconds": result.seconds,
        "steps": len(result.steps),
        "train_examples": result.train_examples,
        "padded_tokens": int(sum(lengths[b].max() * len(b) for b in batches)),
        "loss_mean": float(np.mean(losses)),
        "loss_last": losses[-1],
        "threads_after": torch.get_num_threads(),
    }


def trainer_arguments(
    cfg: TrainConfig,
    out_dir: str,
    seed: int,
    device: torch.device,
    fused: bool,
    warmup: int,
    grouped: bool,
):
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    kwargs = {
        "output_dir": out_dir,
        "per_device_train_batch_size": cfg.batch_size,
        "num_train_epochs": cfg.epochs,
        "learning_rate": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "lr_scheduler_type": "linear",
        "warmup_steps": warmup,
        "max_grad_norm": cfg.grad_clip or 0.0,
        "optim": "adamw_torch_fused" if fused else "adamw_torch",
        "eval_strategy" if "eval_strategy" in fields else "evaluation_strategy": "no",
        "save_strategy": "no",
        "logging_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": seed,
        "bf16": device.type == "cuda",
        "use_cpu" if "use_cpu" in fields else "no_cuda": device.type == "cpu",
    }
    if grouped:
        if "train_sampling_strategy" in fields:  # transformers >= 5
            kwargs["train_sampling_strategy"] = "group_by_length"
        else:
            kwargs["group_by_length"] = True
    return TrainingArguments(**kwargs)


def run_trainer(
    splits: dict[str, list[dict]],
    meta: dict,
    tokenizer,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    threads: int,
    fused: bool,
    grouped: bool,
    model_kind: str,
) -> dict:
    from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback

    torch.set_num_threads(threads)
    feats, lengths, labels = encode_split(tokenizer, splits["train"], cfg.max_length)
    dataset = [{**f, "labels": int(y)} for f, y in zip(feats, labels, strict=True)]
    if model_kind == "wrapper":
        core = build_model("baseline", meta["num_labels"], cfg, seed)
        freeze_unused_pooler(core)  # as finetune() does: the head reads [CLS], not the pooler
        model = LossModel(core)
    else:
        seed_everything(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(MODEL).location,
            num_labels=meta["num_labels"],
            classifier_dropout=cfg.dropout,
            use_safetensors=True,
        )
    now, stamps = clock(device), []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(now())

    collator = CountingCollator(tokenizer)
    total = math.ceil(len(dataset) / cfg.batch_size) * cfg.epochs
    with tempfile.TemporaryDirectory() as tmp:
        args = trainer_arguments(cfg, tmp, seed, device, fused, warmup_steps(cfg, total), grouped)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            callbacks=[Stamp()],
        )
        t0 = now()
        out = trainer.train()
        wall = now() - t0
        optimizer = optimizer_name(trainer.optimizer)
    sizes = [s[0] for s in collator.shapes]
    if len(sizes) != len(stamps):
        raise SystemExit(f"trainer: {len(sizes)} batches collated for {len(stamps)} steps")
    seconds, examples = steady(stamps, sizes)
    losses = [float(x) for x in getattr(model, "losses", [])]
    return {
        "seconds": seconds,
        "examples": examples,
        "wall": wall,
        "train_runtime": float(out.metrics.get("train_runtime", math.nan)),
        "steps": int(out.global_step),
        "train_examples": int(sum(sizes)),
        "padded_tokens": int(sum(r * t for r, t in collator.shapes)),
        "loss_mean": float(out.training_loss),
        "loss_last": losses[-1] if losses else None,
        "optimizer": optimizer,
        "warmup_steps": warmup_steps(cfg, total),
        "threads_after": torch.get_num_threads(),
    }


def summarize(runs: list[dict], rows: int, real_tokens: int) -> dict:
    """Medians and every value of one side's repeats."""
    rate = [r["examples"] / r["seconds"] for r in runs]
    out = {
        "examples_per_second": round(statistics.median(rate), 2),
        "examples_per_second_all": [round(x, 2) for x in rate],
        "steady_seconds": [round(r["seconds"], 3) for r in runs],
        "steady_examples": runs[0]["examples"],
        "steps": runs[0]["steps"],
        "call_seconds": [round(r["wall"], 3) for r in runs],
        "call_examples_per_second": round(statistics.median(rows / r["wall"] for r in runs), 2),
        "padded_tokens": runs[0]["padded_tokens"],
        "padding_fraction": round(1 - real_tokens / runs[0]["padded_tokens"], 3),
        "loss_mean": [round(r["loss_mean"], 4) for r in runs],
        "loss_last": [None if r["loss_last"] is None else round(r["loss_last"], 4) for r in runs],
        "threads_after_run": sorted({r["threads_after"] for r in runs}),
    }
    for key in ("result_seconds", "train_runtime"):
        if key in runs[0]:
            out[key] = [round(r[key], 3) for r in runs]
    for key in ("optimizer", "warmup_steps"):
        if key in runs[0]:
            out[key] = runs[0][key]
    return out


def measure(
    args: argparse.Namespace, cfg: TrainConfig, device: torch.device, threads: int, fused: bool
) -> dict:
    """Prepare the data, run every side (warm-up, then interleaved repeats), build the report."""
    splits, meta = prepare(args.rows, args.eval_rows, args.seed)
    _, tokenizer, info = load_encoder(resolve_model(MODEL))
    feats, lengths, _ = encode_split(tokenizer, splits["train"], args.max_length)
    raw_lengths = np.array(
        [len(x) for x in tokenizer([r["text_a"] for r in splits["train"]])["input_ids"]]
    )
    rows = len(feats)

    sides: dict[str, Callable[[dict], dict]] = {
        "isoprobe": lambda s: run_isoprobe(
            "baseline", s, meta, tokenizer, cfg, args.seed, device, threads
        ),
        "trainer": lambda s: run_trainer(
            s, meta, tokenizer, cfg, args.seed, device, threads, fused, False, args.trainer_model
        ),
    }
    if args.group_by_length:
        sides["trainer_group_by_length"] = lambda s: run_trainer(
            s, meta, tokenizer, cfg, args.seed, device, threads, fused, True, args.trainer_model
        )
    if args.isobn:
        sides["isoprobe_isobn"] = lambda s: run_isoprobe(
            "isobn", s, meta, tokenizer, cfg, args.seed, device, threads
        )

    log(f"{rows} rows, {threads} threads, device {device}, fused AdamW {fused}; warm-up")
    warm = {**splits, "train": splits["train"][: 3 * args.batch_size]}
    for fn in sides.values():
        fn(warm)
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    for rep in range(args.repeats):  # interleaved, so drift from other load hits every side alike
        for name, fn in sides.items():
            r = fn(splits)
            runs[name].append(r)
            log(
                f"repeat {rep + 1}/{args.repeats} {name}: {r['examples'] / r['seconds']:.1f} ex/s "
                f"steady ({r['seconds']:.2f} s), call {r['wall']:.2f} s, mean loss {r['loss_mean']:.3f}"
            )

    real_tokens = int(lengths.sum())
    per_side = {k: summarize(v, rows, real_tokens) for k, v in runs.items()}
    per_side["isoprobe"]["optimizer"] = f"torch.optim.adamw.AdamW (fused={fused}) via make_adamw"
    per_side["isoprobe"]["batches"] = "length-grouped (mega-batches of 50), dynamic padding"
    per_side["isoprobe"]["result_seconds_covers"] = (
        "training loop + per-epoch dev evaluation + best-state copy (not tokenization, "
        "optimizer/accelerate setup or the final test evaluation)"
    )
    for name in [k for k in per_side if k.startswith("trainer")]:
        per_side[name]["batches"] = (
            "LengthGroupedSampler, DataCollatorWithPadding"
            if name.endswith("group_by_length")
            else "RandomSampler, DataCollatorWithPadding (dynamic padding)"
        )
        per_side[name]["model"] = (
            "LossModel(EncoderClassifier): the isoprobe model, same init"
            if args.trainer_model == "wrapper"
            else "AutoModelForSequenceClassification (pooler -> dropout -> linear)"
        )
    if "isoprobe_isobn" in per_side:
        per_side["isoprobe_isobn"]["optimizer"] = per_side["isoprobe"]["optimizer"]

    iso = per_side["isoprobe"]
    ratios = {
        f"isoprobe_over_{k}": round(iso["examples_per_second"] / v["examples_per_second"], 3)
        for k, v in per_side.items()
        if k.startswith("trainer")
    }
    ratios["isoprobe_over_trainer_per_repeat"] = [  # paired: the sides ran back to back
        round((a["examples"] / a["seconds"]) / (b["examples"] / b["seconds"]), 3)
        for a, b in zip(runs["isoprobe"], runs["trainer"], strict=True)
    ]
    ratios["isoprobe_over_trainer_whole_call"] = round(
        iso["call_examples_per_second"] / per_side["trainer"]["call_examples_per_second"], 3
    )
    if "isoprobe_isobn" in per_side:
        ratios["isoprobe_isobn_over_trainer"] = round(
            per_side["isoprobe_isobn"]["examples_per_second"]
            / per_side["trainer"]["examples_per_second"],
            3,
        )
    iso_loss = statistics.median(r["loss_mean"] for r in runs["isoprobe"])
    tr_loss = statistics.median(r["loss_mean"] for r in runs["trainer"])
    rel = abs(iso_loss - tr_loss) / max(abs(iso_loss), abs(tr_loss), 1e-9)
    result = {
        "benchmark": "finetune",
        "model": MODEL,
        "architecture": info["architecture"],
        "corpus": "embedded:tweets (prepare_task, stratified seeded max_rows)",
        "rows": rows,
        "dev_test_rows": [len(splits["dev"]), len(splits["test"])],
        "labels": meta["num_labels"],
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "epochs": 1,
        "hyper": {
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "warmup_ratio": cfg.warmup_ratio,
            "grad_clip": cfg.grad_clip,
            "dropout": cfg.dropout,
            "pooling": cfg.pooling,
            "seed": args.seed,
        },
        "repeats": args.repeats,
        "mean_tokens_per_row": round(float(lengths.mean()), 2),
        "truncated_rows": int((raw_lengths > args.max_length).sum()),
        "threads": threads,
        "device": str(device),
        "autocast": "bf16 (both sides)" if device.type == "cuda" else "off (fp32)",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "accelerate": __import__("accelerate").__version__,
        "timed": "steady state: end of optimizer step 1 -> end of last step (per-step hooks), "
        "examples of steps 2..N; medians over repeats",
        "sides": per_side,
        "ratios": ratios,
        "target": {"isoprobe_over_trainer_at_least": TARGET, "met": ratios["isoprobe_over_trainer"] >= TARGET},
        "sanity": {
            "loss_mean_isoprobe": round(iso_loss, 4),
            "loss_mean_trainer": round(tr_loss, 4),
            "relative_difference": round(rel, 3),
            "tolerance": LOSS_TOLERANCE,
            "similar": rel <= LOSS_TOLERANCE,
        },
    }  # fmt: skip
    return result


def train_config(batch_size: int, max_length: int, device: str, threads: int) -> TrainConfig:
    """The hyper-parameters both sides train with (1 epoch; the pipeline's defaults otherwise)."""
    return TrainConfig(
        lr=1e-4,
        batch_size=batch_size,
        epochs=1,
        max_length=max_length,
        weight_decay=0.01,
        warmup_ratio=0.06,
        grad_clip=1.0,
        dropout=0.1,
        pooling="cls",
        device=device,
        num_threads=threads,
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=512, help="training rows")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="0 = every usable core")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-rows", type=int, default=8, help="dev and test rows isoprobe scores")
    p.add_argument("--group-by-length", action="store_true", help="add Trainer, length-grouped")
    p.add_argument("--isobn", action="store_true", help="add isoprobe with the IsoBN head")
    p.add_argument("--trainer-model", choices=["wrapper", "auto"], default="wrapper",
                   help="wrapper: the same EncoderClassifier; auto: AutoModelForSequenceClassification")  # fmt: skip
    args = p.parse_args()
    try:  # sets the CPU thread count (0: every usable core) or TF32 on CUDA, as the stages do
        device = pick_device(args.device, args.threads, key="--device")
    except IsoprobeError as err:
        raise SystemExit(str(err)) from None
    threads = torch.get_num_threads()
    cfg = train_config(args.batch_size, args.max_length, args.device, threads)
    fused = fused_adamw(cfg)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-load "Loading weights" bars
    with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its metrics: stdout is the JSON
        result = measure(args, cfg, device, threads, fused)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
