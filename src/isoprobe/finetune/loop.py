"""Fine-tune an encoder with a [CLS] treatment head on one prepared task, with gradient tracking.

AdamW (no decay on biases and LayerNorm weights), linear warm-up then linear decay, length-grouped
dynamically padded batches, dev evaluation after every epoch, the best-dev state kept and scored on
test. Per optimizer step it records the loss, the learning rate and three L2 norms:
`grad_cls` = ||d loss / d pooled [CLS]|| over the batch matrix [B, H] (before the head),
`grad_head` = ||d loss / d W|| of the head's linear weight, `grad_total` = the norm of all
parameter gradients before clipping. Accelerate places the model (CPU, one or several GPUs) and runs
bf16 autocast on GPU.

Under `accelerate launch` with P processes (DDP) every process draws the same global batches and
trains on its share (rows r, r+P, ... of each batch); its loss is weighted by its share of the batch,
so the averaged gradient, the step count, the learning-rate schedule and the logged norms are those of
one process over the global batch, and normalizer statistics are all-reduced (IsoBN, whitening,
batchnorm): the run matches the one-process run up to floating-point order (and dropout masks).

With a `Checkpointer` the state is saved at the end of every epoch (and every N steps); a later call
with a matching checkpoint resumes there and ends, on CPU with the same thread count, bit-identical
to an uninterrupted run. A non-finite loss or gradient norm stops the run (`status: diverged`).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from isoprobe.core.config import TrainConfig
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.scores import main_score, task_scores
from isoprobe.finetune.checkpoint import Checkpointer
from isoprobe.finetune.classifier import EncoderClassifier


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (libraries that use the global RNG)
    torch.manual_seed(seed)


def length_grouped_batches(
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    group: int = 50,
    min_size: int = 2,
) -> list[list[int]]:
    """Shuffle, sort within mega-batches of `group` batches by length, chunk, shuffle the batches.
    Similar lengths share a batch (little padding) while the order stays random. A last batch smaller
    than `min_size` is merged into the one before (BatchNorm needs two rows; under P processes every
    process needs one)."""
    order = rng.permutation(len(lengths))
    batches = []
    mega = batch_size * group
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < min_size:
        batches[-2] += batches.pop()
    return [batches[i] for i in rng.permutation(len(batches))]


def encode_split(
    tokenizer, rows: list[dict], max_length: int
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Tokenized features, their lengths, and labels (int or float) of a prepared sentence split."""
    a = [r["text_a"] for r in rows]
    b = [r["text_b"] for r in rows] if rows and rows[0].get("text_b") is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_length)
    names = [k for k in tokenizer.model_input_names if k in enc]
    feats = [{k: enc[k][i] for k in names} for i in range(len(rows))]
    lengths = np.array([len(f["input_ids"]) for f in feats])
    return feats, lengths, np.array([r["label"] for r in rows])


def collate(
    tokenizer, feats: list[dict], labels: np.ndarray, idx: list[int], regression: bool
) -> dict:
    batch = dict(tokenizer.pad([feats[i] for i in idx], return_tensors="pt"))
    batch["labels"] = torch.tensor(labels[idx], dtype=torch.float32 if regression else torch.long)
    return batch


@dataclass
class FinetuneResult:
    status: str  # "ok" or "diverged"
    steps: list[dict] = field(default_factory=list)  # per optimizer step
    epochs: list[dict] = field(default_factory=list)  # per epoch: dev scores
    best_epoch: int | None = None
    dev: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    diverged_at: int | None = None
    seconds: float = 0.0  # wall time of the run, dev evaluations included
    eval_seconds: float = 0.0  # of which evaluating dev after each epoch
    train_examples: int = 0

    @property
    def examples_per_second(self) -> float:
        """Training throughput: examples seen per second of training (dev evaluations excluded)."""
        return self.train_examples / max(self.seconds - self.eval_seconds, 1e-9)


def make_accelerator(cfg: TrainConfig):
    """An `accelerate.Accelerator` on `cfg.device` (CPU: `cfg.num_threads` threads), with bf16
    autocast on CUDA."""
    from accelerate import Accelerator

    from isoprobe.core.device import pick_device

    device = pick_device(cfg.device, cfg.num_threads, key="finetune.train.device")
    return Accelerator(
        cpu=device.type == "cpu", mixed_precision="bf16" if device.type == "cuda" else "no"
    )


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build supports it (several times faster on CPU, same maths)."""
    groups = _param_groups(model, cfg.weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr)


@torch.no_grad()
def predict(
    model: EncoderClassifier,
    tokenizer,
    feats,
    labels,
    batch_size: int,
    device,
    regression: bool,
    autocast,
) -> np.ndarray:
    """Outputs [N, C] (or [N] for regression) in row order."""
    model.eval()
    lengths = np.array([len(f["input_ids"]) for f in feats])
    order = np.argsort(-lengths, kind="stable")
    out = None
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size].tolist()
        batch = collate(tokenizer, feats, labels, idx, regression)
        batch.pop("labels")
        with autocast():
            logits, _, _ = model(**{k: v.to(device) for k, v in batch.items()})
        logits = logits.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(feats), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out[:, 0] if regression else out


def freeze_unused_pooler(model: EncoderClassifier) -> None:
    """A pooler the head does not read gets no gradient; mark it frozen (DDP requires every trainable
    parameter to be used; one-process results are unchanged since AdamW skips gradient-free ones)."""
    pooler = getattr(model.encoder, "pooler", None)
    if pooler is not None and model.pooling != "pooler":
        pooler.requires_grad_(False)


def _global_mean(acc, local_mean: torch.Tensor, share: float) -> float:
    """The loss over the global batch from each process's mean over its rows."""
    if acc.num_processes == 1:
        return float(local_mean)
    return float(acc.reduce(local_mean.float() * share, "sum")) / acc.num_processes


def _global_norm(acc, grad: torch.Tensor | None) -> float:
    """||d loss / d pooled|| over the global batch. Each process holds the rows of its share, scaled
    by P (its loss was weighted by share = P * n_local / n): divide the all-reduced norm by P."""
    if grad is None:
        return math.nan
    if acc.num_processes == 1:
        return float(grad.float().norm())
    sq = acc.reduce(grad.float().pow(2).sum(), "sum")
    return float(sq.sqrt()) / acc.num_processes


def finetune(
    model: EncoderClassifier,
    tokenizer,
    splits: dict[str, list[dict]],
    meta: dict,
    cfg: TrainConfig,
    seed: int,
    *,
    accelerator=None,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    on_step: Callable[[dict], None] | None = None,
    checkpoint: Checkpointer | None = None,
) -> FinetuneResult:
    """Train `model` on splits["train"], pick the best epoch on splits["dev"], score it on splits["test"].
    The model ends holding the best-dev weights and head statistics (a diverged run: the last ones,
    no best epoch, empty dev/test). `on_step` gets each finite step's record after its checkpoint;
    `checkpoint` saves and resumes (the caller ends it with `checkpoint.finish`)."""
    from transformers import get_linear_schedule_with_warmup

    seed_everything(seed)
    acc = accelerator or make_accelerator(cfg)
    regression = meta["label_type"] == "regression"
    metric = meta["metric"]
    key = main_score(metric)
    world, rank = acc.num_processes, acc.process_index
    if cfg.batch_size < world:
        raise IsoprobeError(
            f"finetune.train.batch_size: {cfg.batch_size} is smaller than the {world} processes; "
            "each process needs at least one row of every batch"
        )
    data = {s: encode_split(tokenizer, splits[s], cfg.max_length) for s in ("train", "dev", "test")}
    feats, lengths, labels = data["train"]
    rng = np.random.default_rng(seed)
    min_size = max(2, world)
    steps_per_epoch = len(
        length_grouped_batches(lengths, cfg.batch_size, np.random.default_rng(0), min_size=min_size)
    )
    freeze_unused_pooler(model)
    if regression:  # start at the mean target: a head that removes the [CLS] mean cannot supply it
        with torch.no_grad():
            model.head.linear.bias.fill_(float(np.mean(labels)))
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = make_adamw(model, cfg)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(cfg.warmup_ratio * total_steps), total_steps
    )
    model, optimizer = acc.prepare(model, optimizer)
    core = acc.unwrap_model(model)
    loss_fn = torch.nn.MSELoss() if regression else torch.nn.CrossEntropyLoss()
    result = FinetuneResult(status="ok")
    best_state, step, start_epoch, done = None, 0, 1, 0  # done: batches of start_epoch trained
    resumed = checkpoint.load(acc, core, optimizer, scheduler) if checkpoint else None
    acc.wait_for_everyone()  # every process has read the checkpoint before the next one replaces it
    if resumed is not None:
        state, best_state = resumed
        result = FinetuneResult(**state["result"])
        step, start_epoch, done = state["step"], state["epoch"], state["batch"]
        rng.bit_generator.state = state["batch_order"]
    best = result.epochs[result.best_epoch - 1][f"dev_{key}"] if result.best_epoch else -math.inf
    t0 = time.perf_counter() - result.seconds

    def save(epoch: int, batch: int, batch_order: dict) -> None:
        """Checkpoint: `batch` batches of `epoch` done, drawn from the generator at `batch_order`."""
        if checkpoint is not None:
            result.seconds = time.perf_counter() - t0
            where = {"step": step, "epoch": epoch, "batch": batch, "batch_order": batch_order}
            checkpoint.save(
                acc, core, optimizer, scheduler, best_state, {**where, "result": asdict(result)}
            )

    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="finetune",
        unit="step",
        disable=not progress,
        mininterval=2,
    )
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        batch_order = rng.bit_generator.state
        batches = length_grouped_batches(lengths, cfg.batch_size, rng, min_size=min_size)
        for pos in range(done, len(batches)):
            idx = batches[pos]
            local = idx[rank::world]
            batch = {
                k: v.to(acc.device)
                for k, v in collate(tokenizer, feats, labels, local, regression).items()
            }
            y = batch.pop("labels")
            with acc.autocast():
                logits, pooled, _ = model(**batch)
                pooled.retain_grad()
                out = logits.float()
                loss = loss_fn(out[:, 0], y) if regression else loss_fn(out, y)
            share = len(local) * world / len(idx)  # 1.0 with one process
            acc.backward(loss * share if world > 1 else loss)
            step += 1
            rec = {
                "step": step,
                "epoch": epoch,
                "loss": _global_mean(acc, loss.detach(), share),
                "lr": float(scheduler.get_last_lr()[0]),
                "grad_cls": _global_norm(acc, pooled.grad),
                "grad_head": float(core.head.linear.weight.grad.float().norm()),
            }
            params = [p for p in model.parameters() if p.grad is not None]
            total = acc.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip else float("inf"))
            rec["grad_total"] = float(total)
            result.steps.append(rec)
            result.train_examples += len(idx)
            if not all(math.isfinite(rec[k]) for k in ("loss", "grad_total")):
                result.status, result.diverged_at = "diverged", step
                break
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", refresh=False)
            every = checkpoint.every_steps if checkpoint else 0
            if every and step % every == 0 and pos + 1 < len(batches):
                save(epoch, pos + 1, batch_order)
            if on_step:
                on_step(rec)
        done = 0
        if result.status != "ok":
            break
        t_eval = time.perf_counter()
        dev_scores = task_scores(
            metric,
            data["dev"][2],
            predict(
                core,
                tokenizer,
                *data["dev"][:1],
                data["dev"][2],
                cfg.eval_batch_size,
                acc.device,
                regression,
                acc.autocast,
            ),
        )
        result.eval_seconds += time.perf_counter() - t_eval
        ep = {"epoch": epoch, "step": step, **{f"dev_{k}": v for k, v in dev_scores.items()}}
        result.epochs.append(ep)
        if on_epoch:
            on_epoch(ep)
        if dev_scores[key] > best:
            best, result.best_epoch = dev_scores[key], epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in core.state_dict().items()})
        save(epoch + 1, 0, rng.bit_generator.state)
    bar.close()
    result.seconds = time.perf_counter() - t0
    if result.status != "ok":
        result.best_epoch = None  # no weights of a diverged run are kept or scored
    elif best_state is not None:
        core.load_state_dict(best_state)
        best_epoch = result.epochs[result.best_epoch - 1]  # the dev scores of the weights kept
        result.dev = {
            k.removeprefix("dev_"): v for k, v in best_epoch.items() if k.startswith("dev_")
        }
        f, _, y = data["test"]
        out = predict(
            core, tokenizer, f, y, cfg.eval_batch_size, acc.device, regression, acc.autocast
        )
        result.test = task_scores(metric, y, out)
    return result


def gradient_summary(steps: list[dict]) -> dict[str, dict[str, float]]:
    """max, p99 and median of each gradient norm over the steps (finite values)."""
    out = {}
    for k in ("grad_cls", "grad_head", "grad_total"):
        v = np.array([s[k] for s in steps], dtype=float)
        v = v[np.isfinite(v)]
        out[k] = (
            {
                "max": float(v.max()),
                "p99": float(np.percentile(v, 99)),
                "median": float(np.median(v)),
            }
            if v.size
            else {"max": None, "p99": None, "median": None}
        )
    return out
